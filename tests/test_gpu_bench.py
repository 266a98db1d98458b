"""bench/gpu.py --dry-run: the GPU benchmark's code paths at tiny sizes on CPU, both parts, JSON and
markdown out (the real run needs an NVIDIA GPU; docs/benchmarks.md has its table when one ran)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_dry_run(tmp_path):
  out = tmp_path / 'gpu'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu.py'), '--dry-run',
                         '--out_dir', str(out)], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  r = json.loads((out / 'gpu_bench.json').read_text())
  assert r['dry_run']
  for side in ('jax', 'torch'):
    assert not r[side]['errors'], (side, r[side]['errors'])
    assert not r[side]['stopped'], (side, r[side]['stopped'])
  jax_phases, torch_phases = r['jax']['phases'], r['torch']['phases']
  assert set(jax_phases) == {'matmul_peak', 'copy_bandwidth', 'train_xla', 'generate_k1',
                             'generate_k8', 'generate_k8_bf16', 'generate_k8_unscanned'}
  assert set(torch_phases) == {'train_sdpa', 'generate_k1', 'generate_k8', 'generate_k8_bf16'}
  # cuDNN attention needs a GPU: skipped here, with the reason.
  assert 'cudnn' in r['jax']['skipped']['train_cudnn']
  # The same model on both sides, and every table row has numbers.
  assert jax_phases['train_xla']['params'] == torch_phases['train_sdpa']['params'] == r['params']
  rows = r['rows']
  assert [row['ratio'] is None for row in rows] == [False, True, False, False, False, False]
  assert all(0 < row['jax_mfu'] for row in rows[:1])
  assert all(row['roofline'] > 0 for row in rows[2:])
  # bf16 weights and cache halve the weight bytes a decode step reads.
  k8, k8_bf16 = jax_phases['generate_k8'], jax_phases['generate_k8_bf16']
  assert k8_bf16['bytes_per_step']['weights'] * 2 == k8['bytes_per_step']['weights']
  table = (out / 'gpu_bench.md').read_text()
  assert "attention 'cudnn'" in table and 'skipped' in table and 'Dry run' in table
