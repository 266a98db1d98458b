"""Training-step and image-generation throughput: jax_vlm against PyTorch transformers, same config.

  python bench/bench_train.py [--sizes world,mid] [--steps 3] [--family chameleon|gemma]
      [--gen_tokens 1024] [--candidates 8] [--rounds 1] [--json out.json]

For each size it builds the same architecture twice, randomly initialised: this project's model
trained by the real trainer step (`trainer.Trainer`: forward + backward + AdamW with clipping,
jitted with shardings and donation, on one CPU device), and transformers'
ChameleonForConditionalGeneration (its `model` + `lm_head`) or GemmaForCausalLM trained by
torch.optim.AdamW; then reports tokens/s of each and the ratio. Generation: one image of
`gen_tokens` tokens for K candidates after a prompt of one image + an action (prefill once, K rows
decode), jax_vlm.inference.sampler.Sampler.generate_images (image tokens only) against transformers'
`generate(num_return_sequences=K, do_sample=True, top_k=0)`. MFU is against this machine's
measured fp32 matmul peak (a large jnp.dot), since CPUs have no datasheet bf16 peak worth quoting.

CPU runs use float32 compute (bf16 matmuls are emulated and slow on most CPUs) and no remat.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# Sizes: 'world' is a small model of the embedded action world (two 25-token frames + an action);
# 'mid' is d_model 1024, 8 layers on the paper's 2,100-token sequences.
SIZES = {
    'world': dict(model=dict(vocab_size=1024, d_model=256, num_layers=4, num_heads=8,
                             num_kv_heads=8, head_dim=32, mlp_dim=1024, max_positions=128),
                  seq=64, batch=16, prompt=30, image_tokens=25),
    'mid': dict(model=dict(vocab_size=65536, d_model=1024, num_layers=8, num_heads=8,
                           num_kv_heads=8, head_dim=128, mlp_dim=2816, max_positions=4096),
                seq=2100, batch=1, prompt=1050, image_tokens=1024),
}
NUM_IMAGE_CODES = {'world': 512, 'mid': 8192}


def matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """Best FLOP/s of an n x n x n jnp.dot in `dtype` (fp32 by default) on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def jax_config(size: str, family: str, batch: int, steps: int, scan: bool, dtype='float32',
               **model_overrides):
  """The base config at a SIZES preset: compute `dtype`, fp32 params, no remat (model_overrides,
  e.g. attention_impl or remat_policy, go into config.model last)."""
  from configs import base
  spec = SIZES[size]
  config = base.get_base_config()
  config.model.update(spec['model'], family=family, dtype=dtype, remat_policy='none',
                      scan_layers=scan, qk_norm=family == 'chameleon',
                      tie_embeddings=family == 'gemma')
  config.model.update(model_overrides)
  config.data.max_seq_len = spec['seq']
  config.train.update(data_source='synthetic', global_batch_size=batch, num_steps=steps + 1,
                      progress_bar=False, tensorboard=False, warmup_steps=1)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  return config


