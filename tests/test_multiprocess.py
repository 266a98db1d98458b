"""Two local processes (CPU backend, 2 simulated devices each) train configs/train_smoke.py as one
multi-host run: `jax.distributed` over a localhost coordinator, one global mesh of 4 devices, one
metrics log and one set of checkpoints written by the run."""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(process_id: int, port: int) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
             # A SLURM-style environment: JAX's cluster detection reads the process count and id
             # from it (as on a real cluster, see docs/launching.md).
             SLURM_JOB_ID='1', SLURM_NTASKS='2', SLURM_PROCID=str(process_id),
             SLURM_LOCALID=str(process_id), SLURM_STEP_NODELIST='localhost')
  return env


@pytest.mark.slow
def test_two_processes_form_one_run(tmp_path):
  port = _free_port()
  workdir = tmp_path / 'run'
  cmd = [sys.executable, 'train.py', '--config', 'configs/train_smoke.py', '--workdir',
         str(workdir)]
  procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(i, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
    assert f'process {i} of 2, 4 devices in all' in out

  stage = workdir / 'train_dynamics'
  # One log for the run, written by process 0: every step exactly once, finite, learning.
  lines = [json.loads(line) for line in (stage / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in lines] == list(range(1, 9))
  losses = [m['loss'] for m in lines]
  assert all(0 < x < 20 for x in losses) and losses[-1] < losses[0]
  # One set of checkpoints (every 2 steps, the newest 3 kept), the final params and the marker.
  steps = sorted(int(d) for d in os.listdir(stage / 'checkpoints') if d.isdigit())
  assert steps == [4, 6, 8]
  assert (stage / 'checkpoints' / '8' / 'state' / 'commit_success.txt').exists()
  assert (stage / 'params').is_dir() and (stage / 'DONE').exists()
  assert sorted(os.listdir(workdir)) == ['train_dynamics']
