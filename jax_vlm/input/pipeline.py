"""Grain input pipeline for dynamics training: records -> IDP/FDP sequences -> batches.

Per task (IDP, FDP) one stream: this process's shard of the records (`source[i::n]`, so processes
read disjoint examples), shuffled with a seed derived from (seed, task), reshuffled every epoch,
repeated forever, laid out by `tokens.sequences`. A batching iterator then draws from the streams
by the objective schedule:
  'alternate'  step k is one task: `idp_share` IDP steps, then `fdp_share` FDP steps, repeating.
  'mixed'      every batch has round(b * idp_share / (idp_share + fdp_share)) IDP rows (at least
               one of each task when both shares are positive), the rest FDP.
A share of 0 disables that task. Rows are task-homogeneous (so `task [b]` is exact even when
packed); `task_ids [b, s]` is there too.

Row layout (data config):
  data.packing=False (default): one example per row, padded to the smallest of
    `data.length_buckets` that fits the batch's longest example, else `data.max_seq_len`
    (buckets bound the number of shapes jit compiles; single-process runs only, since every
    process must give the same shape).
  data.packing=True: rows of `data.max_seq_len` filled first-fit. Examples that don't fit wait for
    the next batch (at the front), so nothing is dropped; `data.pack_lookahead` extra examples are
    read beyond a full batch's worth of tokens to fill gaps.

Checkpointing: the iterator is a grain DatasetIterator with a JSON-able `get_state()` (the streams'
positions, the step, the examples waiting to be packed); `set_state` reproduces the exact next
batches. It works with orbax through `grain.checkpoint.CheckpointSave/CheckpointRestore`, or store
`get_state(it)` yourself.

Examples with an empty action are skipped (counted in `it.stats['rejected']`, logged once).
"""

import copy
import dataclasses
import logging
import math
from typing import Any, Mapping

import grain
import numpy as np

from jax_vlm.core.errors import UserError, require
from jax_vlm.tokens import sequences as seqs

# Give up when this many examples in a row are rejected: the data has no usable examples.
_MAX_CONSECUTIVE_REJECTS = 10_000


def _opt(cfg, name: str, default):
  """cfg.name if the config has it, else default (optional data-config fields)."""
  try:
    value = getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # the shell may import jax; only needed when the caller did not say
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  require(0 <= process_index < process_count,
          f'process_index {process_index} is not in [0, {process_count}); pass matching values.')
  return int(process_index), int(process_count)


def _task_seed(seed: int, task: int) -> int:
  """A 32-bit shuffle seed per (seed, task), so IDP and FDP see the data in different orders."""
  return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, task]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class _Rejected:
  """Stands in for an example the layout refused (stream positions must still advance)."""
  reason: str


def _build_sequence(task: int, vocab, data_cfg) -> '_BuildSequence':
  return _BuildSequence(task, vocab, int(data_cfg.action_max_tokens),
                        bool(_opt(data_cfg, 'recognition_weights', True)),
                        float(_opt(data_cfg, 'recognition_floor', 0.0)))


class _BuildSequence:
  """example -> Sequence (or _Rejected). A class, not a closure, so it pickles for workers."""

  def __init__(self, task: int, vocab, max_action_tokens: int, use_recognition_weights: bool,
               recognition_floor: float = 0.0):
    self.task = task
    self.vocab = vocab
    self.max_action_tokens = max_action_tokens
    self.use_recognition_weights = use_recognition_weights
    self.recognition_floor = recognition_floor

  def __call__(self, example: Mapping[str, Any]):
    try:
      return seqs.build(example, self.task, self.vocab, self.max_action_tokens,
                        self.use_recognition_weights, self.recognition_floor)
    except seqs.EmptyActionError as e:
      return _Rejected(str(e))


