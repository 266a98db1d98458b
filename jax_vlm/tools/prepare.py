"""Preparing real data sets: every frame is VQGAN-encoded once and stored as code ids.

  python -m jax_vlm.prepare aurora --root AURORA_ROOT --vqgan VQ_DIR --out OUT [--tasks a,b]
                                   [--split train]                      -> OUT/<split>
      (--split test reads AURORA-BENCH's test.json, items with a target: for smoke runs only)
  python -m jax_vlm.prepare epic --csv EPIC_100_train.csv --frames_root R --vqgan VQ_DIR --out OUT
                                 [--split train]                        -> OUT/<split>
  python -m jax_vlm.prepare videos --videos DIR_OR_FILE [...] --vqgan VQ_DIR --out OUT
                                   [--kf 6 --if 20]                     -> OUT/unlabelled

VQ_DIR is a VQGAN directory (`params.msgpack` + `vqgan_config.json`: what `vqgan_files.save_vqgan`
and `python -m jax_vlm.convert vqgan` write). The output record sets (data/records.py) have the
fields the embedded world's `tokenize` stage writes, so the trainer reads them the same way
(`--config.data.dir=OUT --config.data.train_splits="('train',)"`):
  src_codes, tgt_codes   [h'*w'] int32 code ids (row-major)
  recognition_weights    [h'*w'] float32 (sequences.recognition_weights of the pre-quantisation
                         features: mean 1, large where the frame changes)
  action, action_type, example_id, split, source  (+ per-source extras: EPIC video and frame
                         numbers, the video path and frame numbers of key-frame pairs)
Unlabelled key-frame pairs have action '' and action_type '' (world_stages.unlabelled_schema), for
the bootstrap stage to label.

Items stream through in batches (a thread pool reads and preprocesses images, the device encodes
one fixed batch shape while the host builds the previous batch's records), so a data set never has
to fit in memory. A bad item (missing or corrupt image, empty or over-long action, unreadable
video) is skipped and counted with its reason, never a crash half-way; the counts, the loader's
own skips and codebook statistics go to `<out_prefix>.report.json` next to the records.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from data import keyframes, records
from data.aurora import load_aurora_bench, load_aurora_train
from data.epic import load_epic_triplets
from data.images import load_rgb
from data.records import MAX_ACTION_CHARS, clean_action
from jax_vlm.core import cli
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import UserError, require
from jax_vlm.models.vqgan import VQGAN
from jax_vlm.pipeline.world_stages import unlabelled_schema
from jax_vlm.tokens.image_processing import preprocess
from jax_vlm.tokens.sequences import recognition_weights
from jax_vlm.weights import vqgan_files

PathLike = Union[str, os.PathLike]
Frame = Union[PathLike, np.ndarray]  # an image path or a uint8 frame [h, w, 3]

REPORT_SUFFIX = '.report.json'  # not '.meta.json': datasets.record_prefixes globs those
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
UNLABELLED_SPLIT = 'unlabelled'
BENCH_SPLIT = 'test'  # `aurora --split test`: AURORA-BENCH's test.json (smoke runs only)
MAX_LISTED = 1000  # skipped items listed by name in the report (all are counted)


@dataclasses.dataclass(frozen=True)
class Triplet:
  """One (source frame, action, target frame) item before tokenization.

  `src` / `tgt` are image paths or uint8 frames `[h, w, 3]`; `extra` holds fields stored as they
  are (e.g. `src_frame_index`). A plain 5- or 6-tuple in this order, or a dict with these keys, is
  accepted too.
  """
  src: Frame
  tgt: Frame
  action: str
  action_type: str
  example_id: str
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PrepareReport:
  """What a preparation run did; `to_json()` is what lands in `<out_prefix>.report.json`."""
  source: str
  split: str
  out_prefix: str
  vqgan_dir: str
  resolution: int
  code_grid: tuple[int, int]
  items: int = 0  # items that reached the tokenizer (after the loader's own checks)
  written: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_items: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
  loader_skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # skipped before us
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  code_counts: Optional[np.ndarray] = None  # [num_embeddings] int64
  seconds: float = 0.0
  shard_paths: list[str] = dataclasses.field(default_factory=list)

  def skip(self, ident: str, reason: str, detail: str = '') -> None:
    self.skipped[reason] += 1
    if len(self.skipped_items) < MAX_LISTED:
      self.skipped_items.append((ident, reason, detail))

  @property
  def codes_used(self) -> int:
    return 0 if self.code_counts is None else int((self.code_counts > 0).sum())

  @property
  def code_perplexity(self) -> float:
    """exp(entropy) of the code histogram: about how many codes the data really uses."""
    if self.code_counts is None or not self.code_counts.sum():
      return 0.0
    p = self.code_counts[self.code_counts > 0] / self.code_counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))

  def to_json(self) -> dict:
    codebook = 0 if self.code_counts is None else len(self.code_counts)
    return dict(
        source=self.source, split=self.split, out_prefix=self.out_prefix,
        vqgan_dir=self.vqgan_dir, resolution=self.resolution, code_grid=list(self.code_grid),
        items=self.items, written=self.written, skipped=dict(self.skipped),
        num_skipped=sum(self.skipped.values()), loader_skipped=self.loader_skipped,
        skipped_items=[list(s) for s in self.skipped_items], codes_used=self.codes_used,
        codebook_size=codebook, code_perplexity=round(self.code_perplexity, 2),
        seconds=round(self.seconds, 1),
        examples_per_second=round(self.written / self.seconds, 2) if self.seconds else 0.0,
        shard_paths=[os.path.basename(p) for p in self.shard_paths], **self.extra)

  def summary(self) -> str:
    lines = [f'{self.source}/{self.split}: wrote {self.written} of {self.items} examples to '
             f'{self.out_prefix} in {self.seconds:.0f} s; {self.codes_used} codes used '
             f'(perplexity {self.code_perplexity:.1f})']
    lines += [f'  skipped {n}: {r}' for r, n in sorted(self.skipped.items())]
    lines += [f'  skipped by the loader {n}: {r}' for r, n in sorted(self.loader_skipped.items())]
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# The VQGAN.


def load_vqgan_dir(vqgan_dir: PathLike):
  """(VQGANConfig, params) of a VQGAN directory, with one-sentence errors for what it is not."""
  vqgan_dir = os.fspath(vqgan_dir)
  require(os.path.isdir(vqgan_dir), f'VQGAN directory {vqgan_dir} does not exist; pass the '
          'directory that save_vqgan or `python -m jax_vlm.convert vqgan` wrote.')
  if not os.path.isfile(os.path.join(vqgan_dir, vqgan_files.PARAMS_FILE)):
    old = os.path.isdir(os.path.join(vqgan_dir, 'params'))
    raise UserError(
        f'VQGAN directory {vqgan_dir} has no {vqgan_files.PARAMS_FILE}' + (
            ' (it holds an older Orbax params/ folder)' if old else '') +
        '; convert Meta\'s checkpoint with `python -m jax_vlm.convert vqgan --ckpt vqgan.ckpt '
        '--yaml vqgan.yaml DIR` or point at the train_tokenizer stage\'s params directory.')
  try:
    return vqgan_files.load_vqgan(vqgan_dir)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'VQGAN directory {vqgan_dir} could not be read ({type(e).__name__}: {e}); '
                    'write it again with save_vqgan or the convert tool.') from None


class FrameEncoder:
  """VQGAN encoding of preprocessed images in batches of one compiled shape.

  `dispatch(images [m, r, r, 3])` (m <= batch_size, padded) starts the device work and returns a
  handle; `fetch(handle)` gives (codes `[m, h', w']` int32, features `[m, h', w', c]` float32).
  """

  def __init__(self, vq_config, params, batch_size: int, resolution: Optional[int] = None):
    import jax

    require(batch_size >= 1, f'batch_size={batch_size} must be at least 1; pass a positive count.')
    self.config = vq_config
    self.batch_size = int(batch_size)
    self.resolution = int(resolution or vq_config.resolution)
    factor = vq_config.downsample_factor
    require(self.resolution > 0 and self.resolution % factor == 0,
            f'resolution {self.resolution} is not a positive multiple of the VQGAN\'s '
            f'downsampling factor {factor}; pick one that is (the VQGAN\'s own is '
            f'{vq_config.resolution}).')
    self.code_grid = vq_config.code_grid(self.resolution)
    model = VQGAN(vq_config)
    self._encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method=VQGAN.encode))
    self._params = jax.device_put(params)
    self._jax = jax

  def check(self, where: str) -> None:
    """Compiles and runs one batch now, so params that do not fit the config fail up front."""
    try:
      self.fetch(self.dispatch(np.zeros((1, self.resolution, self.resolution, 3), np.float32)))
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f'The VQGAN params in {where} do not fit its vqgan_config.json ({first}); '
                      'convert or save the VQGAN again.') from None

  def dispatch(self, images: np.ndarray):
    m = len(images)
    assert 0 < m <= self.batch_size, (m, self.batch_size)
    images = pad_rows(np.asarray(images, np.float32), self.batch_size)  # one compiled shape
    return self._encode(self._params, np.asarray(images, np.float32)), m

  def fetch(self, handle) -> tuple[np.ndarray, np.ndarray]:
    (codes, features), m = handle
    codes, features = self._jax.device_get((codes, features))
    return np.asarray(codes, np.int32)[:m], np.asarray(features, np.float32)[:m]

  def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Any number of images `[n, r, r, 3]` in [-1, 1] -> (codes `[n, h', w']`, features)."""
    out = [self.fetch(self.dispatch(images[i:i + self.batch_size]))
           for i in range(0, len(images), self.batch_size)]
    return np.concatenate([c for c, _ in out]), np.concatenate([f for _, f in out])