def bench_jax_train(size, family, batch, steps, scan=True, dtype='float32',
                    **model_overrides) -> dict:
  """Tokens/s of the trainer's compiled step (first step = compile, not timed)."""
  from jax_vlm.input import sources
  from jax_vlm.training import sharding, trainer
  config = jax_config(size, family, batch, steps, scan, dtype, **model_overrides)
  with tempfile.TemporaryDirectory() as tmp:
    t = trainer.Trainer(config, tmp, devices=jax.devices()[:1])
    state = t.init_state()
    source = sources.SyntheticSource(config, batch)
    batches = [sharding.global_batch(next(source), t.mesh) for _ in range(steps + 1)]
    t0 = time.perf_counter()
    with t._context():
      state, m = t._step_fn(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with t._context():
      for b in batches[1:]:
        state, m = t._step_fn(state, b)
    jax.block_until_ready((state, m))
    elapsed = time.perf_counter() - t0
  seq = SIZES[size]['seq']
  return {'tokens_per_s': steps * batch * seq / elapsed, 'step_s': elapsed / steps,
          'first_step_s': compile_s, 'loss': float(m['loss']),
          'params': t.model_config.param_count(),
          'flops_per_token': t.model_config.flops_per_token(seq)}


def torch_model(size: str, family: str, attn_implementation: str | None = None):
  """transformers' model at a SIZES preset, randomly initialised (built on torch's current default
  device: wrap the call in `with torch.device('cuda'):` to build it on a GPU)."""
  import torch
  import transformers
  m = SIZES[size]['model']
  common = dict(vocab_size=m['vocab_size'], hidden_size=m['d_model'],
                intermediate_size=m['mlp_dim'], num_hidden_layers=m['num_layers'],
                num_attention_heads=m['num_heads'], num_key_value_heads=m['num_kv_heads'],
                max_position_embeddings=m['max_positions'])
  if attn_implementation:
    common['attn_implementation'] = attn_implementation
  torch.manual_seed(0)
  if family == 'gemma':
    cfg = transformers.GemmaConfig(head_dim=m['head_dim'], tie_word_embeddings=True, **common)
    return transformers.GemmaForCausalLM(cfg)
  # A tiny VQ model: only the language model is trained or timed.
  vq = dict(embed_dim=4, num_embeddings=16, base_channels=32, channel_multiplier=[1],
            num_res_blocks=1, latent_channels=4, resolution=8, attn_resolutions=[])
  cfg = transformers.ChameleonConfig(vq_config=vq, vocabulary_map={'<image>': 3}, **common)
  return transformers.ChameleonForConditionalGeneration(cfg)


def _lm(model):
  """(decoder, head) of a transformers model."""
  return model.model, model.lm_head


def _sync(device) -> None:
  import torch
  if torch.device(device).type == 'cuda':
    torch.cuda.synchronize()


def _autocast(device, dtype):
  """torch.autocast to `dtype` on `device` (a no-op context when dtype is None)."""
  import torch
  return torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                        enabled=dtype is not None)


def bench_torch_train(size, family, batch, steps, device='cpu', autocast_dtype=None,
                      attn_implementation=None) -> dict:
  """Tokens/s of forward + backward + AdamW with clipping; fp32 params, compute in
  `autocast_dtype` (None = fp32)."""
  import torch
  with torch.device(device):
    model = torch_model(size, family, attn_implementation).train()
  decoder, head = _lm(model)
  params = [p for n, p in model.named_parameters() if 'vqmodel' not in n]
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
  seq = SIZES[size]['seq']
  vocab = SIZES[size]['model']['vocab_size']
  gen = torch.Generator().manual_seed(0)
  data = [torch.randint(1, vocab, (batch, seq), generator=gen).to(device)
          for _ in range(steps + 1)]

  def step(ids):
    with _autocast(device, autocast_dtype):
      hidden = decoder(input_ids=ids).last_hidden_state
      logits = head(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab),
                                             ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss

  t0 = time.perf_counter()
  step(data[0])
  _sync(device)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for ids in data[1:]:
    loss = step(ids)
  _sync(device)
  elapsed = time.perf_counter() - t0
  return {'tokens_per_s': steps * batch * seq / elapsed, 'step_s': elapsed / steps,
          'first_step_s': first, 'loss': loss.item(),
          'params': sum(p.numel() for p in params)}


@functools.lru_cache(maxsize=1)
def _init_params(model):
  """Random params of a DecoderLM (cached: runs with the same model share one init)."""
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32)))(jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: x.unbox() if hasattr(x, 'unbox') else x, params,
                      is_leaf=lambda x: hasattr(x, 'unbox'))['params']


