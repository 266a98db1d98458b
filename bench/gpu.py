"""GPU benchmark: jax_vlm against transformers + torch (sdpa) on one NVIDIA GPU, in one run.

  bash bench/gpu.sh                         # installs .whl/ offline, then this script
  python bench/gpu.py [--budget_s 430] [--batch 4] [--out_dir runs/gpu_bench]
  python bench/gpu.py --dry-run             # tiny sizes on CPU, same code paths (a test runs it)

What it measures, all in bfloat16 compute with float32 params, randomly initialised, the same
Chameleon architecture on both sides (SwiGLU, per-head QK LayerNorm, untied head):
  * the bf16 matmul rate (best 8192^3 jnp.dot) and the copy bandwidth (bench_sampler);
  * the training step (forward + backward + AdamW with clipping) at a ~1.1B config (d_model 2048,
    16 layers, 16 x 128 heads, MLP 5,632, vocabulary 65,536) on `--batch` rows of 2,100 tokens:
    jax_vlm's trainer step (bench_train.bench_jax_train) with model.attention_impl 'xla' and
    'cudnn', and transformers' ChameleonForConditionalGeneration (attn_implementation='sdpa',
    torch.autocast bf16) with torch.optim.AdamW (bench_train.bench_torch_train); MFU = model
    FLOPs / s against the measured bf16 matmul rate;
  * generation of one 1,024-token image after a 1,050-token prompt for K = 1 and K = 8 candidates:
    jax_vlm.inference.sampler (prefill once, K rows in one jitted while_loop) against
    transformers' generate(num_return_sequences=K, do_sample=True, top_k=0)
    (bench_train.bench_*_generate), then K = 8 again with bfloat16 weights and KV cache on both
    sides (sampler.param_dtype / cache_dtype; torch: model.to(bfloat16)), and K = 8 with jax_vlm's
    layers unscanned (per-layer KV buffers; the training rows scan them). jax_vlm's rows also give
    each decode step's bytes (weights + the whole KV cache) against the copy bandwidth.

The two sides run one after the other in child processes (`--part jax`, `--part torch`), so they
never share GPU memory and a crash in one (an out-of-memory, a cuDNN error) keeps the other's
numbers. Each part saves its JSON after every phase and skips a phase, with the reason, when too
little of `--budget_s` is left; the parent kills a part at its deadline. Output: `--out_dir`/
gpu_bench.json and gpu_bench.md (a markdown table with the machine and the skipped or failed
phases). Nothing is downloaded: the models are built from configs, and gpu.sh installs the few
packages a bare JAX + torch image lacks from the ignored .whl/ folder (bench/gpu_wheels.sh fills
it on a machine with network).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
  if _p not in sys.path:
    sys.path.insert(0, _p)

# bench_train.SIZES entries (see bench_train.py for the fields).
GPU_SIZE = dict(model=dict(vocab_size=65536, d_model=2048, num_layers=16, num_heads=16,
                           num_kv_heads=16, head_dim=128, mlp_dim=5632, max_positions=4096),
                seq=2100, batch=4, prompt=1050, image_tokens=1024, image_codes=8192)
TINY_SIZE = dict(model=dict(vocab_size=1024, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=16, mlp_dim=128, max_positions=128),
                 seq=64, batch=2, prompt=24, image_tokens=16, image_codes=512)
FAMILY = 'chameleon'
CANDIDATES = (1, 8)

# Rough seconds a phase needs at the GPU size (compile included); a phase starts only with this
# much of its part's budget left. The dry run needs none.
NEED_S = {'matmul_peak': 10, 'copy_bandwidth': 5, 'train_xla': 60, 'train_cudnn': 60,
          'train_sdpa': 40, 'generate_k1': 40, 'generate_k8': 45, 'generate_k8_bf16': 40,
          'generate_k8_unscanned': 50}


def size_spec(dry_run: bool) -> tuple[str, dict]:
  return ('gpu_tiny', TINY_SIZE) if dry_run else ('gpu_1b', GPU_SIZE)


def register_size(name: str, spec: dict, batch: int) -> None:
  """Makes `name` a bench_train size so its functions run here unchanged."""
  import bench_train
  bench_train.SIZES[name] = dict(spec, batch=batch)
  bench_train.NUM_IMAGE_CODES[name] = spec['image_codes']


def model_config(spec: dict):
  from jax_vlm.models.config import TransformerConfig
  return TransformerConfig(family=FAMILY, dtype='bfloat16', param_dtype='float32',
                           qk_norm=True, tie_embeddings=False, **spec['model'])


class Part:
  """One child's phases: each runs under a deadline, its result or error saved at once."""

  def __init__(self, name: str, out: str, deadline: float, dry_run: bool):
    self.out, self.deadline, self.dry_run = out, deadline, dry_run
    self.results = {'part': name, 'phases': {}, 'skipped': {}, 'errors': {}}

  def save(self) -> None:
    with open(self.out, 'w') as f:
      json.dump(self.results, f, indent=2)

  def skip(self, name: str, reason: str) -> None:
    print(f'[{self.results["part"]}] {name}: skipped: {reason}', flush=True)
    self.results['skipped'][name] = reason
    self.save()

  def run(self, name: str, fn) -> dict | None:
    left = self.deadline - time.time()
    need = 0 if self.dry_run else NEED_S.get(name, 30)
    if left < need:
      self.skip(name, f'{left:.0f} s of the budget left, it needs about {need} s')
      return None
    self.results['running'] = name  # what a kill at the deadline interrupted
    self.save()
    t0 = time.time()
    try:
      r = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
      traceback.print_exc()
      self.results['errors'][name] = f'{type(e).__name__}: {e}'[:2000]
      self.results.pop('running', None)
      print(f'[{self.results["part"]}] {name}: FAILED {type(e).__name__}: {str(e)[:300]}',
            flush=True)
      self.save()
      return None
    r = dict(r, wall_s=time.time() - t0)
    self.results['phases'][name] = r
    self.results.pop('running', None)
    print(f'[{self.results["part"]}] {name}: {json.dumps(r)}', flush=True)
    self.save()
    return r