# ------------------------------------------------------------------------------------------------
# Items -> records.


class _Skip(Exception):
  def __init__(self, reason: str, detail: str = ''):
    super().__init__(reason)
    self.reason, self.detail = reason, detail


def _frame(ref: Frame, resolution: int, which: str) -> np.ndarray:
  """An image path or uint8 frame -> `[r, r, 3]` float32 in [-1, 1] (Chameleon's preprocessing)."""
  if not isinstance(ref, np.ndarray):
    path = os.fspath(ref)
    if not os.path.isfile(path):
      raise _Skip(f'{which} image missing', path)
    try:
      ref = load_rgb(path)
    except UserError as e:
      raise _Skip(f'{which} image unreadable', str(e)) from None
  try:
    return preprocess(ref, resolution)
  except (UserError, OSError, ValueError) as e:
    raise _Skip(f'{which} image unreadable', str(e)) from None


def _as_triplet(item) -> Triplet:
  if isinstance(item, Triplet):
    return item
  if isinstance(item, Mapping):
    return Triplet(**item)
  return Triplet(*item)


def _load(item, resolution: int, labelled: bool, max_action_chars: Optional[int]):
  """-> (triplet, action, src image, tgt image) or (triplet-or-item, _Skip); runs in a thread."""
  try:
    triplet = _as_triplet(item)
  except TypeError as e:
    return item, _Skip('malformed item', str(e))
  try:
    if labelled:
      action, reason = clean_action(triplet.action, max_action_chars)
      if reason:
        raise _Skip(reason, repr(triplet.action)[:80])
    else:
      action = ''
    return (triplet, action, _frame(triplet.src, resolution, 'source'),
            _frame(triplet.tgt, resolution, 'target'))
  except _Skip as s:
    return triplet, s


