"""KV-cache decoding against the full forward pass: step by step, after padded prefills, greedy
decoding in a jitted while_loop, and best-of-K rows from `repeat_cache`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vlm.models.transformer import DecoderLM, KVCache, init_cache, repeat_cache
from tests.test_transformer_parity import _random_params, _tiny, run

ATOL = 2e-5


def _model(family, scan_layers=True, remat_policy='none'):
  config = _tiny(family, scan_layers=scan_layers, vocab_size=48, remat_policy=remat_policy)
  module = DecoderLM(config)
  return config, module, _random_params(module, np.zeros((1, 4), np.int32), seed=7)


def _step_fn(module):
  @jax.jit
  def step(params, ids, cache, segment_ids):
    return module.apply({'params': params}, ids, segment_ids=segment_ids, cache=cache)
  return step


@pytest.mark.parametrize('family,scan_layers,remat', [
    ('chameleon', True, 'none'), ('gemma', False, 'none'), ('chameleon', False, 'nothing_saveable'),
    ('gemma', True, 'nothing_saveable')])
def test_decoding_matches_full_forward_at_every_position(family, scan_layers, remat):
  """The cache is written in place layer by layer (scanned or not, under remat or not)."""
  config, module, params = _model(family, scan_layers, remat)
  ids = np.random.RandomState(0).randint(0, 48, (2, 9)).astype(np.int32)
  full = run(module, params, ids)
  step = _step_fn(module)
  cache = init_cache(config, batch=2, max_len=12)
  assert cache.k.shape == (config.num_layers, 2, config.num_kv_heads, 12, config.head_dim)
  logits, cache = step(params, ids[:, :4], cache, np.ones((2, 4), np.int32))  # prefill 4
  outs = [logits]
  for t in range(4, 9):  # then one token a step
    logits, cache = step(params, ids[:, t:t + 1], cache, np.ones((2, 1), np.int32))
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=ATOL, rtol=0)
  assert int(cache.index) == 9 and list(np.asarray(cache.next_position)) == [9, 9]


@pytest.mark.parametrize('padding', ['left', 'right'])
def test_padded_prefill_then_decode_matches_each_example_alone(padding):
  config, module, params = _model('chameleon')
  rng = np.random.RandomState(1)
  lengths, width, new = [3, 6], 6, 3
  examples = [rng.randint(0, 48, n + new).astype(np.int32) for n in lengths]
  prompt = np.zeros((2, width), np.int32)
  segments = np.zeros((2, width), np.int32)
  for row, (ex, n) in enumerate(zip(examples, lengths)):
    cols = slice(width - n, width) if padding == 'left' else slice(0, n)
    prompt[row, cols], segments[row, cols] = ex[:n], 1
  step = _step_fn(module)
  logits, cache = step(params, prompt, init_cache(config, 2, width + new), segments)
  decoded = [[] for _ in examples]
  for row, n in enumerate(lengths):  # the logits at each row's last real prompt token
    decoded[row].append(logits[row, width - 1 if padding == 'left' else n - 1])
  for t in range(new):
    tokens = np.array([[ex[n + t]] for ex, n in zip(examples, lengths)], np.int32)
    logits, cache = step(params, tokens, cache, np.ones((2, 1), np.int32))
    for row in range(2):
      decoded[row].append(logits[row, 0])
  for row, (ex, n) in enumerate(zip(examples, lengths)):
    alone = run(module, params, ex[None])[0]
    # Predictions from the last prompt token on; the final token's own logits are not needed.
    np.testing.assert_allclose(np.stack(decoded[row]), alone[n - 1:n + new], atol=ATOL, rtol=0)
  assert list(np.asarray(cache.next_position)) == [n + new for n in lengths]


def _greedy(module, params, prompt, steps, max_len):
  """Greedy decoding in one jitted lax.while_loop over a fixed-size cache (what a sampler does)."""
  batch, prompt_len = prompt.shape

  @jax.jit
  def run(params, prompt):
    cache = init_cache(module.config, batch, max_len)
    logits, cache = module.apply({'params': params}, prompt, cache=cache)
    tokens = jnp.zeros((batch, steps), jnp.int32).at[:, 0].set(jnp.argmax(logits[:, -1], -1))

    def body(state):
      i, tokens, cache = state
      last = jax.lax.dynamic_slice_in_dim(tokens, i - 1, 1, axis=1)
      logits, cache = module.apply({'params': params}, last, cache=cache)
      return i + 1, tokens.at[:, i].set(jnp.argmax(logits[:, 0], -1)), cache

    _, tokens, _ = jax.lax.while_loop(lambda s: s[0] < steps, body, (1, tokens, cache))
    return tokens

  return np.asarray(run(params, prompt))


def test_greedy_decoding_equals_teacher_forcing_argmax():
  config, module, params = _model('gemma')
  prompt = np.random.RandomState(2).randint(0, 48, (2, 5)).astype(np.int32)
  tokens = _greedy(module, params, prompt, steps=6, max_len=12)
  sequence = np.concatenate([prompt, tokens], axis=1)
  logits = run(module, params, sequence)
  np.testing.assert_array_equal(np.argmax(logits[:, 4:-1], -1), tokens)


def test_repeat_cache_rows_continue_like_their_source():
  config, module, params = _model('chameleon')
  prompt = np.random.RandomState(3).randint(0, 48, (2, 4)).astype(np.int32)
  step = _step_fn(module)
  _, cache = step(params, prompt, init_cache(config, 2, 8), np.ones((2, 4), np.int32))
  tiled = repeat_cache(cache, 3)
  assert isinstance(tiled, KVCache) and tiled.k.shape[1] == 6 and tiled.batch == 6
  # Row i*3 + j continues prompt i with candidate token j.
  nxt = np.array([[5], [6], [7], [8], [9], [10]], np.int32)
  logits, _ = step(params, nxt, tiled, np.ones((6, 1), np.int32))
  for r in range(6):
    seq = np.concatenate([prompt[r // 3], nxt[r]])[None]
    np.testing.assert_allclose(logits[r, 0], run(module, params, seq)[0, -1], atol=ATOL, rtol=0)
