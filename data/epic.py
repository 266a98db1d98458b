"""EPIC-KITCHENS narrated action segments -> (first frame, narration, last frame) triplets.

Layout (as EPIC-KITCHENS-100 ships it, after extracting the per-video frame tars):

  annotations CSV   EPIC_100_train.csv / EPIC_100_validation.csv, one row per action segment with
                    at least the columns video_id, start_frame, stop_frame, narration; also used
                    when present: narration_id (EPIC-55: uid), participant_id (else the part of
                    video_id before '_', e.g. P01 of P01_11), verb (the action type).
  frames            <frames_root>/<participant_id>/rgb_frames/<video_id>/frame_<10 digits>.jpg,
                    numbered from 1 (`frame_template` changes this).

A segment's source frame is `start_frame` and its target is `stop_frame` (the state before and
after the narrated action). Rows with missing frames, a stop before the start, or an empty or
over-long narration are skipped and counted in the report.
"""

import collections
import csv
import dataclasses
import os
from typing import Optional, Union

from data.errors import UserError
from data.records import MAX_ACTION_CHARS, clean_action

PathLike = Union[str, os.PathLike]

FRAME_TEMPLATE = '{participant_id}/rgb_frames/{video_id}/frame_{frame:010d}.jpg'
REQUIRED_COLUMNS = ('video_id', 'start_frame', 'stop_frame', 'narration')


@dataclasses.dataclass(frozen=True)
class EpicTriplet:
  narration_id: str
  participant_id: str
  video_id: str
  start_frame: int
  stop_frame: int
  narration: str  # the action text
  verb: str  # the action type ('' when the CSV has no verb column)
  src_path: str
  tgt_path: str


@dataclasses.dataclass
class EpicReport:
  rows: int = 0
  kept: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_rows: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, reason)

  def skip(self, ident: str, reason: str) -> None:
    self.skipped[reason] += 1
    self.skipped_rows.append((ident, reason))

  def summary(self) -> str:
    lines = [f'EPIC: {self.rows} segments, {self.kept} triplets kept']
    lines.extend(f'  skipped {n}: {r}' for r, n in sorted(self.skipped.items()))
    return '\n'.join(lines)


def frame_path(frames_root: PathLike, participant_id: str, video_id: str, frame: int,
               frame_template: str = FRAME_TEMPLATE) -> str:
  """Path of one RGB frame (1-based frame number) in the EPIC layout."""
  return os.path.join(os.fspath(frames_root), frame_template.format(
      participant_id=participant_id, video_id=video_id, frame=frame))


def load_epic_triplets(annotations_csv: PathLike, frames_root: PathLike,
                       frame_template: str = FRAME_TEMPLATE,
                       max_action_chars: Optional[int] = MAX_ACTION_CHARS
                       ) -> tuple[list[EpicTriplet], EpicReport]:
  """Reads action segments and returns the triplets whose two frames exist on disk.

  Args:
    annotations_csv: an EPIC-KITCHENS annotations CSV (see the module docstring for columns).
    frames_root: the directory holding `<participant>/rgb_frames/<video>/`.
    frame_template: a frame's path under frames_root, formatted with participant_id, video_id,
      frame.
    max_action_chars: narrations longer than this are skipped (None: no limit).

  Returns:
    (triplets in CSV order, report).
  """
  annotations_csv = os.fspath(annotations_csv)
  if not os.path.isfile(annotations_csv):
    raise UserError(f'EPIC annotations file {annotations_csv} does not exist; pass the path of '
                    'an EPIC_100_*.csv file.')
  if not os.path.isdir(os.fspath(frames_root)):
    raise UserError(f'EPIC frames directory {frames_root} does not exist; pass the directory '
                    'with <participant>/rgb_frames/<video>/.')
  report = EpicReport()
  triplets = []
  with open(annotations_csv, newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise UserError(f'EPIC annotations file {annotations_csv} lacks the columns '
                      f'{", ".join(missing)}; use the EPIC-KITCHENS CSV format.')
    for row_number, row in enumerate(reader):
      report.rows += 1
      ident = row.get('narration_id') or row.get('uid') or f'row{row_number}'
      video_id = (row.get('video_id') or '').strip()
      participant_id = (row.get('participant_id') or video_id.split('_')[0]).strip()
      if not video_id or not participant_id:
        report.skip(ident, 'no video_id')
        continue
      try:
        start, stop = int(row['start_frame']), int(row['stop_frame'])
      except (TypeError, ValueError):
        report.skip(ident, 'start_frame/stop_frame not integers')
        continue
      if start < 1 or stop <= start:
        report.skip(ident, 'stop_frame not after start_frame')
        continue
      narration, reason = clean_action(row.get('narration'), max_action_chars)
      if reason:
        report.skip(ident, reason)
        continue
      src = frame_path(frames_root, participant_id, video_id, start, frame_template)
      tgt = frame_path(frames_root, participant_id, video_id, stop, frame_template)
      if not os.path.isfile(src):
        report.skip(ident, 'first frame missing')
        continue
      if not os.path.isfile(tgt):
        report.skip(ident, 'last frame missing')
        continue
      triplets.append(EpicTriplet(
          narration_id=ident, participant_id=participant_id, video_id=video_id,
          start_frame=start, stop_frame=stop, narration=narration,
          verb=(row.get('verb') or '').strip(), src_path=src, tgt_path=tgt))
      report.kept += 1
  return triplets, report