def _ordered_map(fn: Callable, items: Iterable, num_workers: int) -> Iterator:
  """map(fn, items) in order, `num_workers` threads ahead (image decoding and resizing release the
  GIL); at most a few batches of items are in flight, so memory stays bounded."""
  if num_workers <= 0:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    window = collections.deque()
    for item in items:
      window.append(pool.submit(fn, item))
      if len(window) >= 4 * num_workers:
        yield window.popleft().result()
    while window:
      yield window.popleft().result()


def _record(triplet: Triplet, action: str, split: str, source: str, codes: np.ndarray,
            features: np.ndarray) -> dict:
  """The record of one example; codes `[2, h', w']` and features `[2, h', w', c]` (src, tgt)."""
  record = dict(triplet.extra)
  record.update(
      src_codes=codes[0].reshape(-1).astype(np.int32),
      tgt_codes=codes[1].reshape(-1).astype(np.int32),
      recognition_weights=recognition_weights(features[0], features[1]),
      action=action, action_type=str(triplet.action_type or '') if action else '',
      example_id=str(triplet.example_id), split=split, source=source)
  return record


def _examples(items: Iterable, encoder: FrameEncoder, report: PrepareReport, *, labelled: bool,
              split: str, source: str, batch_size: int, num_workers: int,
              max_action_chars: Optional[int], bar) -> Iterator[dict]:
  """Records of `items`, batch by batch; the device encodes batch i while the host turns batch
  i - 1 into records."""
  loaded = _ordered_map(
      lambda item: _load(item, encoder.resolution, labelled, max_action_chars), items, num_workers)
  pending = None
  batch: list = []

  def flush(batch):
    images = np.stack([im for (_, _, src, tgt) in batch for im in (src, tgt)])
    return batch, encoder.dispatch(images)

  def finish(done):
    batch, handle = done
    codes, features = encoder.fetch(handle)
    report.code_counts += np.bincount(codes.reshape(-1), minlength=len(report.code_counts))
    for i, (triplet, action, _, _) in enumerate(batch):
      yield _record(triplet, action, split, source, codes[2 * i:2 * i + 2],
                    features[2 * i:2 * i + 2])

  for result in loaded:
    report.items += 1
    bar.update(1)
    if isinstance(result[1], _Skip):
      item, skip = result
      ident = str(item.example_id) if isinstance(item, Triplet) else f'item{report.items - 1}'
      report.skip(ident, skip.reason, skip.detail)
      continue
    batch.append(result)
    if len(batch) == batch_size:
      current, batch = flush(batch), []
      if pending is not None:
        yield from finish(pending)
      pending = current
  if batch:
    current = flush(batch)
    if pending is not None:
      yield from finish(pending)
    pending = current
  if pending is not None:
    yield from finish(pending)


