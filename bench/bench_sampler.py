"""Sampler throughput: decoded tokens/s for K = 1, 2, 4, 8 candidates and time(K=8) / time(K=1).

  python bench/bench_sampler.py [--sizes world,mid] [--mid_gen_tokens 1024] [--repeats 2]

Image mode (FDP) with inference/sampler.py: one prompt is prefilled ONCE, its cache repeated K
times, and the K rows decode `gen` image tokens together in one jitted while_loop. Sizes:
  world  configs/action_world.py's model (d_model 128, 4 layers), a 5x5-code frame + action
         prompt (~37 tokens), 25 image tokens.
  mid    d_model 1024, 8 layers, vocab 65,536 (8,192 image codes), a ~1,050-token prompt (a
         1,024-code frame + action), 1,024 image tokens (`--mid_gen_tokens` lowers it on slow
         machines; the cache is sized for the full 1,024 either way).
Models are randomly initialised, float32 (CPU) or bfloat16 (`--dtype`); `--param_dtype` and
`--cache_dtype` set the sampler's decode weights and KV cache (sampler.param_dtype / cache_dtype).
Times are the best of `--repeats` runs after one compiling run, wall clock with
block_until_ready, prefill included.

Roofline: a decode step reads every weight once and, with fixed-shape attention, the whole KV cache
of every row; `decode_step_bytes` counts those bytes, `copy_bandwidth` measures this machine's
memory bandwidth (best of a jitted elementwise pass over a large array, read + write), and each
K prints bytes per step / step time against it. Steps are the run's time / tokens, prefill
included, so the fraction is a lower bound. At the world size the weights (4 MB) stay in the CPU's
caches, so there the fraction says little; it is meant for the mid size and GPUs.
`--scan_layers auto` runs unscanned on CPU (per-layer KV buffers, as bench_train.py does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_vlm.inference import sampler as S  # noqa: E402
from jax_vlm.models.config import TransformerConfig  # noqa: E402
from jax_vlm.models.transformer import DecoderLM  # noqa: E402


def copy_bandwidth(nbytes: int | None = None, repeats: int = 5) -> float:
  """Best bytes/s (read + write) of a jitted in-place elementwise pass over an nbytes float32
  array on the default device (default 256 MiB on CPU, 2 GiB elsewhere: well past the caches).
  The buffer is donated: a fresh output each pass would time the OS's page faults on CPU (1.5-2
  GB/s on the development VM against 19 GB/s in place; numpy's copy reaches 23)."""
  if nbytes is None:
    nbytes = (256 if jax.default_backend() == 'cpu' else 2048) << 20
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda a: a * 0.5 + 1.0, donate_argnums=0)
  x = f(x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    x = f(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * (nbytes // 4) * 4 / best


def decode_step_bytes(config: TransformerConfig, rows: int, cache_len: int, param_bytes: int,
                      cache_bytes: int, head_columns: int | None = None) -> dict:
  """Bytes one decode step must move: every matmul weight (all layers + the LM head's
  `head_columns` columns, default the whole vocabulary; image mode reads only the image tokens'
  columns; the embedding lookup reads `rows` rows only), both K and V of all `cache_len` slots of
  every row and layer (the attention reads the fixed-shape cache whole), and the float32 logits
  written once."""
  columns = config.vocab_size if head_columns is None else int(head_columns)
  weights = (config.param_count(include_embedding=False) + columns * config.d_model
             + rows * config.d_model) * param_bytes
  cache = (2 * config.num_layers * rows * config.num_kv_heads * cache_len * config.head_dim
           * cache_bytes)
  logits = rows * columns * 4
  return {'weights': weights, 'kv_cache': cache, 'logits': logits,
          'total': weights + cache + logits}


def roofline(seconds: float, steps: int, step_bytes: int, bandwidth: float) -> dict:
  """Per-step time, achieved bytes/s and the fraction of `bandwidth` for `steps` decode steps."""
  step_s = seconds / steps
  achieved = step_bytes / step_s
  return {'step_s': step_s, 'bytes_per_step': step_bytes, 'bytes_per_s': achieved,
          'fraction': achieved / bandwidth}


class BenchVocab:
  """An 'offset'-scheme vocabulary without a tokenizer: 6 special ids, words, then image codes."""

  def __init__(self, num_text: int, num_image_codes: int):
    self.pad_id, self.bos_id, self.eos_id, self.boi_id, self.eoi_id = 0, 2, 3, 4, 5
    self.offset, self.num_image_codes = num_text, num_image_codes
    self.vocab_size = num_text + num_image_codes

  def codes_to_ids(self, codes):
    return np.asarray(codes) + self.offset

  def ids_to_codes(self, ids):
    ids = np.asarray(ids)
    return np.where(ids >= self.offset, ids - self.offset, -1)

  def image_token_mask(self):
    return np.arange(self.vocab_size) >= self.offset

  def image_token_ids(self):
    return np.arange(self.num_image_codes) + self.offset

  def decode_text(self, ids):
    return ' '.join(str(int(i)) for i in ids)


def world_setup():
  from configs import action_world
  config = action_world.get_config('default')
  num_text = config.model.vocab_size - config.vqgan.num_embeddings
  vocab = BenchVocab(num_text, config.vqgan.num_embeddings)
  return TransformerConfig.from_config(config.model), vocab, 25, 8, 25


def mid_setup(gen_tokens: int):
  model = TransformerConfig(vocab_size=65536, d_model=1024, num_layers=8, num_heads=8,
                            num_kv_heads=8, head_dim=128, mlp_dim=2816, max_positions=4096,
                            dtype='float32', remat_policy='none')
  return model, BenchVocab(65536 - 8192, 8192), 1024, 20, gen_tokens


def bench(name, model_config, vocab, frame_codes, action_len, gen, ks, repeats, dtype,
          param_dtype=None, cache_dtype=None, bandwidth=None, scan_layers=None):
  model_config = model_config.replace(dtype=dtype)
  if scan_layers is not None:
    model_config = model_config.replace(scan_layers=scan_layers)
  module = DecoderLM(model_config)
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
                    )['params']
  rng = np.random.default_rng(0)
  src = rng.integers(0, vocab.num_image_codes, frame_codes)
  action = rng.integers(6, vocab.offset, action_len)
  prompt_len = frame_codes + action_len + 4
  # Cache sized for a whole frame after the prompt, whatever `gen` is.
  sampler = S.Sampler(module, vocab, cache_len=prompt_len + frame_codes, param_dtype=param_dtype,
                      cache_dtype=cache_dtype)
  param_bytes = jnp.dtype(param_dtype or model_config.param_dtype).itemsize
  cache_bytes = jnp.dtype(cache_dtype or dtype).itemsize
  print(f'\n[{name}] d_model={model_config.d_model} layers={model_config.num_layers} '
        f'vocab={model_config.vocab_size} scan_layers={model_config.scan_layers} '
        f'prompt={prompt_len} tokens, generating {gen} of '
        f'{frame_codes} image tokens, dtype={jnp.dtype(dtype).name}, weights {param_bytes} B, '
        f'cache {cache_bytes} B, device={jax.devices()[0]}')
  times = {}
  for k in ks:
    prompts = [S.fdp_prompts(src, action, vocab)[0]]

    def run():
      out = sampler.generate_images(params, prompts, jax.random.PRNGKey(1), num_candidates=k,
                                    num_image_tokens=gen)
      return out
    t0 = time.perf_counter()
    out = run()
    compile_s = time.perf_counter() - t0
    assert out.tokens.shape == (1, k, gen) and vocab.image_token_mask()[out.tokens].all()
    best = float('inf')
    for _ in range(repeats):
      t0 = time.perf_counter()
      run()  # generate_images returns numpy arrays: the device work is done when it returns
      best = min(best, time.perf_counter() - t0)
    times[k] = best
    print(f'  K={k}: {best:8.3f} s  {k * gen / best:10.1f} decoded tokens/s  '
          f'(first call incl. compile {compile_s:.1f} s)')
    if bandwidth:
      step_bytes = decode_step_bytes(model_config, k, sampler.cache_len, param_bytes, cache_bytes,
                                     vocab.num_image_codes)
      r = roofline(best, gen, step_bytes['total'], bandwidth)
      print(f'        {r["step_s"] * 1e3:.2f} ms/step, {step_bytes["total"] / 1e6:.1f} MB/step '
            f'(weights {step_bytes["weights"] / 1e6:.1f}, KV cache '
            f'{step_bytes["kv_cache"] / 1e6:.1f}): {r["bytes_per_s"] / 1e9:.1f} GB/s = '
            f'{100 * r["fraction"]:.0f}% of the measured copy bandwidth')
  if 1 in times and max(ks) in times:
    print(f'  time(K={max(ks)}) / time(K=1) = {times[max(ks)] / times[1]:.2f}')
  return times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--sizes', default='world,mid')
  p.add_argument('--candidates', default='1,2,4,8')
  p.add_argument('--mid_gen_tokens', type=int, default=1024)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--param_dtype', default=None, help='decode weights (sampler.param_dtype)')
  p.add_argument('--cache_dtype', default=None, help='KV cache (sampler.cache_dtype)')
  p.add_argument('--scan_layers', default='auto', choices=('auto', 'true', 'false', 'config'),
                 help='auto = false on CPU (per-layer KV buffers, as bench_train), true elsewhere; '
                      "config = the size's own setting")
  args = p.parse_args(argv)
  scan = {'auto': jax.default_backend() != 'cpu', 'true': True, 'false': False,
          'config': None}[args.scan_layers]
  ks = [int(k) for k in args.candidates.split(',')]
  bandwidth = copy_bandwidth()
  print(f'measured copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s')
  extra = dict(param_dtype=args.param_dtype, cache_dtype=args.cache_dtype, bandwidth=bandwidth,
               scan_layers=scan)
  for size in args.sizes.split(','):
    if size == 'world':
      bench('world', *world_setup(), ks, args.repeats, args.dtype, **extra)
    elif size == 'mid':
      bench('mid', *mid_setup(args.mid_gen_tokens), ks, args.repeats, args.dtype, **extra)
    else:
      raise SystemExit(f'unknown size {size!r}; use world and/or mid')


if __name__ == '__main__':
  from jax_vlm.core.cli import prepare_host
  prepare_host()  # as the entry points start: threads for simulated devices, malloc on huge pages
  main()
