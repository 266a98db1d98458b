"""Token layout, loss masks, recognition weights, padding and packing (jax_vlm.tokens.sequences)."""

import dataclasses

import numpy as np
import pytest

from jax_vlm.core.errors import UserError
from jax_vlm.tokens import sequences as seqs


@dataclasses.dataclass
class TinyVocab:
  """Stands in for UnifiedVocab: words -> ids 10.., image code c -> token 100 + c."""
  bos_id: int = 1
  eos_id: int = 2
  boi_id: int = 3
  eoi_id: int = 4
  pad_id: int = 0
  add_special: bool = False  # like a tokenizer that adds <bos>/<eos> on encode

  def encode_text(self, text):
    ids = [10 + (sum(map(ord, w)) % 80) for w in text.split()]
    return [self.bos_id] + ids + [self.eos_id] if self.add_special else ids

  def codes_to_ids(self, codes):
    return np.asarray(codes) + 100


V = TinyVocab()
SRC = np.array([0, 1, 2, 3])
TGT = np.array([3, 2, 1, 7])


def _example(action='push left', **kw):
  return dict(src_codes=SRC, tgt_codes=TGT, action=action, **kw)


def test_idp_layout_and_loss_mask():
  a = V.encode_text('push left')
  s = seqs.build_idp(_example(), V, max_action_tokens=8)
  expected = [1, 3, 100, 101, 102, 103, 4, 3, 103, 102, 101, 107, 4] + a + [2]
  np.testing.assert_array_equal(s.token_ids, expected)
  assert s.token_ids.dtype == np.int32 and s.loss_weights.dtype == np.float32
  # Loss on the action tokens and <eos> only, aligned with the target token.
  np.testing.assert_array_equal(s.loss_weights, [0] * 13 + [1, 1, 1])
  assert s.prompt_len == 13 and s.task == seqs.IDP and not s.action_truncated
  np.testing.assert_array_equal(s.token_ids[:s.prompt_len], seqs.idp_prompt(SRC, TGT, V))


@pytest.mark.parametrize('use_rw', [True, False])
def test_fdp_layout_and_recognition_weighted_mask(use_rw):
  a = V.encode_text('push left')
  rw = np.array([0.0, 0.5, 1.5, 2.0], np.float32)
  s = seqs.build_fdp(_example(recognition_weights=rw), V, 8, use_recognition_weights=use_rw)
  expected = [1] + a + [3, 100, 101, 102, 103, 4] + [3, 103, 102, 101, 107, 4]
  np.testing.assert_array_equal(s.token_ids, expected)
  target_w = list(rw) if use_rw else [1, 1, 1, 1]
  # Nothing on the prompt (including the <boi> opening the target), rw on codes, 1 on <eoi>.
  np.testing.assert_allclose(s.loss_weights, [0] * 10 + target_w + [1])
  assert s.prompt_len == 10 and s.task == seqs.FDP
  prompt = seqs.fdp_prompt(SRC, a, V)
  assert prompt[-1] == V.boi_id
  np.testing.assert_array_equal(s.token_ids[:s.prompt_len], prompt)


def test_fdp_weights_from_features_or_error():
  src_f = np.zeros((2, 2, 3), np.float32)
  tgt_f = src_f.copy()
  tgt_f[1, 1] = [1.0, 1.0, 0.0]  # only the last position (row-major) changes
  s = seqs.build_fdp(_example(src_features=src_f, tgt_features=tgt_f), V, 8, True)
  np.testing.assert_allclose(s.loss_weights[s.prompt_len:], [0, 0, 0, 4, 1])
  with pytest.raises(UserError, match='recognition_weights'):
    seqs.build_fdp(_example(), V, 8, True)
  with pytest.raises(UserError, match='3 recognition_weights for 4'):
    seqs.build_fdp(_example(recognition_weights=np.ones(3)), V, 8, True)
  # Without the switch no weights are needed.
  assert seqs.build_fdp(_example(), V, 8, False).loss_weights.sum() == 5


def test_action_truncation_empty_and_special_tokens():
  long = 'a b c d e'
  s = seqs.build_idp(_example(long), V, max_action_tokens=3)
  assert s.action_truncated
  np.testing.assert_array_equal(s.token_ids[13:], V.encode_text('a b c') + [V.eos_id])
  f = seqs.build_fdp(_example(long), V, 3, False)
  assert f.action_truncated and len(f) == 7 + 3 + 6  # <bos> [src] + action + [tgt]
  for empty in ['', '   ', None, b'']:
    with pytest.raises(seqs.EmptyActionError, match='empty action'):
      seqs.build_idp(_example(empty), V, 8)
  with pytest.raises(UserError):
    seqs.build_fdp(_example(''), V, 8, False)
  # A tokenizer that adds <bos>/<eos> gives the same layout; bytes and pre-tokenized ids work too.
  ref = seqs.build_idp(_example(), V, 8).token_ids
  with_specials = TinyVocab(add_special=True)
  np.testing.assert_array_equal(seqs.build_idp(_example(), with_specials, 8).token_ids, ref)
  np.testing.assert_array_equal(seqs.build_idp(_example(b'push left'), V, 8).token_ids, ref)
  ex = dict(src_codes=SRC, tgt_codes=TGT, action_ids=np.array(V.encode_text('push left')))
  np.testing.assert_array_equal(seqs.build_idp(ex, V, 8).token_ids, ref)


