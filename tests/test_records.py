"""ArrayRecord example storage (data/records.py) and the TF-free TFDS builders."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data import records
from jax_vlm.core.errors import UserError


def triplet(i, n=16, **extra):
  rng = np.random.default_rng(i)
  example = {
      'src_codes': rng.integers(0, 8192, n).astype(np.int32),
      'tgt_codes': rng.integers(0, 8192, n).astype(np.int32),
      'action': f'move the red circle {i} cells',
      'action_type': 'move',
      'example_id': f'ex{i}',
      'split': 'train',
  }
  example.update(extra)
  return example


def assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    if isinstance(a[key], np.ndarray):
      assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape
      np.testing.assert_array_equal(a[key], b[key])
    else:
      assert a[key] == b[key] and type(a[key]) is type(b[key]), key


def test_encode_decode_round_trip_and_determinism():
  example = triplet(0, src_features=np.random.default_rng(1).normal(size=(2, 3, 4)).astype(
      np.float32), label_score=np.float32(-1.25), src_frame_index=7, source='epic',
                    raw=b'\x00\x01', empty=None, flag=True, ratio=0.5,
                    big_endian=np.arange(3, dtype='>i2'), scalar=np.int64(3))
  record = records.encode_example(example)
  decoded = records.decode_example(record)
  assert decoded['big_endian'].dtype == np.int16  # stored little-endian, read back native
  np.testing.assert_array_equal(decoded.pop('big_endian'), [0, 1, 2])
  expected = dict(example)
  expected.pop('big_endian')
  assert_same(expected, decoded)
  assert type(decoded['label_score']) is np.float32
  decoded['src_codes'][0] = -1  # decoded arrays are writable copies
  # Same example, keys in another order: the same bytes.
  assert records.encode_example(dict(reversed(list(example.items())))) == record
  with pytest.raises(TypeError):
    records.encode_example({'x': np.array(['a', 'b'])})
  with pytest.raises(TypeError):
    records.encode_example({'x': object()})


def test_check_example_reasons():
  assert records.check_example(triplet(0), records.TRIPLET_SCHEMA) is None
  cases = {
      'missing field action': {k: v for k, v in triplet(0).items() if k != 'action'},
      'empty action': triplet(0, action=' \n '),
      'action longer than 256 characters': triplet(0, action='a' * 257),
      'field action is not a string': triplet(0, action=3),
      'field src_codes has dtype float32': triplet(0, src_codes=np.zeros(16, np.float32)),
      'field tgt_codes has rank 2, expected 1': triplet(0, tgt_codes=np.zeros((4, 4), np.int32)),
      'field src_codes is empty': triplet(0, src_codes=np.zeros(0, np.int32),
                                          tgt_codes=np.zeros(0, np.int32)),
      'src_codes and tgt_codes differ in length': triplet(0, tgt_codes=np.zeros(8, np.int32)),
      'field src_codes is not a numpy array': triplet(0, src_codes=[1, 2]),
      'field src_frame_index is not an integer': triplet(0, src_frame_index='3'),
  }
  for reason, example in cases.items():
    assert records.check_example(example, records.TRIPLET_SCHEMA) == reason
  assert records.check_example(triplet(0, action='a' * 300), records.TRIPLET_SCHEMA,
                               max_action_chars=None) is None
  assert records.clean_action('  pick \t up\n the cup ') == ('pick up the cup', None)


def test_write_and_read_records(tmp_path):
  examples = [triplet(i) for i in range(10)]
  bad = [triplet(100, action=''), triplet(101, action='x' * 1000), {'example_id': 'half'},
         triplet(102, weird=object())]
  stream = (e for e in examples[:5] + bad + examples[5:])  # a generator: writing streams
  prefix = str(tmp_path / 'out' / 'train')
  report = records.write_records(prefix, stream, num_shards=3)
  assert report.num_written == 10 and report.counts == [4, 3, 3]
  assert report.paths == [f'{prefix}-0000{i}-of-00003.array_record' for i in range(3)]
  assert all(os.path.isfile(p) for p in report.paths)
  assert report.skipped == {'empty action': 1, 'action longer than 256 characters': 1,
                            'missing field src_codes': 1,
                            'unstorable value (cannot store a value of type object)': 1}
  assert [i for i, _ in report.skipped_ids] == ['ex100', 'ex101', 'half', 'ex102']
  assert 'skipped 1: empty action' in report.summary()
  meta = json.load(open(prefix + '.meta.json'))
  assert meta['counts'] == [4, 3, 3] and meta['format'] == records.FORMAT

  source = records.RecordSource.from_prefix(prefix)
  assert len(source) == 10
  # Round-robin writing, shard-major reading: shard s holds examples s, s + 3, s + 6, ...
  order = [i for s in range(3) for i in range(s, 10, 3)]
  got = [source[k]['example_id'] for k in range(10)]
  assert got == [f'ex{i}' for i in order]
  for k, i in enumerate(order):
    assert_same(examples[i], source[k])
  assert [e['example_id'] for e in source.__getitems__([9, 0])] == [got[9], got[0]]
  with pytest.raises(IndexError):
    source[10]
  # The source pickles (grain worker processes) and reads the same after.
  clone = pickle.loads(pickle.dumps(source))
  assert_same(clone[4], source[4])
  # Paths directly, in any order the caller wants.
  assert len(records.RecordSource(report.paths[1:])) == 6

  # Deterministic: writing the same examples again gives identical files.
  again = records.write_records(str(tmp_path / 'again' / 'train'), examples[:5] + examples[5:],
                                num_shards=3)
  for a, b in zip(report.paths, again.paths):
    assert open(a, 'rb').read() == open(b, 'rb').read()


def test_records_with_grain(tmp_path):
  import grain

  prefix = str(tmp_path / 'train')
  records.write_records(prefix, [triplet(i, n=4) for i in range(6)], num_shards=2)
  source = records.RecordSource.from_prefix(prefix)
  dataset = grain.MapDataset.source(source).shuffle(seed=0).map(lambda e: e['src_codes']).batch(3)
  batches = list(dataset)
  assert len(batches) == 2 and batches[0].shape == (3, 4) and batches[0].dtype == np.int32
  ids = sorted(e['example_id'] for e in grain.MapDataset.source(source).shuffle(seed=0))
  assert ids == [f'ex{i}' for i in range(6)]


def test_record_errors(tmp_path):
  with pytest.raises(UserError, match='num_shards'):
    records.write_records(str(tmp_path / 'x'), [], num_shards=0)
  with pytest.raises(UserError, match='does not exist'):
    records.RecordSource([str(tmp_path / 'nope.array_record')])
  with pytest.raises(UserError, match='no files'):
    records.RecordSource([])
  with pytest.raises(UserError, match='meta.json is missing'):
    records.RecordSource.from_prefix(str(tmp_path / 'nope'))


# --- TFDS builders --------------------------------------------------------------------------


def test_tensorflow_is_not_installed():
  # The builders below must work without TensorFlow; make sure the test really runs without it.
  result = subprocess.run([sys.executable, '-c', 'import tensorflow'], capture_output=True)
  assert result.returncode != 0


def test_tokenized_dynamics_builder(tmp_path):
  import tensorflow_datasets as tfds

  from data import tfds_builders

  train = [triplet(i) for i in range(5)] + [triplet(9, action=''), triplet(0)]  # bad, duplicate
  builder = tfds_builders.TokenizedDynamics(
      examples={'train': train, 'validation': lambda: [triplet(i, split='validation')
                                                       for i in range(5, 7)]},
      data_dir=str(tmp_path))
  tfds_builders.build(builder)
  assert builder.reports['train'].counts == [5]
  assert builder.reports['train'].skipped == {'empty action': 1, 'duplicate example_id': 1}
  files = os.listdir(os.path.join(tmp_path, 'tokenized_dynamics', '1.0.0'))
  assert any('.array_record' in f for f in files)

  source = tfds.data_source('tokenized_dynamics', data_dir=str(tmp_path), split='train')
  assert len(source) == 5
  by_id = {source[k]['example_id'].decode(): source[k] for k in range(len(source))}
  assert sorted(by_id) == [f'ex{i}' for i in range(5)]
  for i in range(5):
    got = by_id[f'ex{i}']
    np.testing.assert_array_equal(got['src_codes'], triplet(i)['src_codes'])
    np.testing.assert_array_equal(got['tgt_codes'], triplet(i)['tgt_codes'])
    assert got['src_codes'].dtype == np.int32
    assert got['action'].decode() == triplet(i)['action']
  # Readable from the directory alone (no builder class), and through grain.
  import grain
  validation = tfds_builders.data_source(tmp_path / 'tokenized_dynamics' / '1.0.0', 'validation')
  assert len(validation) == 2
  assert len(list(grain.MapDataset.source(validation))) == 2
  with pytest.raises(UserError, match="no split 'test'"):
    tfds_builders.data_source(tmp_path / 'tokenized_dynamics' / '1.0.0', 'test')
  with pytest.raises(UserError, match='not a built TFDS data set'):
    tfds_builders.data_source(tmp_path, 'train')


def test_aurora_triplets_builder(tmp_path):
  from data import images, tfds_builders
  from tests.test_aurora import make_train

  root = make_train(tmp_path / 'aurora')
  builder = tfds_builders.AuroraTriplets(aurora_root=root, data_dir=str(tmp_path / 'tfds'))
  tfds_builders.build(builder)
  train = builder.reports['train']
  # 3 ag + 1 magicbrush triplets; the over-long instruction, the missing target and the corrupt
  # magicbrush input are counted.
  assert train.skipped == {'instruction longer than 256 characters': 1, 'target image missing': 1,
                           'image file unreadable': 1}
  assert builder.reports['validation'].num_items == 1
  source = tfds_builders.data_source(tmp_path / 'tfds' / 'aurora_triplets' / '1.0.0', 'train')
  assert len(source) == 4
  by_id = {source[k]['example_id'].decode(): source[k] for k in range(4)}
  assert sorted(by_id) == ['ag/0', 'ag/1', 'ag/2', 'magicbrush/0']
  got = by_id['magicbrush/0']
  assert got['instruction'].decode() == 'change the table for a dog'
  assert got['task'].decode() == 'magicbrush'
  np.testing.assert_array_equal(
      got['src_image'], images.load_rgb(f'{root}/data/magicbrush/images/0-input.png'))
  # The grayscale target went in as (re-encoded) RGB.
  assert got['tgt_image'].shape == (24, 24, 3)
  np.testing.assert_array_equal(
      got['tgt_image'], images.load_rgb(f'{root}/data/magicbrush/images/0-output.png'))
  with pytest.raises(UserError, match='needs aurora_root'):
    tfds_builders.build(tfds_builders.AuroraTriplets(data_dir=str(tmp_path / 'other')))
