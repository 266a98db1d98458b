"""The on-disk format of training examples: sharded ArrayRecord files of msgpack-encoded dicts.

An example is a flat dict from field name to a numpy array, a numpy/Python scalar, a `str`, `bytes`
or None. A tokenized dynamics triplet (`TRIPLET_SCHEMA`) looks like

    src_codes     [n] int32   VQGAN code ids of the source frame (row-major, n = h' * w')
    tgt_codes     [n] int32   code ids of the target frame
    action        str         the action / instruction text
    action_type   str         a coarse label (AURORA task, EPIC verb, 'pseudo' for IDP labels, ...)
    example_id    str         unique within a data set
    split         str         'train', 'validation', ...
  and optionally src_features [h', w', c] float (pre-quantisation VQGAN features), tgt_features,
  source (data set name), src_frame_index / tgt_frame_index (int), label_score (float).

Serialisation (version 1), one ArrayRecord record per example: `msgpack.packb(example)` with keys
sorted, where numpy arrays and numpy scalars are msgpack ExtType 42 whose payload is itself msgpack
`[dtype.str, shape, raw little-endian C-order bytes]`. The same example always gives the same bytes.

`write_records(prefix, examples, num_shards)` deals examples round-robin over shards named
`<prefix>-00000-of-00004.array_record`, ... and writes `<prefix>.meta.json` (shard paths, counts,
skipped examples with reasons). `RecordSource(paths)` reads them back as grain's
RandomAccessDataSource (`__len__`, `__getitem__`); its index order is shard by shard.
"""

import collections
import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import msgpack
import numpy as np

from data.errors import UserError

FORMAT = 'jax_vlm.example/1'
_NDARRAY_EXT = 42

# Actions longer than this many characters are skipped when examples are made: they are almost
# always scraping or annotation errors, and a 48-token action budget holds about 250 characters.
MAX_ACTION_CHARS = 256


def clean_action(text: Any, max_chars: Optional[int] = MAX_ACTION_CHARS
                 ) -> tuple[str, Optional[str]]:
  """Normalises an action text and says why it cannot be used, if it cannot.

  Returns:
    (action with whitespace collapsed, None) when usable, else (text, reason) with reason one of
    'action is not a string', 'empty action', 'action longer than N characters'.
  """
  if not isinstance(text, str):
    return '', 'action is not a string'
  action = ' '.join(text.split())
  if not action:
    return action, 'empty action'
  if max_chars is not None and len(action) > max_chars:
    return action, f'action longer than {max_chars} characters'
  return action, None


# --- schema -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of an example: 'array' (with dtype kind and rank), 'str', 'int' or 'float'."""
  kind: str
  dtype_kinds: str = ''  # numpy dtype.kind letters allowed for arrays, e.g. 'iu' or 'f'
  ndim: Optional[int] = None
  required: bool = True


TRIPLET_SCHEMA: dict[str, Field] = {
    'src_codes': Field('array', 'iu', 1),
    'tgt_codes': Field('array', 'iu', 1),
    'action': Field('str'),
    'action_type': Field('str'),
    'example_id': Field('str'),
    'split': Field('str'),
    'src_features': Field('array', 'f', 3, required=False),
    'tgt_features': Field('array', 'f', 3, required=False),
    'source': Field('str', required=False),
    'src_frame_index': Field('int', required=False),
    'tgt_frame_index': Field('int', required=False),
    'label_score': Field('float', required=False),
}