def _prepare(make_items: Callable[[PrepareReport], Iterable], vqgan_dir: PathLike,
             out_prefix: PathLike, *, labelled: bool,
             resolution: Optional[int], batch_size: int, split: str, source: str,
             num_shards: int, num_workers: Optional[int], total: Optional[int],
             loader_skipped: Optional[Mapping[str, int]], max_action_chars: Optional[int],
             overwrite: bool, progress_bar: bool, extra_report: Optional[dict] = None
             ) -> PrepareReport:
  """The shared run: `make_items(report)` gives the items (it may count skips into the report)."""
  from tqdm import tqdm

  start = time.perf_counter()
  out_prefix = os.path.abspath(os.fspath(out_prefix))
  require(overwrite or not os.path.exists(out_prefix + '.meta.json'),
          f'{out_prefix} already holds a record set; pass overwrite=True (--overwrite) or choose '
          'another output directory.')
  vq_config, params = load_vqgan_dir(vqgan_dir)
  encoder = FrameEncoder(vq_config, params, 2 * batch_size, resolution)  # two frames an example
  encoder.check(os.fspath(vqgan_dir))
  report = PrepareReport(
      source=source, split=split, out_prefix=out_prefix, vqgan_dir=os.fspath(vqgan_dir),
      resolution=encoder.resolution, code_grid=encoder.code_grid,
      loader_skipped=dict(loader_skipped or {}), extra=dict(extra_report or {}),
      code_counts=np.zeros(encoder.config.num_embeddings, np.int64))
  if num_workers is None:
    num_workers = min(8, os.cpu_count() or 1)
  with tqdm(total=total, desc=f'prepare {source}/{split}', unit='ex',
            disable=not progress_bar) as bar:
    written = records.write_records(
        out_prefix, _examples(make_items(report), encoder, report, labelled=labelled, split=split,
                              source=source, batch_size=batch_size, num_workers=num_workers,
                              max_action_chars=max_action_chars, bar=bar),
        num_shards=num_shards,
        schema=records.TRIPLET_SCHEMA if labelled else unlabelled_schema(),
        max_action_chars=max_action_chars)
  for ident, reason in written.skipped_ids:  # schema failures (should not happen): counted too
    report.skip(ident, f'record rejected: {reason}')
  report.written = written.num_written
  report.shard_paths = written.paths
  report.seconds = time.perf_counter() - start
  tmp = out_prefix + REPORT_SUFFIX + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(report.to_json(), f, indent=1)
  os.replace(tmp, out_prefix + REPORT_SUFFIX)
  return report