def _shard(source, process_index: int, process_count: int) -> grain.MapDataset:
  ds = grain.MapDataset.source(source)
  shard = ds[process_index::process_count]
  require(len(shard) > 0, f'The data source has {len(source)} examples, fewer than the '
          f'{process_count} processes; use more data or fewer processes.')
  return shard


def _length_buckets(data_cfg, process_count: int) -> tuple[int, ...]:
  buckets = tuple(int(b) for b in _opt(data_cfg, 'length_buckets', ()))
  # Each process picks its bucket from its own rows; the global batch needs one shape.
  require(not buckets or process_count == 1,
          f'data.length_buckets={buckets} works on one process only (processes would pick '
          'different lengths); set data.length_buckets=() for multi-process runs.')
  return buckets


def _read_options(data_cfg) -> grain.ReadOptions:
  # Threads overlap record reads with training; 0 reads in the calling thread (in-memory data).
  num_threads = int(_opt(data_cfg, 'num_workers', 0))
  return grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=64 if num_threads > 0 else 0)


def task_stream(source, task: int, vocab, *, data_cfg, seed: int, process_index: int,
                process_count: int) -> grain.IterDataset:
  """This process's endless, per-epoch reshuffled stream of `task` Sequences (or _Rejected)."""
  ds = _shard(source, process_index, process_count)
  ds = ds.shuffle(seed=_task_seed(seed, task)).repeat()
  ds = ds.map(_build_sequence(task, vocab, data_cfg))
  return ds.to_iter_dataset(_read_options(data_cfg))


def schedule_plan(objectives_cfg, batch_size: int):
  """Returns plan(step) -> [(task, num_rows), ...] summing to batch_size, per the schedule."""
  idp_share = int(_opt(objectives_cfg, 'idp_share', 1))
  fdp_share = int(_opt(objectives_cfg, 'fdp_share', 1))
  schedule = _opt(objectives_cfg, 'schedule', 'alternate')
  require(idp_share >= 0 and fdp_share >= 0 and idp_share + fdp_share > 0,
          f'objectives.idp_share={idp_share} and objectives.fdp_share={fdp_share} must be '
          'non-negative and not both 0; set at least one of them to a positive number.')
  if schedule == 'alternate':
    pattern = [seqs.IDP] * idp_share + [seqs.FDP] * fdp_share
    return lambda step: [(pattern[step % len(pattern)], batch_size)]
  if schedule == 'mixed':
    num_idp = int(round(batch_size * idp_share / (idp_share + fdp_share)))
    if idp_share and fdp_share:
      require(batch_size >= 2, "objectives.schedule='mixed' needs at least 2 rows per process to "
              "hold both tasks; use schedule='alternate' or a larger train.global_batch_size.")
      num_idp = min(max(num_idp, 1), batch_size - 1)  # both tasks in every batch
    plan = [(t, n) for t, n in ((seqs.IDP, num_idp), (seqs.FDP, batch_size - num_idp)) if n]
    return lambda step: plan
  raise UserError(f"objectives.schedule={schedule!r} is not known; use 'alternate' or 'mixed'.")