def check_example(example: Mapping[str, Any], schema: Mapping[str, Field],
                  max_action_chars: Optional[int] = MAX_ACTION_CHARS) -> Optional[str]:
  """Returns why `example` does not fit `schema` (one short reason), or None when it fits.

  Fields not in the schema are allowed (and stored). When the schema has an `action` field, the
  action must pass `clean_action`.
  """
  if not isinstance(example, Mapping):
    return 'example is not a dict'
  for name, field in schema.items():
    if name not in example or example[name] is None:
      if field.required:
        return f'missing field {name}'
      continue
    value = example[name]
    if field.kind == 'array':
      if not isinstance(value, np.ndarray):
        return f'field {name} is not a numpy array'
      if field.dtype_kinds and value.dtype.kind not in field.dtype_kinds:
        return f'field {name} has dtype {value.dtype}'
      if field.ndim is not None and value.ndim != field.ndim:
        return f'field {name} has rank {value.ndim}, expected {field.ndim}'
      if value.size == 0:
        return f'field {name} is empty'
    elif field.kind == 'str' and not isinstance(value, str):
      return f'field {name} is not a string'
    elif field.kind == 'int' and not isinstance(value, (int, np.integer)):
      return f'field {name} is not an integer'
    elif field.kind == 'float' and not isinstance(value, (int, float, np.integer, np.floating)):
      return f'field {name} is not a number'
  if 'action' in schema and 'action' in example:
    _, reason = clean_action(example['action'], max_action_chars)
    if reason:
      return reason
  if ('src_codes' in schema and 'tgt_codes' in schema and 'src_codes' in example
      and 'tgt_codes' in example and example['src_codes'].shape != example['tgt_codes'].shape):
    return 'src_codes and tgt_codes differ in length'
  return None


# --- serialisation ----------------------------------------------------------------------------


def _pack_default(value):
  if isinstance(value, (np.ndarray, np.generic)):
    array = np.asarray(value)
    if array.dtype.kind in 'OUSV':
      raise TypeError(f'numpy dtype {array.dtype} cannot be stored; use str/bytes or numbers')
    # (not ascontiguousarray: that turns 0-d arrays into 1-d ones)
    array = array.astype(array.dtype.newbyteorder('<'), order='C', copy=False)
    payload = msgpack.packb([array.dtype.str, list(array.shape), array.tobytes()])
    return msgpack.ExtType(_NDARRAY_EXT, payload)
  raise TypeError(f'cannot store a value of type {type(value).__name__}')


def _unpack_ext(code, payload):
  if code != _NDARRAY_EXT:
    return msgpack.ExtType(code, payload)
  dtype, shape, data = msgpack.unpackb(payload)
  array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
  # A native-order, writable copy: readers mutate batches and frombuffer views are read-only.
  array = array.astype(array.dtype.newbyteorder('='), copy=True)
  return array[()] if array.ndim == 0 else array  # numpy scalars come back as numpy scalars


def encode_example(example: Mapping[str, Any]) -> bytes:
  """Example dict -> record bytes (deterministic: keys sorted)."""
  ordered = {str(k): example[k] for k in sorted(example)}
  return msgpack.packb(ordered, default=_pack_default, use_bin_type=True, strict_types=False)


def decode_example(record: bytes) -> dict[str, Any]:
  """Record bytes -> example dict (arrays come back with their dtype and shape)."""
  return msgpack.unpackb(record, ext_hook=_unpack_ext, raw=False, strict_map_key=True)


# --- writing ----------------------------------------------------------------------------------


@dataclasses.dataclass
class WriteReport:
  """What `write_records` did: shard paths and counts, and every skipped example with its reason."""
  paths: list[str]
  counts: list[int]
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_ids: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, reason)

  @property
  def num_written(self) -> int:
    return sum(self.counts)

  def summary(self) -> str:
    lines = [f'wrote {self.num_written} examples to {len(self.paths)} shards']
    for reason, n in sorted(self.skipped.items()):
      lines.append(f'  skipped {n}: {reason}')
    return '\n'.join(lines)


def shard_paths(path_prefix: str, num_shards: int) -> list[str]:
  return [f'{path_prefix}-{i:05d}-of-{num_shards:05d}.array_record' for i in range(num_shards)]