def prepare_triplets(triplets: Iterable, vqgan_dir: PathLike, out_prefix: PathLike, *,
                     resolution: Optional[int] = None, batch_size: int = 8, split: str = 'train',
                     source: str = 'triplets', num_shards: int = 1,
                     num_workers: Optional[int] = None,
                     loader_skipped: Optional[Mapping[str, int]] = None,
                     max_action_chars: Optional[int] = None, overwrite: bool = False,
                     progress_bar: bool = True) -> PrepareReport:
  """Tokenizes labelled (src, tgt, action) items into the record set `out_prefix`.

  Args:
    triplets: `Triplet`s or tuples (src, tgt, action, action_type, example_id[, extra]); src/tgt
      are image paths or uint8 frames. May be a generator (its length then is not shown).
    vqgan_dir: a VQGAN directory (params.msgpack + vqgan_config.json).
    out_prefix: e.g. `OUT/train`; shards `OUT/train-0000i-of-0000N.array_record`,
      `OUT/train.meta.json`, and the report `OUT/train.report.json`.
    resolution: the square size frames are resized and cropped to (default: the VQGAN's).
    batch_size: examples per encoder call (2 * batch_size frames, one compiled shape).
    split, source: stored in every record.
    num_shards: ArrayRecord files to deal the examples over.
    num_workers: threads reading and preprocessing images (None: up to 8; 0: none).
    loader_skipped: counts of items the data set's loader already skipped, for the report.
    max_action_chars: longer actions are skipped (None: data.records.MAX_ACTION_CHARS).
    overwrite: replace an existing record set at `out_prefix` (else a UserError).
    progress_bar: show a tqdm bar.

  Returns:
    the `PrepareReport` (also written as JSON next to the records).
  """
  total = len(triplets) if hasattr(triplets, '__len__') else None
  return _prepare(lambda report: triplets, vqgan_dir, out_prefix, labelled=True,
                  resolution=resolution, batch_size=batch_size, split=split, source=source,
                  num_shards=num_shards,
                  num_workers=num_workers, total=total, loader_skipped=loader_skipped,
                  max_action_chars=max_action_chars or MAX_ACTION_CHARS, overwrite=overwrite,
                  progress_bar=progress_bar)


# ------------------------------------------------------------------------------------------------
# Unlabelled video -> key-frame pairs.


def list_videos(paths: Sequence[PathLike]) -> list[str]:
  """Video files named by `paths` (files as given; directories searched recursively for
  VIDEO_EXTENSIONS, sorted)."""
  out = []
  for p in paths:
    p = os.fspath(p)
    if os.path.isdir(p):
      found = sorted(os.path.join(d, f) for d, _, files in os.walk(p) for f in files
                     if f.lower().endswith(VIDEO_EXTENSIONS))
      require(found, f'Video directory {p} holds no video files ({", ".join(VIDEO_EXTENSIONS)}); '
              'point --videos at the folder with the clips.')
      out += found
    else:
      require(os.path.isfile(p), f'Video path {p} does not exist; pass video files or a '
              'directory of them.')
      out.append(p)
  return out


