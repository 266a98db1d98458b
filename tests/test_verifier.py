"""Verifier scores = a plain forward pass's log-likelihoods; vocabulary mismatch; best-of-K;
multi-step rollouts feed the chosen frame back; the preference probe's shares."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vlm.core.errors import UserError
from jax_vlm.inference import sampler as S
from jax_vlm.inference import verifier as V
from jax_vlm.inference.rollout import rollout
from jax_vlm.method import probe
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens import sequences
from jax_vlm.tokens.vocab import UnifiedVocab, build_word_tokenizer

NUM_CODES = 16
WORDS = ['move', 'the', 'red', 'blue', 'circle', 'square', 'up', 'down', 'left', 'right']


def make_vocab(directory, words=WORDS, num_codes=NUM_CODES):
  return UnifiedVocab.load(build_word_tokenizer(words, directory, num_image_codes=num_codes),
                           num_image_codes=num_codes)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  vocab = make_vocab(str(tmp_path_factory.mktemp('tok')))
  config = TransformerConfig(vocab_size=vocab.vocab_size + 3, d_model=32, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, dtype='float32',
                             remat_policy='none')
  module = DecoderLM(config)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  return vocab, module, params


@functools.partial(jax.jit, static_argnames='module')
def _forward(params, token_ids, module):
  return module.apply({'params': params}, token_ids)


def plain_logprob(module, params, token_ids, mask, length=32):
  """Sum over masked targets of log p(token_t | tokens_<t) from a plain causal forward pass (the
  row right-padded to `length`, which later positions cannot affect)."""
  padded = np.zeros((1, length), np.int32)
  padded[0, :len(token_ids)] = token_ids
  logits = _forward(params, jnp.asarray(padded), module=module)[0]
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  return sum(float(logp[t - 1, token_ids[t]]) for t in range(1, len(token_ids)) if mask[t] > 0)


def test_verifier_scores_equal_plain_forward(setup):
  vocab, module, params = setup
  rng = np.random.default_rng(0)
  src = rng.integers(0, NUM_CODES, 6)
  cands = rng.integers(0, NUM_CODES, (3, 6))
  action = np.asarray(vocab.encode_text('move the red circle up'))
  for rank_by in ('sum', 'mean'):
    scores = V.Verifier(module, params, vocab, rank_by=rank_by, batch_size=2).score(src, cands,
                                                                                     action)
    ids, masks = sequences.idp_scoring_batch(src, cands, action, vocab)
    expected = np.asarray([plain_logprob(module, params, i, m) for i, m in zip(ids, masks)])
    np.testing.assert_allclose(scores.summed, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.normalized, expected / (action.size + 1), rtol=1e-5)
    assert scores.best == int(np.argmax(scores.summed if rank_by == 'sum' else scores.normalized))

  # Rows of different lengths (left-padded together, last batch padded with copies).
  rows = [sequences.idp_scoring_sequence(rng.integers(0, NUM_CODES, n), rng.integers(0, NUM_CODES,
                                                                                     n), a, vocab)
          for n, a in ((3, action), (6, action[:2]), (5, action[:1]))]
  sums, counts = V.SequenceScorer(module, params, vocab.pad_id, batch_size=2).score(
      [r[0] for r in rows], [r[1] for r in rows])
  np.testing.assert_allclose(sums, [plain_logprob(module, params, *r) for r in rows], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(counts, [action.size + 1, 3, 2])


def test_vocabulary_mismatch_and_bad_rank(setup, tmp_path):
  vocab, module, params = setup
  other = make_vocab(str(tmp_path / 'other'), WORDS + ['green'])  # image ids shift by one
  sampler = S.Sampler(module, vocab, cache_len=32)
  verifier = V.Verifier(module, params, other)
  with pytest.raises(UserError, match="verifier's vocabulary differs from the sampler's"):
    verifier.check_sampler(sampler)
  V.Verifier(module, params, make_vocab(str(tmp_path / 'same'))).check_sampler(sampler)
  with pytest.raises(UserError, match='rank_by'):
    V.Verifier(module, params, vocab, rank_by='max')


def test_best_of_k_and_rollout(setup):
  vocab, module, params = setup
  sampler = S.Sampler(module, vocab, cache_len=40, prompt_buckets=(16,))
  verifier = V.Verifier(module, params, vocab, rank_by='sum', batch_size=4)
  src = np.arange(6) % NUM_CODES
  key = jax.random.PRNGKey(5)
  action = np.asarray(vocab.encode_text('move the red circle up'))
  best = V.best_of_k(sampler, params, verifier, src, action, key, num_candidates=4)
  assert best.candidates.shape == (4, 6)
  np.testing.assert_array_equal(best.best_codes, best.candidates[best.scores.best])
  np.testing.assert_allclose(best.scores.summed,
                             verifier.score(src, best.candidates, action).summed)

  actions = ['move the red circle up', 'move the blue square left']
  out = rollout(sampler, params, src, actions, key, num_candidates=4, verifier=verifier)
  assert out.frames.shape == (3, 6) and out.candidates.shape == (2, 4, 6)
  np.testing.assert_array_equal(out.frames[0], src)
  for t, text in enumerate(actions):
    # Step t samples from the frame chosen at step t - 1 with key fold_in(key, t).
    ids = np.asarray(vocab.encode_text(text))
    step = sampler.sample_frames(params, [out.frames[t]], [ids], jax.random.fold_in(key, t),
                                 num_candidates=4)
    np.testing.assert_array_equal(step.codes[0], out.candidates[t])
    scores = verifier.score(out.frames[t], out.candidates[t], ids)
    assert out.chosen[t] == scores.best
    np.testing.assert_array_equal(out.frames[t + 1], out.candidates[t, out.chosen[t]])


def _triplets(rng, n=6, size=4):
  return [probe.Triplet(rng.integers(0, NUM_CODES, size), rng.integers(6, 12, 1 + i % 3),
                        rng.integers(0, NUM_CODES, size)) for i in range(n)]


def test_probe_shares_on_known_cases():
  rng = np.random.default_rng(0)
  triplets = _triplets(rng)
  key = lambda t: (t.src_codes.tobytes(), t.action_ids.tobytes(), t.tgt_codes.tobytes())  # noqa
  refs = {key(t) for t in triplets}
  prefers_real = lambda items: np.asarray([1.0 if key(t) in refs else 0.0 for t in items])  # noqa
  prefers_fake = lambda items: 1.0 - prefers_real(items)  # noqa: E731
  result = probe.preference_shares(triplets, prefers_real, prefers_fake, seed=1)
  assert result['fdp'] == {k: 1.0 for k in probe.NEGATIVES}
  assert result['idp'] == {k: 0.0 for k in probe.NEGATIVES}
  assert result['counts'] == {k: 6 for k in probe.NEGATIVES}

  # A scorer that likes frames equal to the source: loses exactly on copied_source; on swapped it
  # compares tgt-vs-src with src-vs-tgt, a tie, which does not count as preferring the reference.
  copy_lover = lambda items: np.asarray(  # noqa: E731
      [float(np.sum(t.src_codes == t.tgt_codes)) for t in items])
  result = probe.preference_shares(triplets, copy_lover, copy_lover, seed=1)
  assert result['fdp']['copied_source'] == 0.0 and result['fdp']['swapped'] == 0.0
  assert result['fdp']['random_action'] == 0.0  # same frames: a tie

  # Half the references score higher than their swapped negative.
  order = lambda items: np.asarray([float(t.src_codes[0] < t.tgt_codes[0]) for t in items])  # noqa
  result = probe.preference_shares(triplets, order, order, seed=1)
  expected = np.mean([t.src_codes[0] < t.tgt_codes[0] for t in triplets])
  assert result['fdp']['swapped'] == pytest.approx(expected)

  with pytest.raises(UserError, match='at least 2 triplets'):
    probe.preference_shares(triplets[:1], order, order)


def test_probe_with_a_model(setup):
  vocab, module, params = setup
  rng = np.random.default_rng(3)
  triplets = [probe.Triplet(t.src_codes, np.asarray(vocab.encode_text(a)), t.tgt_codes)
              for t, a in zip(_triplets(rng, 4), ['move up', 'move the red circle down',
                                                  'move left', 'move the blue square right'])]
  result = probe.run_probe(module, params, vocab, triplets, seed=0, batch_size=8)
  scorer = V.SequenceScorer(module, params, vocab.pad_id, batch_size=8)
  fdp_score, idp_score = probe.model_scorers(scorer, vocab)
  # The FDP score is log p(tgt codes and <eoi> | src, action) from a plain forward pass.
  t = triplets[0]
  ids, mask = probe.fdp_sequence(t, vocab)
  assert mask.sum() == t.tgt_codes.size + 1
  np.testing.assert_allclose(fdp_score([t])[0], plain_logprob(module, params, ids, mask),
                             rtol=1e-5, atol=1e-5)
  # Shares agree with comparing those scores by hand.
  negs = probe.negatives(triplets, seed=0)
  for name, fn in (('fdp', fdp_score), ('idp', idp_score)):
    ref = fn(triplets)
    for kind in probe.NEGATIVES:
      idx = [i for i, _ in negs[kind]]
      neg = fn([n for _, n in negs[kind]])
      assert result[name][kind] == pytest.approx(np.mean(ref[idx] > neg))