def bench_jax_generate(size, family, candidates, gen_tokens, scan=True, dtype='float32',
                       sampler_kwargs=None, **model_overrides) -> dict:
  """inference.sampler.Sampler.generate_images: prefill once, repeat the cache K times, sample
  `gen_tokens` image tokens per row in one jitted while_loop (the product's sampler).
  sampler_kwargs: e.g. param_dtype / cache_dtype for the Sampler."""
  from bench_sampler import BenchVocab

  from jax_vlm.inference import sampler as S
  from jax_vlm.models import transformer
  from jax_vlm.models.config import TransformerConfig
  config = jax_config(size, family, 1, 1, scan, dtype, **model_overrides)
  c = TransformerConfig.from_config(config.model)
  model = transformer.DecoderLM(c)
  prompt_len = SIZES[size]['prompt']
  params = _init_params(model)
  vocab = BenchVocab(c.vocab_size - NUM_IMAGE_CODES[size], NUM_IMAGE_CODES[size])
  sampler = S.Sampler(model, vocab, cache_len=prompt_len + gen_tokens, **(sampler_kwargs or {}))
  prompt = jax.random.randint(jax.random.PRNGKey(1), (prompt_len,), 1, c.vocab_size)
  prompts = [jax.device_get(prompt)]

  def generate(seed):
    return sampler.generate_images(params, prompts, jax.random.PRNGKey(seed),
                                   num_candidates=candidates, num_image_tokens=gen_tokens)

  t0 = time.perf_counter()
  generate(2)  # compiles; returns numpy, so the device work is done
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = generate(3)
  elapsed = time.perf_counter() - t0
  assert out.tokens.shape == (1, candidates, gen_tokens)
  assert vocab.image_token_mask()[out.tokens].all()
  return {'tokens_per_s': candidates * gen_tokens / elapsed, 'seconds': elapsed,
          'first_call_s': first, 'cache_len': sampler.cache_len}


def bench_torch_generate(size, family, candidates, gen_tokens, device='cpu', autocast_dtype=None,
                         weights_dtype=None, attn_implementation=None, warmup_tokens=0,
                         model=None) -> dict:
  """transformers' generate(num_return_sequences=K, do_sample=True, top_k=0). weights_dtype: cast
  the model (e.g. torch.bfloat16); warmup_tokens > 0: an untimed short generate first (CUDA
  kernels, caches); model: reuse one built before (it is cast in place)."""
  import torch
  if model is None:
    with torch.device(device):
      model = torch_model(size, family, attn_implementation)
  model = model.eval()
  if weights_dtype is not None:
    model = model.to(weights_dtype)
  prompt_len = SIZES[size]['prompt']
  vocab = SIZES[size]['model']['vocab_size']
  prompt = torch.randint(1, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(1))
  prompt = prompt.to(device)
  # top_k=0: plain sampling at temperature 1, as the JAX side (transformers' default is top-k 50).
  kwargs = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=True, top_k=0,
                num_return_sequences=candidates, use_cache=True, pad_token_id=0)
  with torch.no_grad(), _autocast(device, autocast_dtype):
    if warmup_tokens:
      model.generate(prompt, **dict(kwargs, max_new_tokens=warmup_tokens,
                                    min_new_tokens=warmup_tokens))
      _sync(device)
    t0 = time.perf_counter()
    out = model.generate(prompt, **kwargs)
    _sync(device)
    elapsed = time.perf_counter() - t0
  assert out.shape == (candidates, prompt_len + gen_tokens), out.shape
  return {'tokens_per_s': candidates * gen_tokens / elapsed, 'seconds': elapsed}