def _iter_video(path: str, stride: int, max_frames: Optional[int]) -> Iterator[np.ndarray]:
  """RGB frames `uint8 [h, w, 3]` of a video, every `stride`-th, decoded one at a time."""
  import cv2
  capture = cv2.VideoCapture(path)
  try:
    index = kept = 0
    while max_frames is None or kept < max_frames:
      ok, frame = capture.read()
      if not ok:
        break
      if index % stride == 0:
        kept += 1
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      index += 1
  finally:
    capture.release()


def video_key_frames(path: PathLike, num_key_frames: int = 6, min_gap: int = 20,
                     min_motion: float = 0.0, flow_size: Optional[int] = 160, stride: int = 1,
                     max_frames: Optional[int] = None):
  """`keyframes.extract_key_frame_pairs(path, ...)` without holding the whole video in memory.

  Two decoding passes: the first keeps only the small grayscale copies the motion scores need, the
  second only the key frames.

  Returns:
    (KeyFramePairs with `frames=None`, {key frame index: uint8 frame [h, w, 3]}); indices count
    decoded frames after `stride`.
  """
  path = os.fspath(path)
  require(stride >= 1, f'stride={stride} must be at least 1; pass a positive stride.')
  keyframes.read_video(path, max_frames=1)  # the reader's own errors for missing/unreadable files
  grays = [keyframes.flow_gray(f, flow_size) for f in _iter_video(path, stride, max_frames)]
  scores = keyframes.motion_scores(grays, flow_size)
  del grays
  chosen = keyframes.select_key_frames(scores, num_key_frames, min_gap, min_motion)
  wanted = set(chosen)
  frames = {}
  for t, frame in enumerate(_iter_video(path, stride, max_frames)):
    if t in wanted:
      frames[t] = frame
      if len(frames) == len(wanted):
        break
  missing = wanted - set(frames)
  require(not missing, f'Video file {path} decoded fewer frames the second time (missing '
          f'{sorted(missing)}); re-encode the video.')
  result = keyframes.KeyFramePairs(key_frames=chosen, pairs=keyframes.pair_consecutive(chosen),
                                   scores=scores)
  return result, frames


def _video_triplets(videos: Sequence[str], report: PrepareReport, stems: Mapping[str, str],
                    **key_frame_args) -> Iterator[Triplet]:
  stride = int(key_frame_args.get('stride', 1))
  for path in videos:
    try:
      result, frames = video_key_frames(path, **key_frame_args)
    except UserError as e:
      report.skip(path, 'video unreadable', str(e))
      continue
    report.extra['videos'] += 1
    if not result.pairs:
      report.skip(path, 'video has fewer than two key frames')
      continue
    for a, b in result.pairs:
      report.extra['pairs'] += 1
      yield Triplet(src=frames[a], tgt=frames[b], action='', action_type='',
                    example_id=f'{stems[path]}:{a * stride}-{b * stride}',
                    extra=dict(video=path, src_frame_index=a * stride,
                               tgt_frame_index=b * stride))


def _video_stems(videos: Sequence[str]) -> dict[str, str]:
  """A short unique name per video (its file stem, numbered where stems repeat)."""
  seen: collections.Counter = collections.Counter()
  out = {}
  for path in videos:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] += 1
    out[path] = stem if seen[stem] == 1 else f'{stem}#{seen[stem]}'
  return out