def run_jax_part(args, out: str) -> None:
  import bench_sampler
  import bench_train
  import jax
  import jax.numpy as jnp
  size, spec = size_spec(args.dry_run)
  batch = args.batch or spec['batch']
  register_size(size, spec, batch)
  part = Part('jax', out, args.deadline, args.dry_run)
  backend = jax.default_backend()
  dev = jax.devices()[0]
  # As bench_train's --scan_layers auto on a GPU; the dry run too, for the same code path.
  scan = backend != 'cpu' or args.dry_run
  part.results.update(backend=backend, device=getattr(dev, 'device_kind', str(dev)),
                      jax=jax.__version__, size=size, batch=batch, seq=spec['seq'],
                      scan_layers=scan)
  part.save()
  n = 256 if args.dry_run else 8192
  part.run('matmul_peak', lambda: {
      'bf16_flops': bench_train.matmul_peak(n, repeats=5, dtype=jnp.bfloat16), 'n': n})
  nbytes = (16 << 20) if args.dry_run else None
  part.run('copy_bandwidth', lambda: {
      'bytes_per_s': bench_sampler.copy_bandwidth(nbytes)})

  def train(impl):
    return bench_train.bench_jax_train(size, FAMILY, batch, args.steps, scan=scan,
                                       dtype='bfloat16', attention_impl=impl,
                                       remat_policy=args.remat)
  part.run('train_xla', lambda: train('xla'))
  if backend != 'gpu':
    part.skip('train_cudnn', f"attention_impl='cudnn' needs an NVIDIA GPU; JAX's backend here "
                             f'is {backend}')
  else:
    part.run('train_cudnn', lambda: train('cudnn'))

  config = model_config(spec)
  bandwidth = part.results['phases'].get('copy_bandwidth', {}).get('bytes_per_s')

  def generate(k, bf16_weights=False, scan=scan):
    kwargs = dict(param_dtype='bfloat16', cache_dtype='bfloat16') if bf16_weights else {}
    r = bench_train.bench_jax_generate(size, FAMILY, k, spec['image_tokens'], scan=scan,
                                       dtype='bfloat16', sampler_kwargs=kwargs,
                                       attention_impl='xla')
    step_bytes = bench_sampler.decode_step_bytes(config, k, r['cache_len'],
                                                 2 if bf16_weights else 4, 2, spec['image_codes'])
    r['bytes_per_step'] = step_bytes
    if bandwidth:
      r['roofline'] = bench_sampler.roofline(r['seconds'], spec['image_tokens'],
                                             step_bytes['total'], bandwidth)
    return r
  for k in CANDIDATES:
    part.run(f'generate_k{k}', lambda k=k: generate(k))
  part.run('generate_k8_bf16', lambda: generate(8, bf16_weights=True))
  # Layers unrolled: no loop over layers inside each decode step, one KV buffer per layer.
  part.run('generate_k8_unscanned', lambda: generate(8, scan=not scan))


