"""Sampler: greedy text = teacher-forced argmax, image mode emits only image tokens and exactly N,
K candidates from one repeated cache = K single runs with the matching keys, CFG formula, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vlm.core.errors import UserError
from jax_vlm.inference import sampler as S
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens import sequences
from jax_vlm.tokens.vocab import UnifiedVocab, build_word_tokenizer

NUM_CODES = 16
WORDS = ['move', 'the', 'red', 'blue', 'circle', 'square', 'up', 'down', 'left', 'right']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tok_dir = build_word_tokenizer(WORDS, str(tmp_path_factory.mktemp('tok')),
                                 num_image_codes=NUM_CODES)
  vocab = UnifiedVocab.load(tok_dir, num_image_codes=NUM_CODES)
  config = TransformerConfig(vocab_size=vocab.vocab_size + 3, d_model=32, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, dtype='float32',
                             remat_policy='none')
  module = DecoderLM(config)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  return vocab, module, params


def text_loving(params, vocab):
  """Params whose LM head gives image tokens logit 0 and text tokens large random logits, so an
  unmasked sampler would almost always emit a non-image token."""
  kernel = params['lm_head']['kernel']
  mask = np.zeros(kernel.shape[1], bool)
  mask[:vocab.vocab_size] = vocab.image_token_mask()
  kernel = jnp.where(jnp.asarray(mask)[None, :], 0.0, 100.0 * kernel)
  return dict(params, lm_head=dict(params['lm_head'], kernel=kernel))


class EosAs:
  """The vocabulary with another token playing <eos>."""

  def __init__(self, vocab, eos_id):
    self._vocab, self.eos_id = vocab, int(eos_id)

  def __getattr__(self, name):
    return getattr(self._vocab, name)


def log_softmax_rows(module, params, ids):
  logits = jax.jit(module.apply)({'params': params}, jnp.asarray(ids)[None])
  return jax.nn.log_softmax(logits[0], axis=-1)


def test_greedy_text_equals_teacher_forced_argmax(setup):
  vocab, module, params = setup
  rng = np.random.default_rng(0)
  # Different prompt lengths: the shorter one is left-padded to the bucket.
  prompts = [sequences.idp_prompt(rng.integers(0, NUM_CODES, 4), rng.integers(0, NUM_CODES, 4),
                                  vocab),
             sequences.idp_prompt(rng.integers(0, NUM_CODES, 3), rng.integers(0, NUM_CODES, 3),
                                  vocab)]
  sampler = S.Sampler(module, vocab, cache_len=32, prompt_buckets=(16, 24))
  out = sampler.generate_text(params, prompts, jax.random.PRNGKey(0), num_candidates=2,
                              max_new_tokens=8)
  # The same without stopping (no token plays <eos>): 8 tokens per row to compare.
  nonstop = S.Sampler(module, EosAs(vocab, -1), cache_len=32, prompt_buckets=(16, 24))
  long = nonstop.generate_text(params, prompts, jax.random.PRNGKey(0), num_candidates=2,
                               max_new_tokens=8)
  assert out.tokens.shape == (2, 2, 8) and np.all(long.lengths == 8)
  for run in (out, long):
    np.testing.assert_array_equal(run.tokens[:, 0], run.tokens[:, 1])  # greedy: candidates agree
    for i, prompt in enumerate(prompts):
      n = int(run.lengths[i, 0])
      gen = run.tokens[i, 0, :n]
      full = np.concatenate([prompt, gen])
      logp = log_softmax_rows(module, params, full)
      predicted = np.asarray(jnp.argmax(logp, axis=-1))[prompt.size - 1:full.size - 1]
      np.testing.assert_array_equal(predicted, gen)
      teacher = float(sum(logp[prompt.size - 1 + t, gen[t]] for t in range(n)))
      np.testing.assert_allclose(run.logprob[i, 0], teacher, rtol=1e-4, atol=1e-4)
      assert np.all(run.tokens[i, 0, n:] == vocab.pad_id)

  # Stopping: with the third greedy token of row 0 playing <eos>, rows stop at its first use.
  eos = int(long.tokens[0, 0, 2])
  stopping = S.Sampler(module, EosAs(vocab, eos), cache_len=32, prompt_buckets=(16, 24))
  again = stopping.generate_text(params, prompts, jax.random.PRNGKey(0), num_candidates=2,
                                 max_new_tokens=8)
  for i in range(2):
    hits = np.flatnonzero(long.tokens[i, 0] == eos)
    n = int(hits[0]) + 1 if hits.size else 8
    assert np.all(again.lengths[i] == n) and np.all(again.finished[i] == bool(hits.size))
    np.testing.assert_array_equal(again.tokens[i, :, :n], long.tokens[i, :, :n])
    assert np.all(again.tokens[i, :, n:] == vocab.pad_id)


def test_image_mode_emits_exactly_n_image_tokens(setup):
  vocab, module, params = setup
  rng = np.random.default_rng(1)
  src = [rng.integers(0, NUM_CODES, 9) for _ in range(2)]
  actions = [np.asarray(vocab.encode_text('move the red circle up')),
             np.asarray(vocab.encode_text('move the blue square left'))]
  sampler = S.Sampler(module, vocab, cache_len=40, prompt_buckets=(24,))
  image_ids = set(vocab.image_token_ids().tolist())
  # Even a model that prefers text tokens emits only image tokens.
  for p in (params, text_loving(params, vocab)):
    out = sampler.sample_frames(p, src, actions, jax.random.PRNGKey(3), num_candidates=3,
                                sampling=S.SamplingParams(temperature=0.7, top_k=5, top_p=0.9))
    assert out.tokens.shape == (2, 3, 9) and out.codes.shape == (2, 3, 9)
    assert set(out.tokens.reshape(-1).tolist()) <= image_ids
    assert out.codes.min() >= 0 and out.codes.max() < NUM_CODES
    np.testing.assert_array_equal(vocab.codes_to_ids(out.codes), out.tokens)


@pytest.mark.parametrize('tied', [False, True])
def test_image_mode_reads_only_image_columns_of_the_head(setup, tied):
  """Image mode computes only the image tokens' logits (DecoderLM.head_kernel): greedy frames are
  the teacher-forced argmax over image tokens and their logprob the log-softmax over image tokens
  of the whole head's logits, for an untied head and for Gemma's tied embedding."""
  vocab, module, params = setup
  if tied:
    module = DecoderLM(module.config.replace(tie_embeddings=True))
    params = nn.unbox(module.init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))['params'])
    assert 'lm_head' not in params
  rng = np.random.default_rng(4)
  src = [rng.integers(0, NUM_CODES, 7) for _ in range(2)]
  actions = [np.asarray(vocab.encode_text('move the red circle up')),
             np.asarray(vocab.encode_text('move down'))]
  sampler = S.Sampler(module, vocab, cache_len=40, prompt_buckets=(24,))
  k = 3
  out = sampler.sample_frames(params, src, actions, jax.random.PRNGKey(5), num_candidates=k,
                              sampling=S.SamplingParams(greedy=True))
  image_ids = vocab.image_token_ids()
  # No whole-vocabulary logits of the 2 x 3 rows are left in the compiled program.
  prompts = [S.fdp_prompts(s, a, vocab)[0] for s, a in zip(src, actions)]
  ids, seg = S.left_pad(prompts, 24, vocab.pad_id)
  hlo = sampler._loop.lower(
      params, ids, seg, S.candidate_keys(jax.random.PRNGKey(5), 2, k),
      jnp.asarray(sampler.image_ids), jnp.int32(-1), jnp.int32(vocab.pad_id), module=module,
      cache_len=40, num_candidates=k, num_conditions=1, max_new_tokens=7,
      sampling=S.SamplingParams(greedy=True), guidance=None, stop_at_eos=False).compile().as_text()
  assert f'f32[{2 * k},{module.config.vocab_size}]' not in hlo
  assert f'f32[{2 * k},{image_ids.size}]' in hlo
  for i in range(2):
    prompt = S.fdp_prompts(src[i], actions[i], vocab)[0]
    gen = out.tokens[i, 0]
    logp = jax.nn.log_softmax(
        jax.jit(module.apply)({'params': params}, jnp.asarray(np.concatenate([prompt, gen]))[None])
        [0][prompt.size - 1:-1][:, image_ids], axis=-1)
    np.testing.assert_array_equal(image_ids[np.asarray(jnp.argmax(logp, -1))], gen)
    teacher = float(sum(logp[t, int(np.flatnonzero(image_ids == g)[0])]
                        for t, g in enumerate(gen)))
    np.testing.assert_allclose(out.logprob[i], teacher, rtol=1e-4, atol=1e-4)


def test_k_candidates_equal_single_runs(setup):
  vocab, module, params = setup
  rng = np.random.default_rng(2)
  src = [rng.integers(0, NUM_CODES, 6) for _ in range(2)]
  actions = [np.asarray(vocab.encode_text('move the red circle up')),
             np.asarray(vocab.encode_text('move down'))]  # different prompt lengths
  sampler = S.Sampler(module, vocab, cache_len=32, prompt_buckets=(16,))
  key = jax.random.PRNGKey(7)
  k = 3
  out = sampler.sample_frames(params, src, actions, key, num_candidates=k)
  again = sampler.sample_frames(params, src, actions, key, num_candidates=k)
  np.testing.assert_array_equal(out.tokens, again.tokens)  # deterministic for a key
  assert len({out.codes[0, j].tobytes() for j in range(k)}) > 1  # candidates differ
  keys = S.candidate_keys(key, 2, k)
  for i in range(2):
    for j in range(k):
      single = sampler.sample_frames(params, [src[i]], [actions[i]], num_candidates=1,
                                     row_keys=keys[i * k + j][None])
      np.testing.assert_array_equal(single.tokens[0, 0], out.tokens[i, j])
      np.testing.assert_allclose(single.logprob[0, 0], out.logprob[i, j], rtol=1e-5)


def test_guidance_formula_and_rows(setup):
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 5)), jnp.float32)
  guided = S.guide(logits, S.Guidance(image_scale=1.5, text_scale=3.0))
  full, image, uncond = logits[:, 0], logits[:, 1], logits[:, 2]
  np.testing.assert_allclose(guided, uncond + 1.5 * (image - uncond) + 3.0 * (full - image),
                             rtol=1e-6)
  np.testing.assert_allclose(S.guide(logits, S.Guidance(1.0, 1.0)), full, rtol=1e-5, atol=1e-5)

  vocab, module, params = setup
  src = np.arange(6) % NUM_CODES
  action = np.asarray(vocab.encode_text('move the red circle up'))
  rows = S.fdp_prompts(src, action, vocab, guidance=True)
  np.testing.assert_array_equal(rows[0], sequences.fdp_prompt(src, action, vocab))
  np.testing.assert_array_equal(rows[1], sequences.fdp_prompt(src, [], vocab))
  assert rows[2].tolist() == [vocab.bos_id, vocab.boi_id]
  sampler = S.Sampler(module, vocab, cache_len=32, prompt_buckets=(16,))
  out = sampler.sample_frames(params, [src], [action], jax.random.PRNGKey(1), num_candidates=2,
                              guidance=S.Guidance(1.2, 3.0))
  assert out.tokens.shape == (1, 2, 6)
  assert set(out.tokens.reshape(-1).tolist()) <= set(vocab.image_token_ids().tolist())
  assert S.guidance_from_config(type('C', (), {'cfg_text_scale': 0.0,
                                               'cfg_image_scale': 0.0})()) is None


def test_filter_logits():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda f: (np.asarray(f) > S.NEG_INF / 2)[0].tolist()  # noqa: E731
  assert kept(S.filter_logits(logits, S.SamplingParams(top_k=2))) == [True, True, False, False]
  assert kept(S.filter_logits(logits, S.SamplingParams(top_p=0.7))) == [True, True, False, False]
  assert kept(S.filter_logits(logits, S.SamplingParams(top_p=0.5))) == [True, False, False, False]
  assert kept(S.filter_logits(logits, S.SamplingParams(top_p=0.81))) == [True, True, True, False]


def test_bad_inputs(setup):
  vocab, module, params = setup
  sampler = S.Sampler(module, vocab, cache_len=16)
  prompt = sequences.idp_prompt(np.zeros(4, int), np.zeros(4, int), vocab)  # 13 tokens
  with pytest.raises(UserError, match='does not fit the sampler cache of 16'):
    sampler.generate_text(params, [prompt], jax.random.PRNGKey(0), max_new_tokens=8)
  with pytest.raises(UserError, match='num_candidates must be at least 1'):
    sampler.generate_text(params, [prompt], jax.random.PRNGKey(0), num_candidates=0)
  with pytest.raises(UserError, match='temperature must be > 0 when sampling'):
    S.SamplingParams(temperature=0.0)
  S.SamplingParams(greedy=True, temperature=0.0)  # greedy ignores the temperature
  with pytest.raises(UserError, match='triple'):
    sampler.generate_images(params, [prompt], jax.random.PRNGKey(0),
                            guidance=S.Guidance(1.0, 2.0), num_image_tokens=2)


def _greedy_fp32_and_bf16(module, params, vocab, prompts, n):
  key = jax.random.PRNGKey(0)
  fp32 = S.Sampler(module, vocab, cache_len=48, prompt_buckets=(16,))
  bf16 = S.Sampler(module, vocab, cache_len=48, prompt_buckets=(16,), dtype='bfloat16',
                   param_dtype='bfloat16', cache_dtype='bfloat16')
  assert bf16.module.config.dtype == jnp.bfloat16 and module.config.dtype == jnp.float32
  f = EosAs(vocab, -1)
  fp32.vocab = bf16.vocab = f  # no stopping: n tokens per row to compare
  return (fp32.generate_text(params, prompts, key, max_new_tokens=n).tokens[:, 0],
          bf16.generate_text(params, prompts, key, max_new_tokens=n).tokens[:, 0])


def test_bf16_decoding_picks_the_fp32_greedy_tokens(setup):
  """bfloat16 weights, compute and KV cache (sampler.dtype/param_dtype/cache_dtype) emit the same
  greedy tokens as fp32 on the tiny model. With weights 5x larger (sharper, less smooth logits)
  they can part: then, at each row's first difference, fp32's top-2 margin is below twice the
  largest bf16 logit error at that position, i.e. the tokens differ only where fp32 itself had
  a near tie (on a 64-wide 2-layer model: margins 0.02-0.04, errors 0.06-0.19, logit std 0.8)."""
  vocab, module, params = setup
  rng = np.random.default_rng(3)
  prompts = [rng.integers(6, vocab.vocab_size, n) for n in (12, 9, 15, 7)]
  n = 24
  tokens32, tokens16 = _greedy_fp32_and_bf16(module, params, vocab, prompts, n)
  np.testing.assert_array_equal(tokens16, tokens32)

  sharp = jax.tree.map(lambda x: 5.0 * x if x.ndim >= 2 else x, params)
  tokens32, tokens16 = _greedy_fp32_and_bf16(module, sharp, vocab, prompts, n)
  module16 = DecoderLM(module.config.replace(dtype='bfloat16'))
  sharp16 = S.cast_params(sharp, jnp.bfloat16)
  for prompt, t32, t16 in zip(prompts, tokens32, tokens16):
    differ = np.nonzero(t32 != t16)[0]
    if not differ.size:
      continue
    seq = jnp.asarray(np.concatenate([prompt, t32[:differ[0]]]))[None]
    l32 = module.apply({'params': sharp}, seq)[0, -1]
    l16 = module16.apply({'params': sharp16}, seq)[0, -1]
    top2 = np.sort(np.asarray(l32))[-2:]
    assert top2[1] - top2[0] <= 2 * float(jnp.max(jnp.abs(l32 - l16))), (prompt, differ)
