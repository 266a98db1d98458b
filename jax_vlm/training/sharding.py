"""Device meshes, logical-axis rules and shardings for training and inference.

The model names every parameter and activation dimension with a logical axis (`vocab`, `embed`,
`heads`, `kv_heads`, `head_dim`, `mlp`, `layers`, `batch`, `length`); this module maps those names
to the mesh axes `('data', 'fsdp', 'tensor')` with a named rule preset from the config, so changing
the parallelism is a config edit. Mesh sizes and rules are checked here, before anything compiles.
Multi-host start-up (`jax.distributed.initialize`) also lives here.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_vlm.core.errors import UserError, require

MESH_AXES = ('data', 'fsdp', 'tensor')
# The batch dimension is split over every data-parallel axis.
BATCH_AXES = ('data', 'fsdp')

# Rules are tried in order; a mesh axis already used by an earlier dimension of the same array is
# skipped (flax's resolution), so `batch` comes first and activations' `embed` then stays whole
# while parameters' `embed` is split over `fsdp`.
RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallelism: parameters replicated, batch split over all devices.
    'dp': (
        ('batch', BATCH_AXES),
    ),
    # ZeRO-3 style: parameters (and optimizer state) split over `fsdp` along `embed`.
    'fsdp': (
        ('batch', BATCH_AXES),
        ('embed', 'fsdp'),
    ),
    # FSDP plus Megatron-style tensor parallelism on heads, MLP and vocabulary.
    'fsdp_tp': (
        ('batch', BATCH_AXES),
        ('heads', 'tensor'),
        ('kv_heads', 'tensor'),
        ('mlp', 'tensor'),
        ('vocab', 'tensor'),
        ('embed', 'fsdp'),
    ),
}


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves the config's `data`/`fsdp`/`tensor` sizes (one may be -1) against the device count."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  require(len(fill) <= 1, f'mesh sizes {dict(zip(MESH_AXES, sizes))} have more than one -1; '
          'set all but one mesh axis to a positive size.')
  require(all(s == -1 or s >= 1 for s in sizes),
          f'mesh sizes {dict(zip(MESH_AXES, sizes))} must be positive or -1; fix config.mesh.')
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    require(num_devices % known == 0,
            f'mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the {num_devices} devices; '
            'choose config.mesh sizes whose product divides the device count.')
    sizes[fill[0]] = num_devices // known
  require(math.prod(sizes) == num_devices,
          f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but there are '
          f'{num_devices}; make the product of config.mesh sizes equal the device count.')
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `Mesh` with axes ('data', 'fsdp', 'tensor') over all (or the given) devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils
    device_grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topology-aware placement is unavailable for some device sets (e.g. CPU subsets).
    device_grid = np.asarray(devices).reshape(shape)
  return Mesh(device_grid, MESH_AXES)


def _parse_overrides(text: str) -> dict[str, Any]:
  """'mlp=tensor,vocab=,batch=data+fsdp' -> {'mlp': 'tensor', 'vocab': None, 'batch': (...)}."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    require('=' in item, f'mesh.rule_overrides item {item!r} is not logical=mesh_axes; '
            "write it like 'mlp=tensor' or 'vocab=' (replicated).")
    name, axes = (s.strip() for s in item.split('=', 1))
    parts = tuple(a for a in axes.split('+') if a)
    for a in parts:
      require(a in MESH_AXES, f'mesh.rule_overrides names mesh axis {a!r}; use one of {MESH_AXES}.')
    out[name] = None if not parts else parts[0] if len(parts) == 1 else parts
  return out


def logical_rules(mesh_config) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules named by `mesh.rules`, with `mesh.rule_overrides` applied."""
  name = mesh_config.rules
  require(name in RULE_PRESETS,
          f'config.mesh.rules={name!r} is not a rule preset; use one of {sorted(RULE_PRESETS)}.')
  rules = list(RULE_PRESETS[name])
  overrides = _parse_overrides(mesh_config.get('rule_overrides', '') or '')
  for i, (logical, _) in enumerate(rules):
    if logical in overrides:
      rules[i] = (logical, overrides.pop(logical))
  # New names go right after `batch`, so the batch keeps its axes and they beat `embed`.
  rules = rules[:1] + list(overrides.items()) + rules[1:]
  return tuple(rules)


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules) -> Any:
  """Maps a tree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def state_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules) -> Any:
  """Shardings for a tree whose array leaves may be `nn.Partitioned` boxes: boxed leaves follow
  their logical names, plain leaves (step, RNG, optimizer counters) are replicated. The result has
  the structure of the unboxed tree."""
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, nn.logical_to_mesh_axes(leaf.names, rules))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, abstract_boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
  """Raises UserError naming the first array whose sharded dimension the mesh does not divide."""
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
  flat_sh = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat, flat_sh):
    if not hasattr(leaf, 'shape') or not isinstance(sh, NamedSharding):
      continue
    for dim, axes in zip(leaf.shape, sh.spec):
      if axes is None:
        continue
      size = math.prod(sh.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      require(dim % size == 0,
              f'{jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)} and cannot be split '
              f'{size} ways over mesh axes {axes}; change config.mesh sizes or rules.')


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays `[batch, ...]` are split over ('data', 'fsdp') and replicated over 'tensor'."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into global arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def _is_multi_process_env() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') and int(env.get('JAX_NUM_PROCESSES', '2')) > 1:
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in env:
    return True
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  # Cloud TPU pods list every worker's host name.
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return True
  return False


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when this process is one of many; True if it did.

  Must run before anything touches a device. Cluster details (coordinator, process id, count) are
  read by JAX itself from the environment (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, Cloud TPU).
  """
  if not _is_multi_process_env():
    return False
  # JAX detects SLURM / Open MPI / Cloud TPU itself; explicit JAX_* variables are passed on.
  kwargs = {}
  if os.environ.get('JAX_NUM_PROCESSES'):
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if os.environ.get('JAX_PROCESS_ID'):
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    if 'already' in str(e).lower():
      return True
    raise UserError(f'jax.distributed.initialize() failed ({e}); check the cluster environment '
                    '(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or SLURM).') from e
  logging.info('Distributed JAX: process %d of %d, %d devices in all.',
               jax.process_index(), jax.process_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """Only process 0 writes logs, reports and progress bars."""
  return jax.process_index() == 0