def prepare_pairs(videos: Sequence[PathLike], vqgan_dir: PathLike, out_prefix: PathLike, *,
                  num_key_frames: int = 6, min_gap: int = 20, min_motion: float = 0.0,
                  flow_size: Optional[int] = 160, stride: int = 1,
                  max_frames: Optional[int] = None, resolution: Optional[int] = None,
                  batch_size: int = 8, split: str = UNLABELLED_SPLIT, source: str = 'videos',
                  num_shards: int = 1, num_workers: Optional[int] = None,
                  overwrite: bool = False, progress_bar: bool = True) -> PrepareReport:
  """Key-frame pairs of unlabelled videos (data/keyframes.py) -> unlabelled records.

  Each video's `num_key_frames` (Kf) most-moving frames at least `min_gap` (If) frames apart are
  paired consecutively; each pair becomes a record with action '' and action_type '' (the bootstrap
  stage labels them), plus `video`, `src_frame_index`, `tgt_frame_index` (frame numbers in the
  file). Unreadable videos and videos with fewer than two key frames are skipped and counted.
  Other arguments as in `prepare_triplets`; `stride`, `max_frames`, `flow_size`, `min_motion` as in
  `keyframes.extract_key_frame_pairs`.
  """
  videos = list_videos(videos)
  stems = _video_stems(videos)
  key_frame_args = dict(num_key_frames=num_key_frames, min_gap=min_gap, min_motion=min_motion,
                        flow_size=flow_size, stride=stride, max_frames=max_frames)
  return _prepare(
      lambda report: _video_triplets(videos, report, stems, **key_frame_args), vqgan_dir,
      out_prefix, labelled=False, resolution=resolution, batch_size=batch_size, split=split,
      source=source, num_shards=num_shards, num_workers=num_workers, total=None,
      loader_skipped=None, max_action_chars=None, overwrite=overwrite, progress_bar=progress_bar,
      extra_report=dict(videos=0, pairs=0, num_key_frames=num_key_frames, min_gap=min_gap,
                        min_motion=min_motion, stride=stride))


# ------------------------------------------------------------------------------------------------
# Data sets.


def aurora_triplets(root: PathLike, tasks: Optional[Sequence[str]] = None, split: str = 'train'
                    ) -> tuple[list[Triplet], Any]:
  """AURORA training triplets (data.aurora.load_aurora_train) as `Triplet`s, and its report."""
  root = os.fspath(root)
  require(os.path.isdir(root), f'AURORA root {root} does not exist; pass the McGill-NLP/AURORA '
          'checkout (with data/<task>/train.json).')
  if split == BENCH_SPLIT:
    # The benchmark's own test.json: for smoke runs of the whole flow, never for reported numbers.
    items, report = load_aurora_bench(root)
    kept = []
    for it in items:
      if tasks and it.task not in tasks:
        continue
      if it.has_target:
        kept.append(it)
      else:
        report.skip(it.index, it.task, 'no target image')
    items = kept
  else:
    items, report = load_aurora_train(root, tasks, split)
  triplets = [Triplet(src=it.input_path, tgt=it.output_path, action=it.instruction,
                      action_type=it.task, example_id=it.id or f'{it.task}/{split}/{it.index}')
              for it in items]
  return triplets, report


def epic_triplets(annotations_csv: PathLike, frames_root: PathLike, **kwargs
                  ) -> tuple[list[Triplet], Any]:
  """EPIC-KITCHENS segments (data.epic.load_epic_triplets) as `Triplet`s, and its report."""
  triplets, report = load_epic_triplets(annotations_csv, frames_root, **kwargs)
  out = [Triplet(src=t.src_path, tgt=t.tgt_path, action=t.narration, action_type=t.verb,
                 example_id=t.narration_id,
                 extra=dict(video_id=t.video_id, participant_id=t.participant_id,
                            src_frame_index=t.start_frame, tgt_frame_index=t.stop_frame))
         for t in triplets]
  return out, report


# ------------------------------------------------------------------------------------------------
# Command line.