def test_recognition_weights_hand_made():
  src = np.zeros((4, 2), np.float32)
  tgt = np.array([[0, 0], [1, 0], [0, 2], [1, 1]], np.float32)  # squared distances 0, 1, 4, 2
  w = seqs.recognition_weights(src, tgt)
  assert w.dtype == np.float32 and w.shape == (4,)
  np.testing.assert_allclose(w, np.array([0, 1, 4, 2]) / 1.75, rtol=1e-6)
  assert abs(w.mean() - 1) < 1e-6 and w[0] == 0  # mean 1, zero where unchanged
  np.testing.assert_array_equal(seqs.recognition_weights(tgt, tgt), np.ones(4))
  # [h, w, c] features flatten row-major, like the codes.
  w2 = seqs.recognition_weights(src.reshape(2, 2, 2), tgt.reshape(2, 2, 2))
  np.testing.assert_allclose(w2, w)
  with pytest.raises(ValueError):
    seqs.recognition_weights(src, tgt[:3])


def test_scoring_batch_matches_idp_training_sequence():
  a = V.encode_text('push left')
  cands = np.stack([TGT, SRC, TGT[::-1]])
  ids, mask = seqs.idp_scoring_batch(SRC, cands, a, V)
  assert ids.shape == mask.shape == (3, 16)
  for k in range(3):
    s = seqs.build_idp(dict(src_codes=SRC, tgt_codes=cands[k], action='push left'), V, 8)
    np.testing.assert_array_equal(ids[k], s.token_ids)
    np.testing.assert_array_equal(mask[k], s.loss_weights)
  assert seqs.image_spans(ids[0], V) == [(2, 6), (8, 12)]
  n = len(a)
  assert seqs.image_spans(seqs.fdp_prompt(SRC, a, V), V) == [(2 + n, 6 + n), (8 + n, 8 + n)]


def _seq(n, task=seqs.IDP, start=50):
  ids = np.arange(start, start + n, dtype=np.int32)
  w = np.linspace(0, 1, n).astype(np.float32)
  return seqs.Sequence(ids, w, 1, task)


def test_pad_batch():
  b = seqs.pad_batch([_seq(3), _seq(5, seqs.FDP)], 6, pad_id=0, num_rows=3)
  assert set(b) == set(seqs.BATCH_KEYS)
  np.testing.assert_array_equal(b['token_ids'], [[50, 51, 52, 0, 0, 0], [50, 51, 52, 53, 54, 0],
                                                 [0] * 6])
  np.testing.assert_array_equal(b['positions'][1], [0, 1, 2, 3, 4, 0])
  np.testing.assert_array_equal(b['segment_ids'], [[1, 1, 1, 0, 0, 0], [1] * 5 + [0], [0] * 6])
  np.testing.assert_array_equal(b['task'], [0, 1, -1])
  np.testing.assert_array_equal(b['task_ids'][1], [1] * 5 + [-1])
  assert b['loss_weights'][0, 3:].sum() == 0 and b['loss_weights'][0, 2] == 1
  assert seqs.padding_fraction(b) == pytest.approx(10 / 18)
  with pytest.raises(UserError, match='max_seq_len'):
    seqs.pad_batch([_seq(7)], 6, 0)
  assert seqs.choose_seq_len([5, 9], 64, (8, 16, 32)) == 16
  assert seqs.choose_seq_len([40], 64, (8, 16, 32)) == 64


def test_packing_keeps_segments_apart_and_pads_little():
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, 40, size=200)
  sequences = [_seq(int(n), task=i % 2, start=1000 * i) for i, n in enumerate(lengths)]
  b, leftover = seqs.pack_sequences(sequences, 128, pad_id=0)
  assert leftover == []
  assert seqs.padding_fraction(b) < 0.05, seqs.padding_fraction(b)
  seen = []
  for r in range(b['token_ids'].shape[0]):
    seg = b['segment_ids'][r]
    used = int(np.sum(seg > 0))
    assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)  # padding only at the tail
    assert np.all(np.diff(seg[:used]) >= 0)  # each segment contiguous, numbered 1, 2, ...
    for k in range(1, seg.max() + 1):
      idx = np.nonzero(seg == k)[0]
      i = int(b['token_ids'][r, idx[0]]) // 1000  # each sequence's ids start at 1000 * index
      s = sequences[i]
      np.testing.assert_array_equal(b['token_ids'][r, idx], s.token_ids)
      np.testing.assert_array_equal(b['positions'][r, idx], np.arange(len(s)))
      np.testing.assert_array_equal(b['loss_weights'][r, idx], s.loss_weights)
      assert np.all(b['task_ids'][r, idx] == s.task)
      seen.append(i)
    assert b['task'][r] == b['task_ids'][r, 0]
  assert sorted(seen) == list(range(200))  # every sequence exactly once
  # A fixed number of rows leaves out what fits nowhere, in order.
  b2, left = seqs.pack_sequences([_seq(60), _seq(60), _seq(70), _seq(8)], 128, 0, num_rows=1)
  assert left == [2] and b2['segment_ids'][0].max() == 3


def test_recognition_floor_keeps_mean_and_trains_unchanged_codes():
  rw = np.array([0.0, 0.0, 0.0, 4.0], np.float32)  # mean 1: one code changed
  s = seqs.build_fdp(_example(recognition_weights=rw), V, 8, True, recognition_floor=0.1)
  target = s.loss_weights[s.prompt_len:s.prompt_len + 4]
  np.testing.assert_allclose(target, [0.1, 0.1, 0.1, 0.1 + 0.9 * 4.0], rtol=1e-6)
  np.testing.assert_allclose(target.mean(), 1.0, rtol=1e-6)
  with pytest.raises(UserError, match='recognition_floor'):
    seqs.build_fdp(_example(recognition_weights=rw), V, 8, True, recognition_floor=1.5)
