"""Grain pipeline: determinism, process shards, restorable state, objective schedules, eval pass."""

import json

import ml_collections
import numpy as np
import pytest

from jax_vlm.core.errors import UserError
from jax_vlm.input import pipeline as ip
from jax_vlm.tokens import sequences as seqs
from tests.test_sequences import TinyVocab

V = TinyVocab()
N_CODES = 4
WORDS = ['push', 'left', 'the', 'red', 'block', 'onto', 'green', 'pad', 'slowly']


def make_source(n=24, empty_every=0):
  """In-memory records; example i's source codes start with code i, so batches name examples."""
  rng = np.random.default_rng(123)
  out = []
  for i in range(n):
    action = ' '.join(rng.choice(WORDS, size=int(rng.integers(1, 7))))
    if empty_every and i % empty_every == 0:
      action = ''
    out.append(dict(src_codes=np.array([i, 1, 2, 3]), tgt_codes=rng.integers(0, 9, N_CODES),
                    action=action, recognition_weights=rng.random(N_CODES).astype(np.float32)))
  return out


def cfgs(schedule='alternate', idp=1, fdp=1, packing=False, max_seq_len=24, buckets=(),
         workers=0):
  data = ml_collections.ConfigDict(dict(
      max_seq_len=max_seq_len, action_max_tokens=5, recognition_weights=True, num_workers=workers,
      packing=packing, length_buckets=buckets, pack_lookahead=4))
  obj = ml_collections.ConfigDict(dict(schedule=schedule, idp_share=idp, fdp_share=fdp))
  return data, obj


def make_it(source, seed=0, batch=4, pi=0, pc=1, **kw):
  data, obj = cfgs(**kw)
  return ip.make_dynamics_iterator(source, V, data_cfg=data, objectives_cfg=obj,
                                   global_batch_size=batch, seed=seed, process_index=pi,
                                   process_count=pc)


def take(it, n):
  return [next(it) for _ in range(n)]