def run_torch_part(args, out: str) -> None:
  import gc

  import bench_train
  import torch
  import transformers
  size, spec = size_spec(args.dry_run)
  batch = args.batch or spec['batch']
  register_size(size, spec, batch)
  part = Part('torch', out, args.deadline, args.dry_run)
  device = 'cuda' if torch.cuda.is_available() and not args.dry_run else 'cpu'
  part.results.update(device=torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu',
                      torch=torch.__version__, transformers=transformers.__version__,
                      cuda=torch.version.cuda, size=size, batch=batch, seq=spec['seq'])
  part.save()
  if device == 'cpu':
    # The dry run shares the CPU with the JAX part: one thread.
    torch.set_num_threads(1 if args.dry_run else os.cpu_count() or 1)
  bf16 = torch.bfloat16

  def free():
    gc.collect()
    if device == 'cuda':
      torch.cuda.empty_cache()

  part.run('train_sdpa', lambda: bench_train.bench_torch_train(
      size, FAMILY, batch, args.steps, device=device, autocast_dtype=bf16,
      attn_implementation='sdpa'))
  free()
  with torch.device(device):
    model = bench_train.torch_model(size, FAMILY, 'sdpa')
  warmup = 2 if args.dry_run else 8
  for k in CANDIDATES:
    part.run(f'generate_k{k}', lambda k=k: bench_train.bench_torch_generate(
        size, FAMILY, k, spec['image_tokens'], device=device, autocast_dtype=bf16,
        warmup_tokens=warmup, model=model))
  part.run('generate_k8_bf16', lambda: bench_train.bench_torch_generate(
      size, FAMILY, 8, spec['image_tokens'], device=device, weights_dtype=bf16,
      warmup_tokens=warmup, model=model))


# ------------------------------------------------------------------------------------------------
# The parent: runs the parts, combines their numbers.


def run_part(name: str, args, out: str, deadline: float, kill_at: float) -> str:
  """Runs `--part name` in a child; returns '' or why it stopped early."""
  cmd = [sys.executable, os.path.abspath(__file__), '--part', name, '--part_out', out,
         '--deadline', repr(deadline), '--steps', str(args.steps), '--remat', args.remat]
  if args.batch:
    cmd += ['--batch', str(args.batch)]
  if args.dry_run:
    cmd.append('--dry-run')
  env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
  if args.dry_run:
    env['JAX_PLATFORMS'] = 'cpu'
    env['CUDA_VISIBLE_DEVICES'] = ''
  if name == 'torch':
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'  # bench_train imports jax; it must take nothing
  print(f'--- {name} part (deadline in {deadline - time.time():.0f} s)', flush=True)
  try:
    rc = subprocess.run(cmd, env=env, timeout=max(1.0, kill_at - time.time())).returncode
  except subprocess.TimeoutExpired:
    return 'killed at its deadline'
  return '' if rc == 0 else f'exited with status {rc}'