class _StreamReader:
  """Reads Sequences of one task stream and remembers enough to restore examples not yet used.

  Packing may read an example that fits no row; it waits in `pending` for the next batch. The
  state is the stream position before the oldest pending example (`anchor`), how many examples were
  read since (`read`) and which of those are still pending (`pending`, offsets from the anchor):
  restoring re-reads them, which gives the same examples because the stream is deterministic.
  """

  def __init__(self, it: grain.DatasetIterator, stats: dict):
    self._it = it
    self._stats = stats
    self._pending: list[tuple[int, Any, seqs.Sequence]] = []  # (read index, state before, seq)
    self._num_read = 0

  def _read(self):
    before = copy.deepcopy(self._it.get_state())
    index = self._num_read
    item = next(self._it)
    self._num_read += 1
    return index, before, item

  def next_sequence(self) -> tuple[int, Any, seqs.Sequence]:
    rejects = 0
    while True:
      index, before, item = self._read()
      if not isinstance(item, _Rejected):
        return index, before, item
      self._stats['rejected'] += 1
      if self._stats['rejected'] == 1:
        logging.warning('Skipping an example: %s', item.reason)
      rejects += 1
      if rejects >= _MAX_CONSECUTIVE_REJECTS:
        raise UserError(f'{rejects} examples in a row have no action; check that the training '
                        'data has action labels.')

  def take(self, n: int) -> list[seqs.Sequence]:
    """The next n sequences (pending ones first)."""
    out = [p[2] for p in self._pending[:n]]
    self._pending = self._pending[n:]
    while len(out) < n:
      out.append(self.next_sequence()[2])
    return out

  def candidates(self, min_tokens: int, extra: int) -> list[tuple[int, Any, seqs.Sequence]]:
    """Pending + newly read sequences: enough to total min_tokens, then `extra` more.

    Pending ones beyond min_tokens count towards `extra`, so the backlog stays bounded.
    """
    cands, total, enough = list(self._pending), 0, None
    for i, c in enumerate(cands):
      total += len(c[2])
      if enough is None and total >= min_tokens:
        enough = i + 1
    while enough is None:
      cands.append(self.next_sequence())
      total += len(cands[-1][2])
      if total >= min_tokens:
        enough = len(cands)
    while len(cands) < enough + extra:
      cands.append(self.next_sequence())
    return cands

  def keep_pending(self, items: list[tuple[int, Any, seqs.Sequence]]) -> None:
    self._pending = list(items)

  def get_state(self) -> dict:
    if self._pending:
      first = self._pending[0][0]
      return {'anchor': self._pending[0][1], 'read': self._num_read - first,
              'pending': [p[0] - first for p in self._pending]}
    return {'anchor': copy.deepcopy(self._it.get_state()), 'read': 0, 'pending': []}

  def set_state(self, state: dict) -> None:
    self._it.set_state(copy.deepcopy(state['anchor']))
    self._num_read = 0
    pending = set(int(i) for i in state['pending'])
    self._pending = []
    for _ in range(int(state['read'])):
      offset, before, item = self._read()
      if offset in pending:
        self._pending.append((offset, before, item))


