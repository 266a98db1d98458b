"""Threads for XLA:CPU's collectives among simulated devices (cli.collective_threads_environment,
called by cli.prepare_host at every entry point's start)."""

import os
import subprocess
import sys
import textwrap

from jax_vlm.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT = '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'


def test_threads_are_four_per_simulated_device_beyond_the_cores():
  assert cli.collective_threads_environment({'XLA_FLAGS': EIGHT}, 2) == {'PJRT_NPROC': '32'}
  # The last count given is the one XLA uses.
  flags = '--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=3'
  assert cli.collective_threads_environment({'XLA_FLAGS': flags}, 1) == {'PJRT_NPROC': '12'}


def test_nothing_changes_without_simulated_devices_or_with_the_users_setting():
  env = cli.collective_threads_environment
  assert env({}, 2) is None
  assert env({'XLA_FLAGS': '--xla_backend_optimization_level=0'}, 2) is None
  assert env({'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}, 2) is None
  assert env({'XLA_FLAGS': EIGHT}, 32) is None  # the pool already has a thread per core
  assert env({'XLA_FLAGS': EIGHT, 'PJRT_NPROC': '8'}, 2) is None
  assert env({'XLA_FLAGS': EIGHT, 'NPROC': '8'}, 2) is None


# Eight all-gathers of weights that do not depend on each other, each followed by a matmul: XLA:CPU
# starts the all-gathers without waiting for the earlier ones, and on a 2-core host its default
# pool of 8 threads hung within 100 programs in 12 of 12 runs (core/cli.py).
PROGRAM = """
import os
from jax_vlm.core import cli
cli.prepare_host()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ('d',))
def body(x, *ws):
  for w in ws:
    x = jnp.tanh(x @ jax.lax.all_gather(w, 'd', tiled=True))
  return x
f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P('d'),) * 9, out_specs=P('d')))
rng = np.random.default_rng(0)
x = jax.device_put(rng.random((8 * 256, 256), np.float32), NamedSharding(mesh, P('d')))
ws = [jax.device_put(rng.random((256, 256), np.float32) / 256, NamedSharding(mesh, P('d')))
      for _ in range(8)]
for _ in range(100):
  x = f(x, *ws)
print('finished', bool(np.isfinite(float(x.sum()))), os.environ.get('PJRT_NPROC'))
"""


def test_an_entry_point_runs_collectives_of_eight_devices_on_a_small_host(tmp_path):
  script = tmp_path / 'collectives.py'
  script.write_text(textwrap.dedent(PROGRAM))
  env = {k: v for k, v in os.environ.items() if k not in ('PJRT_NPROC', 'NPROC')}
  # A hang aborts after 20 s instead of XLA's default of minutes.
  env['XLA_FLAGS'] = EIGHT + ' --xla_cpu_collective_call_terminate_timeout_seconds=20'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                     timeout=240)
  assert r.returncode == 0, r.stderr[-2000:]
  expected = '32' if (os.cpu_count() or 1) < 32 else 'None'
  assert r.stdout.split() == ['finished', 'True', expected], r.stdout
