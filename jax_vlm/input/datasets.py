"""Opening prepared (tokenized) data sets for the trainer and evaluators, and config path templates.

A prepared data set is a directory of record sets written by `data.records.write_records`: a record
set is a prefix `DIR/<name>` with shards `DIR/<name>-00000-of-0000N.array_record` and
`DIR/<name>.meta.json`. `open_split(data_cfg, 'train')` concatenates
  - `data_cfg.dir/<name>` for every name in `data_cfg.train_splits` (default ('labelled',)), and
  - every path in `data_cfg.extra_train` (default ()): a record prefix, or a directory whose record
    sets are all taken (the bootstrap stage writes its synthetic triplets there);
  with `data_cfg.train_examples` N > 0 only the first N examples of the training splits are read
  (the extra training data stays whole);
any other split name opens the one record set `data_cfg.dir/<split>`.

Configs cannot know the run's working directory, so their paths may hold the template
`{workdir}` ('{workdir}/tokenize'); `resolve_paths(config, workdir)` fills it in.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import ml_collections

from data.records import FORMAT, RecordSource
from jax_vlm.core.errors import UserError, require

WORKDIR = '{workdir}'
META_SUFFIX = '.meta.json'
DEFAULT_TRAIN_SPLITS = ('labelled',)


def resolve_paths(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A copy of `config` with '{workdir}' replaced by `workdir` in every string (also inside
  lists and tuples); the input is not changed."""
  workdir = os.path.abspath(workdir)

  def fill(value: Any) -> Any:
    if isinstance(value, str):
      return value.replace(WORKDIR, workdir)
    if isinstance(value, (list, tuple)):
      return type(value)(fill(v) for v in value)
    if isinstance(value, dict):
      return {k: fill(v) for k, v in value.items()}
    return value

  return ml_collections.ConfigDict(fill(config.to_dict()))


def _opt(cfg, name: str, default):
  try:
    value = cfg[name]
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def record_prefixes(path: str) -> list[str]:
  """The record-set prefixes at `path`: itself when `path.meta.json` exists, else those of a
  directory (sorted), else a UserError."""
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(path + META_SUFFIX):
    return [path]
  if os.path.isdir(path):
    metas = glob.glob(os.path.join(path, '*' + META_SUFFIX))
    prefixes = sorted(m[:-len(META_SUFFIX)] for m in metas)
    require(prefixes, f'Directory {path} holds no record sets (*{META_SUFFIX}); write records '
            'there first or remove it from the data config.')
    return prefixes
  raise UserError(f'No record set at {path} (neither {path}{META_SUFFIX} nor a directory); run '
                  'the stage that writes it (e.g. tokenize) or fix the path in the data config.')


def shard_files(prefix: str) -> list[str]:
  """The ArrayRecord shard paths of one record set, from its meta file."""
  meta_path = prefix + META_SUFFIX
  with open(meta_path) as f:
    meta = json.load(f)
  require(meta.get('format') == FORMAT, f'{meta_path} has format {meta.get("format")!r}, not '
          f'{FORMAT!r}; rewrite the records with this version.')
  directory = os.path.dirname(prefix)
  return [os.path.join(directory, name) for name in meta['paths']]


def _train_prefixes(data_cfg) -> tuple[list[str], list[str]]:
  """(prefixes of data_cfg.train_splits under data_cfg.dir, prefixes of data_cfg.extra_train)."""
  names = tuple(_opt(data_cfg, 'train_splits', DEFAULT_TRAIN_SPLITS))
  extra = tuple(_opt(data_cfg, 'extra_train', ()))
  require(names or extra, 'data.train_splits and data.extra_train are both empty; name at least '
          'one training split.')
  head = [p for name in names for p in record_prefixes(os.path.join(data_cfg.dir, name))]
  return head, [p for path in extra for p in record_prefixes(path)]


def _require_dir(data_cfg) -> None:
  require(bool(data_cfg.dir), 'data.dir is empty; point it at a prepared data set (e.g. '
          '{workdir}/tokenize after the tokenize stage).')
  require(WORKDIR not in str(data_cfg.dir), f'data.dir={data_cfg.dir!r} still holds {WORKDIR}; '
          'resolve it with jax_vlm.input.datasets.resolve_paths(config, workdir) first.')


def split_prefixes(data_cfg, split: str) -> list[str]:
  """The record-set prefixes that make up `split` (see the module docstring)."""
  _require_dir(data_cfg)
  if split != 'train':
    return record_prefixes(os.path.join(data_cfg.dir, split))
  head, extra = _train_prefixes(data_cfg)
  return head + extra


def _files(prefixes: list[str]) -> list[str]:
  return [f for prefix in prefixes for f in shard_files(prefix)]


class HeadSource:
  """The first `limit` examples of `head`, then every example of `rest` (None: nothing), as one
  random-access source (grain reads it like a RecordSource)."""

  def __init__(self, head: RecordSource, limit: int, rest: RecordSource | None = None):
    self.head, self.limit, self.rest = head, min(int(limit), len(head)), rest

  def __len__(self) -> int:
    return self.limit + (len(self.rest) if self.rest is not None else 0)

  def __getitem__(self, index: int):
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} is outside a source of {len(self)} examples')
    return self.head[index] if index < self.limit else self.rest[index - self.limit]

  def __repr__(self) -> str:
    return f'HeadSource(first {self.limit} of {len(self.head)}, then {len(self) - self.limit})'


def open_split(data_cfg, split: str) -> RecordSource | HeadSource:
  """One source over every record set of `split` ('train' concatenates the training splits and
  the extra training data, in the order listed; `data_cfg.train_examples` N > 0 keeps only the
  first N examples of the training splits)."""
  limit = int(_opt(data_cfg, 'train_examples', 0) or 0)
  require(limit >= 0, f'data.train_examples={limit} must be >= 0; set 0 to read every example.')
  if split != 'train' or limit == 0:
    return RecordSource(_files(split_prefixes(data_cfg, split)))
  _require_dir(data_cfg)
  head, extra = _train_prefixes(data_cfg)
  require(bool(head), 'data.train_examples needs data.train_splits to name a training split.')
  source = RecordSource(_files(head))
  require(limit <= len(source), f'data.train_examples={limit} is more than the {len(source)} '
          'examples of data.train_splits; lower it, or set 0 to read them all.')
  return HeadSource(source, limit, RecordSource(_files(extra)) if extra else None)