def paired_rounds(jax_first: dict, torch_first: dict, rounds: int, run_jax, run_torch) -> dict:
  """The jax/torch comparison over `rounds` paired rounds: the given first pair, then rounds - 1
  more, alternating which side runs first so a drifting machine speed does not favour one.
  Returns {'jax', 'torch'} (each side's round with the median tokens/s), 'jax_over_torch' (the
  median of the per-round ratios) and, for more than one round, 'rounds' [(jax, torch, ratio)]."""
  pairs = [(jax_first, torch_first)]
  for i in range(1, rounds):
    if i % 2:
      t = run_torch()
      j = run_jax()
    else:
      j = run_jax()
      t = run_torch()
    pairs.append((j, t))
  ratios = [j['tokens_per_s'] / t['tokens_per_s'] for j, t in pairs]

  def median_run(side):
    runs = sorted((p[side] for p in pairs), key=lambda r: r['tokens_per_s'])
    return runs[(len(runs) - 1) // 2]  # the lower median, as statistics.median_low
  out = {'jax': median_run(0), 'torch': median_run(1),
         'jax_over_torch': statistics.median_low(ratios)}
  if rounds > 1:
    out['rounds'] = [(j['tokens_per_s'], t['tokens_per_s'], q) for (j, t), q in zip(pairs, ratios)]
  return out


def _spread(r: dict) -> str:
  """' (median of N rounds: a-b)' for a multi-round comparison, else ''."""
  if 'rounds' not in r:
    return ''
  ratios = [q for _, _, q in r['rounds']]
  return f' (median of {len(ratios)} rounds: {min(ratios):.2f}-{max(ratios):.2f})'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='world,mid')
  parser.add_argument('--family', default='chameleon', choices=('chameleon', 'gemma'))
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--batch', type=int, default=None, help='default: the size preset')
  parser.add_argument('--candidates', type=int, default=8)
  parser.add_argument('--gen_tokens', type=int, default=None,
                      help='image tokens to generate (default: the size preset: 25 / 1024)')
  parser.add_argument('--rounds', type=int, default=1,
                      help='measure each jax/torch pair this many times, alternating which goes '
                           'first, and report the median of the per-round ratios (for a machine '
                           'whose speed drifts)')
  parser.add_argument('--no_generate', action='store_true')
  parser.add_argument('--scan_layers', default='auto', choices=('auto', 'true', 'false'),
                      help="the main JAX row's model.scan_layers; auto = false on CPU (XLA:CPU "
                           'fuses less across the scan loop), true elsewhere')
  parser.add_argument('--no_scan_check', action='store_true',
                      help='skip the extra JAX run with the other scan_layers setting')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)

  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  peak = matmul_peak()
  machine = (f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, '
             f'jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, '
             f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}')
  print(f'machine: {machine}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s')
  results = {'machine': machine, 'matmul_peak_flops': peak, 'family': args.family, 'sizes': {}}
  scan = (args.scan_layers == 'true' if args.scan_layers != 'auto'
          else jax.default_backend() != 'cpu')
  for size in args.sizes.split(','):
    batch = args.batch or SIZES[size]['batch']
    r = {'batch': batch, 'seq': SIZES[size]['seq']}
    r['scan_layers'] = scan
    r['jax'] = bench_jax_train(size, args.family, batch, args.steps, scan=scan)
    if not args.no_scan_check:
      r['jax_other_scan'] = bench_jax_train(size, args.family, batch, args.steps, scan=not scan)
    r['torch'] = bench_torch_train(size, args.family, batch, args.steps)
    r.update(paired_rounds(
        r['jax'], r['torch'], args.rounds,
        lambda: bench_jax_train(size, args.family, batch, args.steps, scan=scan),
        lambda: bench_torch_train(size, args.family, batch, args.steps)))
    r['mfu'] = r['jax']['tokens_per_s'] * r['jax']['flops_per_token'] / peak
    r['torch_mfu'] = r['torch']['tokens_per_s'] * r['jax']['flops_per_token'] / peak
    print(f'[{size}] train {batch}x{r["seq"]}: jax {r["jax"]["tokens_per_s"]:.0f} tok/s '
          f'(MFU {100 * r["mfu"]:.1f}%), torch {r["torch"]["tokens_per_s"]:.0f} tok/s '
          f'(MFU {100 * r["torch_mfu"]:.1f}%), ratio {r["jax_over_torch"]:.2f}{_spread(r)}; '
          f'params jax {r["jax"]["params"]:,} torch {r["torch"]["params"]:,}', flush=True)
    if 'jax_other_scan' in r:
      print(f'[{size}] jax with scan_layers={not scan}: '
            f'{r["jax_other_scan"]["tokens_per_s"]:.0f} tok/s', flush=True)
    if not args.no_generate:
      n = args.gen_tokens or SIZES[size]['image_tokens']
      def gen_jax():
        return bench_jax_generate(size, args.family, args.candidates, n, scan)

      def gen_torch():
        return bench_torch_generate(size, args.family, args.candidates, n)
      g = r['generate'] = {'tokens': n, 'candidates': args.candidates}
      g.update(paired_rounds(gen_jax(), gen_torch(), args.rounds, gen_jax, gen_torch))
      print(f'[{size}] generate K={args.candidates} x {n} tokens: jax '
            f'{g["jax"]["tokens_per_s"]:.1f} tok/s, torch {g["torch"]["tokens_per_s"]:.1f} tok/s, '
            f'ratio {g["jax_over_torch"]:.2f}{_spread(g)}', flush=True)
    results['sizes'][size] = r
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  from jax_vlm.core.cli import prepare_host
  prepare_host()  # as the entry points start: threads for simulated devices, malloc on huge pages
  main()
