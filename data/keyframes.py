"""Unlabelled video -> key-frame pairs: the (source, target) frames the IDP labels (bootstrapping).

Motion decides what is worth a pair: every frame gets a motion score, the mean magnitude of the
Farneback optical flow from the previous frame (frame 0 scores 0). The `num_key_frames` (Kf, paper:
6) highest-scoring frames are kept greedily, best first, skipping any frame closer than `min_gap`
(If, paper: 20) frames to one already kept; the kept frames are sorted in time and each consecutive
two make a pair. Frames with a score of at most `min_motion` are never kept, so a video that is
static most of the time gives fewer key frames rather than arbitrary static ones.
"""

import dataclasses
import os
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from data.errors import UserError

PathLike = Union[str, os.PathLike]

# Farneback parameters: OpenCV's documented defaults for a 3-level pyramid.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                  flags=0)


def read_video(path: PathLike, max_frames: Optional[int] = None, stride: int = 1
               ) -> list[np.ndarray]:
  """Decodes a video file (any container/codec OpenCV reads) into RGB frames.

  Args:
    path: the video file.
    max_frames: stop after this many returned frames (None: all).
    stride: keep every `stride`-th frame.

  Returns:
    a list of `uint8 [h, w, 3]` RGB frames.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'Video file {path} does not exist; check the path.')
  capture = cv2.VideoCapture(path)
  if not capture.isOpened():
    raise UserError(f'Video file {path} could not be opened by OpenCV; convert it to mp4 (H.264) '
                    'or avi (MJPG).')
  frames = []
  index = 0
  try:
    while max_frames is None or len(frames) < max_frames:
      ok, frame = capture.read()
      if not ok:
        break
      if index % stride == 0:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
      index += 1
  finally:
    capture.release()
  if not frames:
    raise UserError(f'Video file {path} has no decodable frames; check the file.')
  return frames


def flow_gray(frame: np.ndarray, flow_size: Optional[int]) -> np.ndarray:
  """The small grayscale copy of a frame that optical flow is computed on."""
  frame = np.asarray(frame)
  if frame.ndim == 3 and frame.shape[-1] == 3:
    gray = cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_RGB2GRAY)
  elif frame.ndim == 2:
    gray = frame.astype(np.uint8)
  else:
    raise UserError(f'A video frame has shape {frame.shape}; frames must be [h, w, 3] or [h, w].')
  h, w = gray.shape
  if flow_size is not None and max(h, w) > flow_size:
    # Flow on a small copy: the motion score only ranks frames, and full-HD flow is slow.
    scale = flow_size / max(h, w)
    gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)
  return gray


def motion_scores(frames: Sequence[np.ndarray], flow_size: Optional[int] = 160) -> np.ndarray:
  """Mean Farneback flow magnitude from each frame's predecessor.

  Args:
    frames: `n` frames, each `uint8 [h, w, 3]` (RGB) or `[h, w]`.
    flow_size: the long side frames are shrunk to before the flow (None: full size).

  Returns:
    `float32 [n]`, with `scores[0] = 0`.
  """
  scores = np.zeros(len(frames), np.float32)
  previous = None
  for t, frame in enumerate(frames):
    gray = flow_gray(frame, flow_size)
    if previous is not None:
      if previous.shape != gray.shape:
        raise UserError(f'Video frame {t} has size {gray.shape}, frame {t - 1} has '
                        f'{previous.shape}; all frames of a video must share a size.')
      flow = cv2.calcOpticalFlowFarneback(previous, gray, None, **_FARNEBACK)
      scores[t] = float(np.mean(np.linalg.norm(flow, axis=-1)))
    previous = gray
  return scores


def select_key_frames(scores: np.ndarray, num_key_frames: int = 6, min_gap: int = 20,
                      min_motion: float = 0.0) -> list[int]:
  """Greedy top-`num_key_frames` by score with `|i - j| >= min_gap` between any two; sorted in time.

  Ties go to the earlier frame, so the result is deterministic.
  """
  if num_key_frames < 0 or min_gap < 0:
    raise UserError(f'num_key_frames ({num_key_frames}) and min_gap ({min_gap}) must be '
                    'non-negative; fix the arguments.')
  scores = np.asarray(scores, np.float64)
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  chosen: list[int] = []
  for i in order:
    if len(chosen) == num_key_frames or scores[i] <= min_motion:
      break
    if all(abs(i - j) >= min_gap for j in chosen):
      chosen.append(i)
  return sorted(chosen)


def pair_consecutive(key_frames: Sequence[int]) -> list[tuple[int, int]]:
  """[k0, k1, k2, ...] -> [(k0, k1), (k1, k2), ...]."""
  return [(int(a), int(b)) for a, b in zip(key_frames[:-1], key_frames[1:])]


@dataclasses.dataclass
class KeyFramePairs:
  key_frames: list[int]  # frame indices, increasing
  pairs: list[tuple[int, int]]  # (src_index, tgt_index)
  scores: np.ndarray  # [num_frames] float32 motion scores
  frames: Optional[list[np.ndarray]] = None  # the decoded frames when read from a file


def extract_key_frame_pairs(video: Union[PathLike, Sequence[np.ndarray]], num_key_frames: int = 6,
                            min_gap: int = 20, min_motion: float = 0.0,
                            flow_size: Optional[int] = 160, stride: int = 1) -> KeyFramePairs:
  """Key-frame pairs of one video.

  Args:
    video: a video file path, or its frames (`uint8 [h, w, 3]` each).
    num_key_frames: Kf, the most key frames kept.
    min_gap: If, the least distance (in frames, after `stride`) between two key frames.
    min_motion: frames scoring at most this are never key frames.
    flow_size: long side of the copies the optical flow runs on.
    stride: with a file, keep every stride-th frame.

  Returns:
    `KeyFramePairs` (with `frames` set when `video` was a path).
  """
  frames = None
  if isinstance(video, (str, os.PathLike)):
    frames = read_video(video, stride=stride)
    source = frames
  else:
    source = list(video)
  scores = motion_scores(source, flow_size)
  key_frames = select_key_frames(scores, num_key_frames, min_gap, min_motion)
  return KeyFramePairs(key_frames=key_frames, pairs=pair_consecutive(key_frames), scores=scores,
                       frames=frames)