def _get(d: dict, *keys):
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def combine(jax_r: dict, torch_r: dict, spec: dict, args, wall_s: float) -> dict:
  config = model_config(spec)
  seq = spec['seq']
  flops = config.flops_per_token(seq)
  peak = _get(jax_r, 'phases', 'matmul_peak', 'bf16_flops')
  rows = []

  def train_row(label, jax_phase):
    j = _get(jax_r, 'phases', jax_phase, 'tokens_per_s')
    t = _get(torch_r, 'phases', 'train_sdpa', 'tokens_per_s')
    rows.append({'what': label, 'jax': j, 'torch': t,
                 'jax_mfu': j * flops / peak if j and peak else None,
                 'torch_mfu': t * flops / peak if t and peak else None,
                 'ratio': j / t if j and t else None})

  batch = jax_r.get('batch') or torch_r.get('batch')
  train_row(f"train {batch} x {seq:,} tokens, attention 'xla'", 'train_xla')
  train_row(f"train {batch} x {seq:,} tokens, attention 'cudnn'", 'train_cudnn')
  scanned = 'scanned' if jax_r.get('scan_layers', True) else 'unscanned'
  other = 'unscanned' if scanned == 'scanned' else 'scanned'
  for phase, torch_phase, label in (
      ('generate_k1', 'generate_k1', 'K = 1'), ('generate_k8', 'generate_k8', 'K = 8'),
      ('generate_k8_bf16', 'generate_k8_bf16', 'K = 8, bf16 weights + KV cache'),
      ('generate_k8_unscanned', 'generate_k8', f'K = 8, jax_vlm layers {other}')):
    j = _get(jax_r, 'phases', phase, 'tokens_per_s')
    t = _get(torch_r, 'phases', torch_phase, 'tokens_per_s')
    rows.append({'what': f'generate {spec["image_tokens"]:,} image tokens, {label}', 'jax': j,
                 'torch': t, 'ratio': j / t if j and t else None,
                 'roofline': _get(jax_r, 'phases', phase, 'roofline', 'fraction')})
  return {'dry_run': args.dry_run, 'command': ' '.join(sys.argv), 'wall_s': wall_s,
          'budget_s': args.budget_s, 'model': spec['model'], 'params': config.param_count(),
          'flops_per_token_train': flops, 'bf16_matmul_flops': peak,
          'copy_bandwidth': _get(jax_r, 'phases', 'copy_bandwidth', 'bytes_per_s'),
          'host': f'{platform.machine()}, {os.cpu_count()} CPU cores', 'rows': rows,
          'jax': jax_r, 'torch': torch_r}


