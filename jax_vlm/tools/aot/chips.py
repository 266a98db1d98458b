"""TPU chip generations (HBM, peak FLOP/s, HBM bandwidth) and topology descriptions to compile for
(`jax.experimental.topologies`, through libtpu), so no TPU is needed."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Sequence

import jax

from jax_vlm.core.errors import UserError, require

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """One TPU chip generation: HBM per chip, peak dense bf16 FLOP/s and HBM bytes/s per chip."""
  name: str
  hbm_gib: float
  peak_bf16_flops: float
  hbm_bytes_per_s: float


# Keyed by the generation prefix of libtpu's topology names ('v5e:16x16' -> 'v5e').
CHIPS: dict[str, ChipSpec] = {
    'v4': ChipSpec('TPU v4', 32.0, 275e12, 1228e9),
    'v5e': ChipSpec('TPU v5e', 16.0, 197e12, 819e9),
    'v5p': ChipSpec('TPU v5p', 95.0, 459e12, 2765e9),
    'v6e': ChipSpec('TPU v6e', 32.0, 918e12, 1640e9),
}
# libtpu's TPU_ACCELERATOR_TYPE name for a slice of n chips (silences its metadata lookups).
_ACCELERATOR_TYPE = {'v4': 'v4-{cores}', 'v5e': 'v5litepod-{chips}', 'v5p': 'v5p-{cores}',
                     'v6e': 'v6e-{chips}'}

def chip_spec(topology: str) -> ChipSpec:
  """The chip of a topology name like 'v5e:16x16' (UserError for an unknown generation)."""
  prefix = topology.split(':', 1)[0].strip().lower()
  require(prefix in CHIPS, f'TPU topology {topology!r} names no known chip; use one of '
          f'{", ".join(k + ":AxB[xC]" for k in CHIPS)}, e.g. v5e:16x16 or v5p:4x4x4.')
  return CHIPS[prefix]


def libtpu_available() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def _require_libtpu() -> None:
  require(libtpu_available(),
          'libtpu is not installed, so nothing can be compiled for TPU topologies; run '
          f'pip install "jax[tpu]=={jax.__version__}" (or put libtpu on PYTHONPATH).')


def set_tpu_env(topology: str) -> None:
  """Environment libtpu reads when it loads, so it does not look for a real TPU VM (call before
  the first topology is loaded; values already set are kept)."""
  prefix = topology.split(':', 1)[0].lower()
  dims = topology.split(':', 1)[1].split('x') if ':' in topology else []
  if prefix in _ACCELERATOR_TYPE and dims and all(d.isdigit() for d in dims):
    chips = math.prod(int(d) for d in dims)
    os.environ.setdefault('TPU_ACCELERATOR_TYPE',
                          _ACCELERATOR_TYPE[prefix].format(chips=chips, cores=2 * chips))
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  # Compiling only: several AOT processes may share libtpu (otherwise its lockfile refuses).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def topology_devices(topology: str) -> list:
  """The devices of a TPU topology ('v5e:16x16'), or this host's CPU devices for 'cpu'."""
  if topology == 'cpu':
    return list(jax.devices('cpu'))
  chip_spec(topology)
  _require_libtpu()
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(platform='tpu', topology_name=topology)
  except Exception as e:  # libtpu raises JaxRuntimeError / RuntimeError with its own text
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if 'lockfile' in first:
      raise UserError(f'libtpu is in use by another process ({first}); set '
                      'ALLOW_MULTIPLE_LIBTPU_LOAD=1 or wait for it to finish.') from None
    raise UserError(f'TPU topology {topology!r} does not exist for libtpu ({first}); use a name '
                    'like v5e:4x8, v5e:16x16, v5p:4x4x4 or v4:2x2x2.') from None
  return list(desc.devices)


def devices_per_chip(devices: Sequence) -> int:
  """TensorCores exposed as separate devices per chip (2 on v4 without megacore, else 1)."""
  return len({getattr(d, 'core_on_chip', 0) for d in devices}) or 1