def write_records(path_prefix: Union[str, os.PathLike], examples: Iterable[Mapping[str, Any]],
                  num_shards: int = 1, schema: Optional[Mapping[str, Field]] = TRIPLET_SCHEMA,
                  max_action_chars: Optional[int] = MAX_ACTION_CHARS) -> WriteReport:
  """Writes examples to `num_shards` ArrayRecord files, round-robin, streaming.

  Examples that do not fit `schema` (None: no check) are skipped, counted and listed in the report
  and in `<prefix>.meta.json`; a run never stops half-way for one bad example.

  Args:
    path_prefix: e.g. `/data/aurora/train`; the directory is created.
    examples: dicts as described at the top of this module.
    num_shards: number of files (>= 1).
    schema: field rules, `TRIPLET_SCHEMA` by default.
    max_action_chars: the action length limit applied with the schema.

  Returns:
    a `WriteReport`.
  """
  from array_record.python import array_record_module  # heavy import, only when writing

  if num_shards < 1:
    raise UserError(f'num_shards must be at least 1, got {num_shards}; pass a positive count.')
  path_prefix = os.fspath(path_prefix)
  os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
  report = WriteReport(paths=shard_paths(path_prefix, num_shards), counts=[0] * num_shards)
  # group_size:1 makes every record its own chunk: what random access (grain) wants.
  writers = [array_record_module.ArrayRecordWriter(p, 'group_size:1') for p in report.paths]
  try:
    written = 0
    for position, example in enumerate(examples):
      reason = check_example(example, schema, max_action_chars) if schema is not None else None
      record = None
      if reason is None:
        try:
          record = encode_example(example)
        except TypeError as e:
          reason = f'unstorable value ({e})'
      if reason is not None:
        ident = str(example.get('example_id', position)) if isinstance(example, Mapping) else str(
            position)
        report.skipped[reason] += 1
        report.skipped_ids.append((ident, reason))
        continue
      shard = written % num_shards
      writers[shard].write(record)
      report.counts[shard] += 1
      written += 1
  finally:
    for w in writers:
      w.close()
  meta = {
      'format': FORMAT,
      'paths': [os.path.basename(p) for p in report.paths],
      'counts': report.counts,
      'skipped': dict(report.skipped),
      'skipped_ids': report.skipped_ids[:1000],
  }
  with open(path_prefix + '.meta.json', 'w') as f:
    json.dump(meta, f, indent=1)
  return report


# --- reading ----------------------------------------------------------------------------------


class RecordSource:
  """Decoded examples from ArrayRecord files, as a grain RandomAccessDataSource.

  Index `i` runs over the files in the order given, each file in record order. Readers open lazily
  (so the source pickles into grain worker processes).
  """

  def __init__(self, paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]):
    from array_record.python import array_record_data_source

    if isinstance(paths, (str, os.PathLike)):
      paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
      raise UserError('RecordSource got no files; pass the .array_record shard paths.')
    for p in paths:
      if not os.path.isfile(p):
        raise UserError(f'Record file {p} does not exist; write it with write_records first.')
    self.paths = paths
    self._source = array_record_data_source.ArrayRecordDataSource(paths)

  @classmethod
  def from_prefix(cls, path_prefix: Union[str, os.PathLike]) -> 'RecordSource':
    """Opens the shards `write_records(path_prefix, ...)` wrote (found via `<prefix>.meta.json`)."""
    path_prefix = os.fspath(path_prefix)
    meta_path = path_prefix + '.meta.json'
    if not os.path.isfile(meta_path):
      raise UserError(f'No record set at {path_prefix} ({meta_path} is missing); '
                      'check the prefix or write the records first.')
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get('format') != FORMAT:
      raise UserError(f'{meta_path} has format {meta.get("format")!r}, not {FORMAT!r}; '
                      'rewrite the records with this version.')
    directory = os.path.dirname(os.path.abspath(path_prefix))
    return cls([os.path.join(directory, name) for name in meta['paths']])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict[str, Any]:
    if not 0 <= int(index) < len(self):
      raise IndexError(f'record index {index} out of range [0, {len(self)})')
    return decode_example(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [decode_example(r) for r in self._source.__getitems__(indices)]

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f'RecordSource({len(self.paths)} files, {len(self)} examples)'
