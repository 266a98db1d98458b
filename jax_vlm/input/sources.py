"""Batch sources of the Trainer: `next()` gives this process's rows as numpy; `get_state` /
`set_state` are JSON-able, so a restored run continues with the same batches.

`train.data_source` names one: 'dataset' (a prepared record set through input/pipeline.py) or
'synthetic' (deterministic random batches laid out like real ones, for smoke configs such as
configs/train_smoke.py, tests and benchmarks: no data set needed).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from data.action_world import pretrain
from jax_vlm.core.errors import require
from jax_vlm.input import datasets
from jax_vlm.input import pipeline as input_pipeline
from jax_vlm.tokens import sequences as seqs
from jax_vlm.tokens.vocab import UnifiedVocab


class SyntheticSource:
  """Deterministic random IDP/FDP batches laid out like real ones, for tests and benchmarks.

  Rows come from a fixed pool of `pool_size` sequences (so a model can fit them); batch k depends
  only on (seed, k, process), which makes a restored run see the same batches. The objective
  schedule is the config's: 'alternate' gives one task per batch by the shares, 'mixed' both.
  """

  def __init__(self, config, local_batch_size: int, process_index: int = 0, pool_size: int = 16):
    self.vocab_size = int(config.model.vocab_size)
    self.seq_len = int(min(config.data.max_seq_len, config.model.max_positions))
    self.batch = local_batch_size
    self.seed = int(config.seed)
    self.process_index = process_index
    self.objectives = config.objectives
    self.pool_size = pool_size
    self.step = 0

  def _task_pattern(self) -> list[int]:
    o = self.objectives
    return [0] * int(o.idp_share) + [1] * int(o.fdp_share)

  def _row(self, index: int, task: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, index % self.pool_size, task])
    s = self.seq_len
    tokens = rng.integers(1, self.vocab_size, size=s, dtype=np.int32)
    length = int(rng.integers(s * 3 // 4, s + 1))
    weights = np.zeros(s, np.float32)
    if task == 0:  # IDP: a short action at the end
      n = max(2, s // 8)
      weights[length - n:length] = 1.0
    else:  # FDP: the target image in the second half, with recognition-like weights
      start = s // 2
      weights[start:length] = rng.uniform(0.5, 1.5, size=length - start).astype(np.float32)
    segment_ids = (np.arange(s) < length).astype(np.int32)
    tokens = np.where(segment_ids > 0, tokens, 0).astype(np.int32)
    return {'token_ids': tokens, 'positions': np.arange(s, dtype=np.int32),
            'segment_ids': segment_ids, 'loss_weights': weights}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    pattern = self._task_pattern()
    if self.objectives.schedule == 'alternate':
      tasks = [pattern[self.step % len(pattern)]] * self.batch
    else:
      tasks = [pattern[i % len(pattern)] for i in range(self.batch)]
    rows = []
    for i, task in enumerate(tasks):
      index = (self.step * self.batch + i) * 7919 + self.process_index * 104729
      rows.append(self._row(index, task))
    self.step += 1
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch['task'] = np.asarray(tasks, np.int32)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {'step': self.step}

  def set_state(self, state: dict[str, Any]) -> None:
    self.step = int(state['step'])


class DocumentSource:
  """Pretraining batches of action-free documents (data/action_world/pretrain.py) over a pool of
  scenes whose VQ codes are already known.

  Batch k depends only on (seed, k, process, stream), so a restored run sees the same batches.
  Every row holds one document, right-padded to `seq_len`. `stream` > 0 draws other batches
  from the same seed (a later pretraining phase). `region_changed`: see
  pretrain.sample_document.
  """

  def __init__(self, scenes, scene_codes: np.ndarray, captions: list[str], vocab, *,
               kinds: tuple[str, ...], seq_len: int, local_batch_size: int, seed: int,
               process_index: int = 0, stream: int = 0, world=pretrain.DEFAULT_CONFIG,
               region_changed: int = 1):
    self.stream, self.world, self.region_changed = int(stream), world, int(region_changed)
    self.scenes, self.codes, self.vocab = scenes, np.asarray(scene_codes), vocab
    self.caption_ids = [np.asarray(vocab.encode_text(c), np.int32) for c in captions]
    self.kinds, self.seq_len, self.batch = tuple(kinds), int(seq_len), int(local_batch_size)
    self.seed, self.process_index, self.step = int(seed), int(process_index), 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    key = [self.seed, self.step, self.process_index] + ([self.stream] if self.stream else [])
    rng = np.random.default_rng(key)
    rows = []
    for _ in range(self.batch):
      doc = pretrain.sample_document(rng, self.kinds, self.scenes, self.world,
                                     self.region_changed)
      if doc.kind in pretrain.CAPTION_KINDS:
        text = self.caption_ids[doc.scene_ids[-1]]
      else:
        text = np.asarray(self.vocab.encode_text(doc.text) if doc.text else [], np.int32)
      images = [self.codes[i] for i in doc.scene_ids]
      if doc.kind == 'region':  # the first photo, then itself with the other's strip pasted
        images = [images[0], pretrain.pasted_codes(images[0], images[1], doc.cells)]
      rows.append(seqs.build_document(images, text, self.vocab,
                                      image_output=doc.kind in pretrain.IMAGE_OUTPUT_KINDS))
    self.step += 1
    batch = seqs.pad_batch(rows, self.seq_len, self.vocab.pad_id)
    return {k: batch[k] for k in ('token_ids', 'positions', 'segment_ids', 'loss_weights', 'task')}

  def get_state(self) -> dict[str, Any]:
    return {'step': self.step}

  def set_state(self, state: dict[str, Any]) -> None:
    self.step = int(state['step'])


class PipelineSource:
  """Wraps jax_vlm.input.pipeline's DynamicsIterator (JSON state via its get/set_state)."""

  def __init__(self, iterator):
    self._ip = input_pipeline
    self.iterator = iterator

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self.iterator)
    return {k: batch[k] for k in ('token_ids', 'positions', 'segment_ids', 'loss_weights', 'task')}

  def get_state(self) -> dict[str, Any]:
    return self._ip.get_state(self.iterator)

  def set_state(self, state: dict[str, Any]) -> None:
    self._ip.set_state(self.iterator, state)


def make_batch_source(config, local_batch_size: int):
  """The batch source named by `train.data_source` for this process."""
  if config.train.data_source == 'synthetic':
    return SyntheticSource(config, local_batch_size, jax.process_index())
  source, vocab = _open_dataset(config)
  it = input_pipeline.make_dynamics_iterator(
      source, vocab, data_cfg=config.data, objectives_cfg=config.objectives,
      global_batch_size=int(config.train.global_batch_size), seed=int(config.seed))
  return PipelineSource(it)


def _open_dataset(config):
  """(training records, vocabulary) for `config.data` / `config.vocab`."""
  require(bool(config.data.dir), 'config.data.dir is empty; point it at a prepared data set (run '
          'the build_data/tokenize stages) or set train.data_source=synthetic.')
  require(os.path.isdir(config.data.dir),
          f'data set directory {config.data.dir} does not exist; run the data stages first.')
  vocab = UnifiedVocab.from_config(config.vocab)
  return datasets.open_split(config.data, 'train'), vocab
