"""Where a training step or a decode step spends its time: step times, then the top XLA ops.

  python bench/profile_step.py [--size mid|world] [--what train|decode] [--steps 3] [--top 20]

Builds the same model as bench_train.py's size preset (float32, no remat, layers unscanned on CPU),
times `--steps` compiled steps (the trainer's train step, or a jitted loop of 16 KV-cache decode
steps for K = 8 rows at slot 1,100 of a 2,074-slot cache), then records one more under
`jax.profiler.trace` and prints the ops with the most time summed over the trace, with their
output shapes and the JAX code they came from. Use it to find what to make fast; bench_train.py is
the comparison with PyTorch.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_train  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def train_runner(size: str, scan: bool):
  """(run one step, compiled HLO text) for the trainer's step on one device."""
  from jax_vlm.input import sources
  from jax_vlm.training import sharding, trainer
  batch = bench_train.SIZES[size]['batch']
  config = bench_train.jax_config(size, 'chameleon', batch, 1, scan)
  t = trainer.Trainer(config, tempfile.mkdtemp(), devices=jax.devices()[:1])
  box = {'state': t.init_state()}
  b = sharding.global_batch(next(sources.SyntheticSource(config, batch)), t.mesh)

  def run():
    with t._context():
      box['state'], m = t._step_fn(box['state'], b)
    jax.block_until_ready((box['state'], m))

  def hlo():
    with t._context():
      return t._step_fn.lower(box['state'], b).compile().as_text()
  return run, hlo


def decode_runner(size: str, scan: bool, rows: int = 8, steps: int = 16):
  from jax_vlm.models import transformer
  from jax_vlm.models.config import TransformerConfig
  config = bench_train.jax_config(size, 'chameleon', 1, 1, scan)
  c = TransformerConfig.from_config(config.model)
  model = transformer.DecoderLM(c)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  seq, filled = bench_train.SIZES[size]['seq'], bench_train.SIZES[size]['prompt']
  cache = transformer.init_cache(c, rows, seq - 26)
  cache = cache.replace(index=jnp.asarray(filled, jnp.int32),
                        segment_ids=cache.segment_ids.at[:, :filled].set(1),
                        next_position=jnp.full((rows,), filled, jnp.int32))

  @jax.jit
  def loop(params, cache):
    def body(_, carry):
      cache, tok = carry
      logits, cache = model.apply(params, tok[:, None], cache=cache)
      return cache, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (cache, jnp.ones((rows,), jnp.int32)))

  def run():
    jax.block_until_ready(loop(params, cache))
  return run, lambda: loop.lower(params, cache).compile().as_text()


def top_ops(trace_dir: str, hlo_text: str, top: int) -> list[tuple[float, int, str, str, str]]:
  """(ms, count, op kind, output shape, source) summed over the trace's XLA op events."""
  path = sorted(glob.glob(os.path.join(trace_dir, 'plugins/profile/*/perfetto_trace.json.gz')))[-1]
  with gzip.open(path) as f:
    events = [e for e in json.load(f)['traceEvents'] if e.get('ph') == 'X']
  shape, source = {}, {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+)', line)
    if m:
      shape[m.group(1)] = m.group(2)
      src = re.search(r'op_name="([^"]*)"', line)
      source[m.group(1)] = re.sub(r'layers_\d+', 'layers_N', src.group(1)) if src else ''
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e['name']
    if name.startswith(('$', 'ThunkExecutor', 'SlinkyThreadPool')):
      continue
    key = (re.sub(r'\.\d+$', '', name), shape.get(name, '?'), source.get(name, '')[-80:])
    total[key] += e['dur'] / 1e3
    count[key] += 1
  return [(ms, count[k], *k) for k, ms in total.most_common(top)]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--size', default='mid', choices=sorted(bench_train.SIZES))
  p.add_argument('--what', default='train', choices=('train', 'decode'))
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=20)
  p.add_argument('--scan_layers', action='store_true')
  args = p.parse_args(argv)
  make = train_runner if args.what == 'train' else decode_runner
  run, hlo = make(args.size, args.scan_layers)
  t0 = time.perf_counter()
  run()
  print(f'first call (compile + run): {time.perf_counter() - t0:.1f} s')
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  unit = 'train step' if args.what == 'train' else '16 decode steps (K = 8)'
  print(f'{unit}: best {min(times):.3f} s, all ' + ', '.join(f'{t:.3f}' for t in times))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      run()
    rows = top_ops(trace_dir, hlo(), args.top)
  print('ms summed over threads | events | op | output | from')
  for ms, n, kind, out, src in rows:
    print(f'{ms:9.1f} | {n:5d} | {kind} | {out} | {src}')


if __name__ == '__main__':
  from jax_vlm.core.cli import prepare_host
  prepare_host()  # as the entry points start: threads for simulated devices, malloc on huge pages
  main()
