"""Page faults and system CPU time of the trainer's step, with or without malloc on huge pages.

  python bench/page_faults.py [--size world] [--steps 300] [--batch N]
  JAX_VLM_HUGE_PAGES=0 python bench/page_faults.py        # malloc as the system sets it

Runs bench_train.py's jax_vlm train step (`bench_jax_train`: the real Trainer, one CPU device)
once to warm up, then `--steps` steps with getrusage around them, and prints tokens/s, minor page
faults per step and the user / system CPU seconds. Like the entry points, it restarts itself once
with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where glibc and the kernel allow (jax_vlm/core/cli.py),
unless JAX_VLM_HUGE_PAGES=0. docs/benchmarks.md, "Session 25", has its numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> None:
  import bench_train
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='world', choices=sorted(bench_train.SIZES))
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch', type=int, default=None, help='default: the size preset')
  args = parser.parse_args(argv)
  batch = args.batch or bench_train.SIZES[args.size]['batch']
  bench_train.bench_jax_train(args.size, 'chameleon', batch, 3, scan=False)  # compile, warm up
  before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  out = bench_train.bench_jax_train(args.size, 'chameleon', batch, args.steps, scan=False)
  after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
  print(f'{args.size}, {batch} rows, {args.steps} steps, '
        f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}: '
        f'{out["tokens_per_s"]:.0f} tok/s, {out["step_s"] * 1e3:.1f} ms a step; '
        f'{(after.ru_minflt - before.ru_minflt) / args.steps:.0f} minor page faults a step; '
        f'CPU user {after.ru_utime - before.ru_utime:.1f} s, system '
        f'{after.ru_stime - before.ru_stime:.1f} s, wall {wall:.1f} s (the timed run with its '
        'set-up)')


if __name__ == '__main__':
  from jax_vlm.core.cli import prepare_host
  prepare_host()  # as the entry points start: threads for simulated devices, malloc on huge pages
  main()