def markdown(r: dict) -> str:
  j, t = r['jax'], r['torch']
  peak, bandwidth = r['bf16_matmul_flops'], r['copy_bandwidth']

  def num(x, fmt='{:,.0f}'):
    return '-' if x is None else fmt.format(x)

  def pct(x):
    return '' if x is None else f' ({100 * x:.1f}%)'

  lines = [
      f"**Machine:** {j.get('device', '?')} (jax {j.get('jax', '?')}, backend "
      f"{j.get('backend', '?')}); torch {t.get('torch', '?')} on {t.get('device', '?')} (CUDA "
      f"{t.get('cuda')}), transformers {t.get('transformers', '?')}; host {r['host']}."
      + (' **Dry run: tiny sizes on CPU, not a measurement.**' if r['dry_run'] else ''),
      f"**Model:** Chameleon, {r['params']:,} params ({r['model']['d_model']} wide, "
      f"{r['model']['num_layers']} layers, vocabulary {r['model']['vocab_size']:,}), bf16 compute, "
      'fp32 params, random weights.',
      f"**Peaks measured in the run:** bf16 matmul {num(peak and peak / 1e12, '{:.3g}')} TFLOP/s, "
      f"copy bandwidth {num(bandwidth and bandwidth / 1e9, '{:.3g}')} GB/s."
      f" Wall {r['wall_s']:.0f} s of a {r['budget_s']:.0f} s budget. Command: `{r['command']}`.",
      '',
      '| | jax_vlm tok/s | transformers + torch (sdpa) tok/s | jax / torch |',
      '|---|---|---|---|',
  ]
  for row in r['rows']:
    extra = pct(row.get('jax_mfu')) if 'jax_mfu' in row else ''
    if row.get('roofline') is not None:
      extra = f' ({100 * row["roofline"]:.0f}% of copy bandwidth)'
    textra = pct(row.get('torch_mfu')) if 'torch_mfu' in row else ''
    lines.append(f"| {row['what']} | {num(row['jax'], '{:,.1f}')}{extra} | "
                 f"{num(row['torch'], '{:,.1f}')}{textra} | {num(row['ratio'], '{:.2f}x')} |")
  lines.append('')
  lines.append('Train rows: tokens/s (MFU against the measured bf16 matmul rate). Generate rows: '
               'new tokens/s over all K candidates, prefill included; jax_vlm in brackets: '
               "its decode step's bytes (weights + whole KV cache) per step time, against the "
               'copy bandwidth.')
  for side, res in (('jax_vlm', j), ('torch', t)):
    for name, why in res.get('skipped', {}).items():
      lines.append(f'- {side} {name} skipped: {why}')
    for name, why in res.get('errors', {}).items():
      lines.append(f'- {side} {name} FAILED: {why.splitlines()[0][:300]}')
    if res.get('stopped'):
      during = f" during {res['running']}" if res.get('running') else ''
      lines.append(f"- {side} part: {res['stopped']}{during}")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--dry-run', action='store_true',
                 help='tiny sizes on CPU through the same code paths (no GPU needed)')
  p.add_argument('--budget_s', type=float, default=None,
                 help='wall-clock budget for both parts (default 430; 240 with --dry-run)')
  p.add_argument('--batch', type=int, default=None, help='training rows (default 4; 2 dry run)')
  p.add_argument('--steps', type=int, default=None, help='timed training steps (default 5; 2)')
  p.add_argument('--remat', default='none', help="model.remat_policy of the JAX training step")
  p.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'gpu_bench'))
  p.add_argument('--jax_share', type=float, default=0.6,
                 help="fraction of the budget the JAX part may use before the torch part starts")
  p.add_argument('--part', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  p.add_argument('--part_out', help=argparse.SUPPRESS)
  p.add_argument('--deadline', type=float, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 2 if args.dry_run else 5
  if args.part:
    (run_jax_part if args.part == 'jax' else run_torch_part)(args, args.part_out)
    return 0

  budget = args.budget_s or (240.0 if args.dry_run else 430.0)
  args.budget_s = budget
  os.makedirs(args.out_dir, exist_ok=True)
  start = time.time()
  end = start + budget
  outs = {name: os.path.join(args.out_dir, f'part_{name}.json') for name in ('jax', 'torch')}
  for out in outs.values():
    if os.path.exists(out):
      os.remove(out)
  # On the GPU the parts run one after the other: the JAX part stops starting phases at its share
  # of the budget and is killed 20 s later; the torch part gets whatever is left.
  jax_deadline = start + args.jax_share * budget
  if args.dry_run:
    # No GPU to share on CPU: both parts at once (the JAX part is mostly single-threaded compiles).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      jax_f = pool.submit(run_part, 'jax', args, outs['jax'], end - 15, end)
      torch_f = pool.submit(run_part, 'torch', args, outs['torch'], end - 15, end)
      stopped = {'jax': jax_f.result(), 'torch': torch_f.result()}
  else:
    stopped = {'jax': run_part('jax', args, outs['jax'], jax_deadline, jax_deadline + 20)}
    stopped['torch'] = run_part('torch', args, outs['torch'], end - 15, end)
  parts = {}
  for name, out in outs.items():
    try:
      with open(out) as f:
        parts[name] = json.load(f)
    except (OSError, ValueError) as e:
      parts[name] = {'errors': {'part': f'no results: {e}'}}
    parts[name]['stopped'] = stopped[name]
  _, spec = size_spec(args.dry_run)
  result = combine(parts['jax'], parts['torch'], spec, args, time.time() - start)
  table = markdown(result)
  with open(os.path.join(args.out_dir, 'gpu_bench.json'), 'w') as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(args.out_dir, 'gpu_bench.md'), 'w') as f:
    f.write(table)
  print('\n' + table)
  print(f'wrote {args.out_dir}/gpu_bench.json and gpu_bench.md in {time.time() - start:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