def _common_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--name', default=None, help='record set name under OUT (default: the split); '
                 "e.g. 'labelled', the trainer's default data.train_splits")
  p.add_argument('--vqgan', required=True, help='VQGAN directory (params.msgpack + '
                 'vqgan_config.json)')
  p.add_argument('--out', required=True, help='output directory; records go to OUT/<split>')
  p.add_argument('--resolution', type=int, default=None, help="default: the VQGAN's")
  p.add_argument('--batch_size', type=int, default=8, help='examples per encoder call')
  p.add_argument('--num_shards', type=int, default=1)
  p.add_argument('--workers', type=int, default=None, help='image reading threads (default <= 8)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing record set')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(prog='python -m jax_vlm.prepare', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('aurora', help='AURORA training triplets -> OUT/<split>')
  p.add_argument('--root', required=True, help='McGill-NLP/AURORA checkout')
  p.add_argument('--tasks', default='', help='comma-separated task names (default: all)')
  p.add_argument('--split', default='train', help="'train' or 'valid' (data/<task>/<split>.json), "
                 "or 'test': the benchmark's test.json items that have a target (smoke runs only)")
  _common_args(p)
  p = sub.add_parser('epic', help='EPIC-KITCHENS action segments -> OUT/<split>')
  p.add_argument('--csv', required=True, help='EPIC_100_train.csv (or validation)')
  p.add_argument('--frames_root', required=True, help='directory with <P>/rgb_frames/<video>/')
  p.add_argument('--split', default='train')
  _common_args(p)
  p = sub.add_parser('videos', help='unlabelled videos -> key-frame pairs -> OUT/unlabelled')
  p.add_argument('--videos', required=True, nargs='+', help='video files and/or directories')
  p.add_argument('--kf', type=int, default=6, help='Kf: key frames per video')
  p.add_argument('--if', dest='min_gap', type=int, default=20,
                 help='If: least distance between key frames (in frames after --stride)')
  p.add_argument('--min_motion', type=float, default=0.0,
                 help='frames with at most this motion score are never key frames')
  p.add_argument('--stride', type=int, default=1, help='use every stride-th frame')
  p.add_argument('--max_frames', type=int, default=None, help='frames read per video (after '
                 'stride)')
  p.add_argument('--split', default=UNLABELLED_SPLIT)
  _common_args(p)
  return parser


def run(args: argparse.Namespace) -> PrepareReport:
  """Runs one parsed command line; UserError for anything the user can fix."""
  load_vqgan_dir(args.vqgan)  # a wrong --vqgan fails before any data is read
  if args.batch_size < 1 or args.num_shards < 1:
    raise cli.ConfigError(f'--batch_size={args.batch_size} and --num_shards={args.num_shards} must '
                          'be at least 1; pass positive values.')
  common = dict(resolution=args.resolution, batch_size=args.batch_size, split=args.split,
                num_shards=args.num_shards, num_workers=args.workers, overwrite=args.overwrite,
                progress_bar=not args.no_progress)
  out_prefix = os.path.join(args.out, args.name or args.split)
  if args.command == 'aurora':
    tasks = [t.strip() for t in args.tasks.split(',') if t.strip()] or None
    triplets, loader = aurora_triplets(args.root, tasks, args.split)
    print(loader.summary(), flush=True)
    return prepare_triplets(triplets, args.vqgan, out_prefix, source='aurora',
                            loader_skipped=dict(loader.skipped), **common)
  if args.command == 'epic':
    triplets, loader = epic_triplets(args.csv, args.frames_root)
    print(loader.summary(), flush=True)
    return prepare_triplets(triplets, args.vqgan, out_prefix, source='epic',
                            loader_skipped=dict(loader.skipped), **common)
  return prepare_pairs(args.videos, args.vqgan, out_prefix, num_key_frames=args.kf,
                       min_gap=args.min_gap, min_motion=args.min_motion, stride=args.stride,
                       max_frames=args.max_frames, **common)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Errors (jax_vlm/core/cli.py): a mistake in the command exits 2, a bad input 1."""

  def body(args) -> int:
    report = run(args)
    print(report.summary())
    print(f'report: {report.out_prefix}{REPORT_SUFFIX}')
    if not report.written:
      raise UserError(f'no examples were written to {report.out_prefix}; see the skipped reasons '
                      'above.')
    return 0

  return cli.run_argparse(_parser(), body, argv)

if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  sys.exit(main())
