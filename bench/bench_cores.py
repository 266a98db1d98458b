"""Threads or processes: how a reproduction should use this machine's cores.

  python bench/bench_cores.py [--steps 30]

Times the trainer's jitted step at the size of the embedded world's `train_dynamics` (d 128,
4 layers, 4 heads, MLP 512, 32 rows of 80 tokens; the same builder as bench/bench_train.py) in
three layouts, each in fresh child processes:
  threads   one process on every core (XLA:CPU threads each step over them; a lone seed's layout)
  one core  one process pinned to one core
  per core  one process pinned to each core, all at once (jax_vlm.pipeline.reproduce's workers)
and prints wall and CPU milliseconds per step and the steps per second the machine gets through in
each layout. docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

# The children pin themselves before importing this module, so jax starts on their cores.
import bench_train  # noqa: E402
import jax  # noqa: E402

from jax_vlm.input import sources  # noqa: E402
from jax_vlm.training import sharding, trainer  # noqa: E402

WORLD_STEP = dict(vocab_size=640, d_model=128, num_layers=4, num_heads=4, num_kv_heads=4,
                  head_dim=32, mlp_dim=512, max_positions=128)


def time_step(steps: int) -> tuple[float, float]:
  """(wall, CPU) seconds per step of this process, after a compiling step."""
  bench_train.SIZES['train_dynamics'] = dict(model=WORLD_STEP, seq=80, batch=32)
  config = bench_train.jax_config('train_dynamics', 'chameleon', 32, steps, scan=False)
  with tempfile.TemporaryDirectory() as tmp:
    t = trainer.Trainer(config, tmp, devices=jax.devices()[:1])
    state = t.init_state()
    source = sources.SyntheticSource(config, 32)
    batches = [sharding.global_batch(next(source), t.mesh) for _ in range(steps + 1)]
    with t._context():
      state, m = t._step_fn(state, batches[0])
      jax.block_until_ready(m)
      cpu, wall = time.process_time(), time.perf_counter()
      for b in batches[1:]:
        state, m = t._step_fn(state, b)
      jax.block_until_ready((state, m))
      return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def _children(core_sets: list[list[int] | None], steps: int) -> list[tuple[float, float]]:
  """Runs time_step in one child per entry at once (pinned to its cores; None = not pinned)."""
  procs = []
  for cores in core_sets:
    pin = f'os.sched_setaffinity(0, {cores}); ' if cores is not None else ''
    code = (f'import os, sys; {pin}sys.path.insert(0, {os.path.join(ROOT, "bench")!r}); '
            f'import bench_cores; print(*bench_cores.time_step({steps}))')
    procs.append(subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
  out = []
  for p in procs:
    stdout, _ = p.communicate()
    if p.returncode != 0:
      raise SystemExit(f'a timing child failed (exit {p.returncode}); run time_step alone to see '
                       'why.')
    wall, cpu = map(float, stdout.split()[-2:])
    out.append((wall, cpu))
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=30)
  args = parser.parse_args(argv)
  cores = sorted(os.sched_getaffinity(0))
  layouts = {'threads': [None], 'one core': [[cores[0]]], 'per core': [[c] for c in cores]}
  print(f'{len(cores)} cores; {args.steps} steps of 32 x 80 tokens at the train_dynamics size')
  print(f'{"layout":10} {"processes":>9} {"wall ms/step":>13} {"CPU ms/step":>12} '
        f'{"steps/s (machine)":>18}')
  for name, sets in layouts.items():
    res = _children(sets, args.steps)
    wall = sum(w for w, _ in res) / len(res)
    cpu = sum(c for _, c in res) / len(res)
    rate = sum(1.0 / w for w, _ in res)
    print(f'{name:10} {len(res):>9} {1000 * wall:>13.0f} {1000 * cpu:>12.0f} {rate:>18.2f}',
          flush=True)


if __name__ == '__main__':
  main()