def same(a, b):
  return len(a) == len(b) and all(
      set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def example_indices(batch):
  """Index of every example in the batch: the first source code, right after the sequence's
  first <boi> (IDP: <bos> <boi> src ...; FDP: <bos> action <boi> src ...)."""
  out = []
  for row, starts in enumerate((batch['positions'] == 0) & (batch['segment_ids'] > 0)):
    tokens = batch['token_ids'][row]
    for start in np.flatnonzero(starts):
      boi = start + int(np.argmax(tokens[start:] == V.boi_id))
      out.append(int(tokens[boi + 1]) - 100)
  return out


def test_batches_are_well_formed_and_deterministic():
  src = make_source()
  a = take(make_it(src, seed=3, buckets=(20,)), 6)
  b = take(make_it(src, seed=3, buckets=(20,)), 6)
  c = take(make_it(src, seed=4, buckets=(20,)), 6)
  threaded = take(make_it(src, seed=3, buckets=(20,), workers=2), 6)  # reader threads keep order
  assert same(a, b) and same(a, threaded) and not same(a, c)
  for batch in a:
    assert set(batch) == set(seqs.BATCH_KEYS)
    assert batch['token_ids'].shape[0] == 4 and batch['token_ids'].shape[1] in (20, 24)
    assert batch['token_ids'].dtype == np.int32 and batch['loss_weights'].dtype == np.float32
    assert np.all(batch['token_ids'][:, 0] == V.bos_id)
    assert np.all(batch['token_ids'][batch['segment_ids'] == 0] == V.pad_id)


def test_process_shards_are_disjoint_and_cover_the_data_each_epoch():
  src = make_source(24)
  per_process = []
  for pi in range(2):
    it = make_it(src, seed=0, batch=4, pi=pi, pc=2, fdp=0)  # IDP only: 2 rows per process
    epochs = [sum((example_indices(b) for b in take(it, 6)), []) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(pi, 24, 2))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    per_process.append(set(epochs[0]))
  assert not per_process[0] & per_process[1]
  assert per_process[0] | per_process[1] == set(range(24))
  with pytest.raises(UserError, match='multiple'):
    make_it(src, batch=5, pi=0, pc=2)
  with pytest.raises(UserError, match='length_buckets'):
    make_it(src, pi=0, pc=2, buckets=(16,))


@pytest.mark.parametrize('kw', [
    dict(),
    dict(schedule='mixed', idp=3, fdp=1),
    dict(packing=True, max_seq_len=64),
    dict(schedule='mixed', packing=True, max_seq_len=64, idp=1, fdp=2, workers=2),
])
def test_restored_iterator_yields_the_same_next_batches(kw):
  src = make_source(20)
  it = make_it(src, seed=7, **kw)
  take(it, 5)
  state = json.loads(json.dumps(ip.get_state(it)))  # JSON-able
  expected = take(it, 7)  # crosses an epoch boundary
  restored = ip.set_state(make_it(src, seed=7, **kw), state)
  assert same(take(restored, 7), expected)
  assert restored.stats == it.stats


def test_grain_orbax_checkpoint_round_trip(tmp_path):
  import grain
  import orbax.checkpoint as ocp
  src = make_source(20)
  it = make_it(src, seed=1, packing=True, max_seq_len=64)
  take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = take(it, 4)
    restored = make_it(src, seed=1, packing=True, max_seq_len=64)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert same(take(restored, 4), expected)


def test_alternate_schedule_follows_the_shares():
  src = make_source()
  tasks = [b['task'].tolist() for b in take(make_it(src, idp=2, fdp=1), 6)]
  assert tasks == [[0] * 4, [0] * 4, [1] * 4] * 2
  assert all(b['task'][0] == 1 for b in take(make_it(src, idp=0, fdp=1), 3))
  with pytest.raises(UserError, match='idp_share'):
    make_it(src, idp=0, fdp=0)


@pytest.mark.parametrize('idp,fdp,expected', [(1, 1, [0, 0, 1, 1]), (3, 1, [0, 0, 0, 1]),
                                              (1, 0, [0, 0, 0, 0])])
def test_mixed_batches(idp, fdp, expected):
  for b in take(make_it(make_source(), schedule='mixed', idp=idp, fdp=fdp), 3):
    assert b['task'].tolist() == expected
    for r, t in enumerate(expected):
      seg = b['segment_ids'][r] > 0
      assert np.all(b['task_ids'][r][seg] == t)
      # IDP rows end in <eos> with loss on it; FDP rows end in <eoi>.
      last = b['token_ids'][r][seg][-1]
      assert last == (V.eos_id if t == seqs.IDP else V.eoi_id)


def test_mixed_needs_room_for_both_tasks():
  with pytest.raises(UserError, match='at least 2 rows'):
    make_it(make_source(), schedule='mixed', batch=2, pi=0, pc=2)
  # A small share still gets one row rather than rounding to none.
  assert next(make_it(make_source(), schedule='mixed', batch=5, idp=1, fdp=100))['task'][0] == 0


def test_packed_pipeline_pads_little_and_reads_every_example():
  src = make_source(40)
  it = make_it(src, seed=2, packing=True, max_seq_len=96, fdp=0, batch=2)
  batches = take(it, 20)
  seen = []
  for b in batches:
    assert b['token_ids'].shape == (2, 96)
    seen += example_indices(b)
    for r in range(2):  # every segment is a whole IDP example: starts at <bos>, ends with <eos>
      seg = b['segment_ids'][r]
      for k in range(1, seg.max() + 1):
        toks = b['token_ids'][r][seg == k]
        assert toks[0] == V.bos_id and toks[-1] == V.eos_id
  # IDP examples here are 15-20 tokens, so rows hold 5-6 of them; waiting ones go first next time.
  frac = it.stats['padding'] / it.stats['tokens']
  assert frac < 0.1, frac
  first_epoch = seen[:40]
  assert sorted(first_epoch[:30]) == sorted(set(first_epoch[:30]))  # no repeats within an epoch
  counts = np.bincount(seen, minlength=40)
  assert counts.min() >= 1 and counts.max() - counts.min() <= 1


def test_empty_actions_are_skipped_and_counted():
  src = make_source(12, empty_every=3)  # examples 0, 3, 6, 9 have no action
  it = make_it(src, fdp=0, batch=4)
  seen = sum((example_indices(b) for b in take(it, 2)), [])
  assert sorted(seen) == [1, 2, 4, 5, 7, 8, 10, 11]  # the first epoch's usable examples
  next(it)  # reads into the second epoch, so all of the first epoch's rejects were read
  assert 4 <= it.stats['rejected'] <= 8 and it.stats['examples'] == 12


def test_truncated_actions_are_counted():
  src = [dict(src_codes=np.arange(4), tgt_codes=np.arange(4), action='a b c d e f g h',
              recognition_weights=np.ones(4, np.float32))] * 4
  it = make_it(src, fdp=0, batch=2)
  b = next(it)
  assert it.stats['truncated_actions'] == 2
  assert b['loss_weights'].sum(axis=1).tolist() == [6, 6]  # 5 action tokens + <eos>


def test_eval_pass_is_ordered_sharded_and_padded():
  src = make_source(25, empty_every=10)  # 0, 10, 20 have no action
  data, _ = cfgs()
  shards = []
  for pi in range(2):
    ds = ip.make_eval_dataset(src, V, data_cfg=data, task='fdp', batch_size=4, process_index=pi,
                              process_count=2)
    batches = list(ds)
    assert len(batches) == 4  # ceil(ceil(25 / 2) / 4) on both processes
    idx = np.concatenate([b['example_index'] for b in batches])
    valid = idx[idx >= 0]
    assert list(valid) == [i for i in range(pi, 25, 2) if i % 10]  # ordered, no repeats
    for b in batches:
      assert np.all(b['task'] == seqs.FDP)
      rows = b['example_index'] >= 0
      assert np.all(b['segment_ids'][~rows] == 0) and np.all(b['segment_ids'][rows, 0] == 1)
      np.testing.assert_array_equal(example_indices({k: v[rows] for k, v in b.items()}),
                                    b['example_index'][rows])
    shards.append(set(valid.tolist()))
    assert same(list(ds), batches)  # re-iterable, same batches
  assert shards[0] | shards[1] == {i for i in range(25) if i % 10} and not shards[0] & shards[1]


def test_reads_array_records_with_features(tmp_path):
  """data/records.py examples (VQ features, no stored weights) through the pipeline."""
  from data.records import RecordSource, write_records
  rng = np.random.default_rng(5)
  examples = []
  for i in range(6):
    src_f = rng.normal(size=(2, 2, 3)).astype(np.float32)
    examples.append(dict(src_codes=np.array([i, 1, 2, 3], np.int32),
                         tgt_codes=np.array([4, 5, 6, 7], np.int32), action='push the block',
                         action_type='push', example_id=f'ex{i}', split='train',
                         src_features=src_f, tgt_features=src_f + (i % 2)))
  write_records(tmp_path / 'train', examples, num_shards=2)
  source = RecordSource.from_prefix(tmp_path / 'train')
  it = make_it(source, idp=0, fdp=1, batch=6)
  b = next(it)
  for r, i in enumerate(example_indices(b)):
    expected = seqs.build_fdp(examples[i], V, 5, use_recognition_weights=True)
    n = len(expected)
    np.testing.assert_array_equal(b['token_ids'][r, :n], expected.token_ids)
    np.testing.assert_allclose(b['loss_weights'][r, :n], expected.loss_weights, rtol=1e-6)
    if i % 2:  # every feature moved by the same amount: all target weights 1
      np.testing.assert_allclose(b['loss_weights'][r, n - 5:n - 1], np.ones(4), rtol=1e-6)


def test_head_source_limits_what_training_reads():
  """data.train_examples: the trainer's batches come from the first N examples only."""
  from jax_vlm.input.datasets import HeadSource
  it = make_it(HeadSource(make_source(24), 6), batch=4, schedule='mixed')
  seen = {i for b in take(it, 12) for i in example_indices(b)}
  assert seen == set(range(6))  # 48 rows: every kept example, none beyond