class DynamicsIterator(grain.DatasetIterator):
  """Yields per-process training batches (dicts of numpy arrays, see `jax_vlm.tokens.sequences`).

  `stats`: counters since the start of training (restored with the state): 'examples',
  'truncated_actions', 'rejected', 'tokens', 'padding'.
  """

  def __init__(self, parents: dict[int, grain.DatasetIterator], *, plan, batch_size: int,
               pad_id: int, max_seq_len: int, packing: bool, length_buckets=(),
               pack_lookahead: int = 8):
    super().__init__(list(parents.values()))
    self.stats = {'examples': 0, 'truncated_actions': 0, 'rejected': 0, 'tokens': 0,
                  'padding': 0}
    self._readers = {t: _StreamReader(it, self.stats) for t, it in parents.items()}
    self._plan = plan
    self._batch_size = batch_size
    self._pad_id = pad_id
    self._max_seq_len = max_seq_len
    self._packing = packing
    self._buckets = tuple(length_buckets)
    self._lookahead = pack_lookahead
    self._step = 0

  def _packed_rows(self, task: int, num_rows: int) -> tuple[dict, list[seqs.Sequence]]:
    reader = self._readers[task]
    cands = reader.candidates(num_rows * self._max_seq_len, self._lookahead)
    batch, leftover = seqs.pack_sequences([c[2] for c in cands], self._max_seq_len,
                                          self._pad_id, num_rows=num_rows)
    left = set(leftover)
    reader.keep_pending([cands[i] for i in leftover])
    return batch, [c[2] for i, c in enumerate(cands) if i not in left]

  def __next__(self) -> dict[str, np.ndarray]:
    plan = self._plan(self._step)
    for task, _ in plan:
      require(task in self._readers, f'objective {seqs.TASK_NAMES[task]} has no data stream.')
    if self._packing:
      parts, used = [], []
      for task, n in plan:
        b, s = self._packed_rows(task, n)
        parts.append(b)
        used += s
    else:
      groups = [self._readers[task].take(n) for task, n in plan]
      used = [s for g in groups for s in g]
      seq_len = seqs.choose_seq_len((len(s) for s in used), self._max_seq_len, self._buckets)
      parts = [seqs.pad_batch(g, seq_len, self._pad_id) for g in groups]
    batch = seqs.concat_batches(parts)
    self._step += 1
    self.stats['examples'] += len(used)
    self.stats['truncated_actions'] += sum(s.action_truncated for s in used)
    seg = batch['segment_ids']
    self.stats['tokens'] += int(seg.size)
    self.stats['padding'] += int(np.sum(seg == 0))
    return batch

  def get_state(self) -> dict[str, Any]:
    return {'step': self._step, 'stats': dict(self.stats),
            'streams': {seqs.TASK_NAMES[t]: r.get_state() for t, r in self._readers.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    names = {seqs.TASK_NAMES[t] for t in self._readers}
    require(set(state['streams']) == names,
            f'The data iterator state has streams {sorted(state["streams"])}, this pipeline '
            f'{sorted(names)}; restore with the objectives the checkpoint was trained with.')
    self._step = int(state['step'])
    self.stats.update({k: int(v) for k, v in state['stats'].items()})
    for t, r in self._readers.items():
      r.set_state(state['streams'][seqs.TASK_NAMES[t]])


class _DynamicsDataset(grain.IterDataset):
  """IterDataset over the task streams whose iterator is a DynamicsIterator."""

  def __init__(self, streams: dict[int, grain.IterDataset], **kwargs):
    super().__init__(list(streams.values()))
    self._tasks = list(streams)
    self._kwargs = kwargs

  def __iter__(self) -> DynamicsIterator:
    parents = {t: iter(p) for t, p in zip(self._tasks, self.parents)}
    return DynamicsIterator(parents, **self._kwargs)

  def __str__(self) -> str:
    return 'DynamicsDataset'


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  require(global_batch_size % process_count == 0 and global_batch_size > 0,
          f'train.global_batch_size={global_batch_size} is not a positive multiple of the '
          f'{process_count} processes; change it to a multiple.')
  return global_batch_size // process_count


def make_dynamics_dataset(source, vocab, *, data_cfg, objectives_cfg, global_batch_size: int,
                          seed: int, process_index: int | None = None,
                          process_count: int | None = None) -> grain.IterDataset:
  """The training pipeline as a grain IterDataset (iter() it for a DynamicsIterator)."""
  process_index, process_count = _process(process_index, process_count)
  batch_size = per_process_batch_size(global_batch_size, process_count)
  plan = schedule_plan(objectives_cfg, batch_size)
  tasks = [t for t, share in ((seqs.IDP, _opt(objectives_cfg, 'idp_share', 1)),
                              (seqs.FDP, _opt(objectives_cfg, 'fdp_share', 1))) if share > 0]
  streams = {t: task_stream(source, t, vocab, data_cfg=data_cfg, seed=seed,
                            process_index=process_index, process_count=process_count)
             for t in tasks}
  return _DynamicsDataset(
      streams, plan=plan, batch_size=batch_size, pad_id=int(vocab.pad_id),
      max_seq_len=int(data_cfg.max_seq_len), packing=bool(_opt(data_cfg, 'packing', False)),
      length_buckets=_length_buckets(data_cfg, process_count),
      pack_lookahead=int(_opt(data_cfg, 'pack_lookahead', 8)))


def make_dynamics_iterator(source, vocab, *, data_cfg, objectives_cfg, global_batch_size: int,
                           seed: int, process_index: int | None = None,
                           process_count: int | None = None) -> DynamicsIterator:
  """Endless iterator of this process's training batches (global_batch_size / process_count rows).

  source: a grain RandomAccessDataSource (or any sequence) of example dicts (tokens/sequences.py).
  vocab: anything with bos_id, eos_id, boi_id, eoi_id, pad_id, encode_text, codes_to_ids.
  data_cfg: config.data (max_seq_len, action_max_tokens, recognition_weights, num_workers and the
    optional packing, length_buckets, pack_lookahead). objectives_cfg: config.objectives.
  Each batch: token_ids, positions, segment_ids, loss_weights, task_ids [b, s] and task [b].
  """
  return iter(make_dynamics_dataset(
      source, vocab, data_cfg=data_cfg, objectives_cfg=objectives_cfg,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count))


def get_state(it: grain.DatasetIterator) -> dict[str, Any]:
  """The iterator's JSON-able state (store it in the checkpoint)."""
  return copy.deepcopy(it.get_state())


def set_state(it: grain.DatasetIterator, state: Mapping[str, Any]) -> grain.DatasetIterator:
  """Restores `it` to a state from `get_state`; the next batches are those that followed it."""
  it.set_state(copy.deepcopy(dict(state)))
  return it


# ----------------------------------------------------------------------------------------------
# Evaluation: one ordered pass, no shuffling, no repeat.


class _EvalBatch:
  """Indices of one eval batch -> padded batch with `example_index [b]` (-1: padding row)."""

  def __init__(self, source, task: int, vocab, data_cfg, shard_indices: np.ndarray,
               batch_size: int, buckets: tuple[int, ...]):
    self.source = source
    self.build = _build_sequence(task, vocab, data_cfg)
    self.task = task
    self.pad_id = int(vocab.pad_id)
    self.max_seq_len = int(data_cfg.max_seq_len)
    self.buckets = buckets
    self.shard_indices = shard_indices
    self.batch_size = batch_size

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    lo = batch_index * self.batch_size
    indices = self.shard_indices[lo:lo + self.batch_size]
    rows, example_index = [], []
    for i in indices:
      s = self.build(self.source[int(i)])
      if isinstance(s, seqs.Sequence):
        rows.append(s)
        example_index.append(int(i))
    seq_len = seqs.choose_seq_len((len(s) for s in rows), self.max_seq_len, self.buckets)
    batch = seqs.pad_batch(rows, seq_len, self.pad_id, num_rows=self.batch_size)
    batch['task'][:] = self.task
    batch['example_index'] = np.full((self.batch_size,), -1, np.int32)
    batch['example_index'][:len(example_index)] = example_index
    return batch


def make_eval_dataset(source, vocab, *, data_cfg, task, batch_size: int,
                      process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
  """One ordered pass over this process's shard of a split, as padded batches of one task.

  task: 'idp' / 'fdp' (or 0 / 1). batch_size: rows per process. Every process gets the same
  number of batches (ceil(ceil(len(source) / processes) / batch_size)) so jitted eval steps stay
  in lockstep; rows without an example (the tail, or an example with an empty action) are padding
  with `example_index` -1. `example_index [b]` is the row's index in `source`.
  Iterate with `for batch in ds` (re-iterable, deterministic).
  """
  process_index, process_count = _process(process_index, process_count)
  names = {v: k for k, v in seqs.TASK_NAMES.items()}
  task = names.get(task, task)
  require(task in seqs.TASK_NAMES, f"eval task {task!r} is not known; use 'idp' or 'fdp'.")
  require(batch_size > 0, f'eval batch size {batch_size} must be positive.')
  n = len(source)
  shard_indices = np.arange(process_index, n, process_count)
  num_batches = math.ceil(math.ceil(n / process_count) / batch_size)
  return grain.MapDataset.range(num_batches).map(
      _EvalBatch(source, task, vocab, data_cfg, shard_indices, batch_size,
                 _length_buckets(data_cfg, process_count)))
