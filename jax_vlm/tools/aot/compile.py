"""Lowering and compiling the trainer's train step and one sampler decode step for a topology, and
reading memory, FLOPs and estimated step time from the compiled program; sweeps over meshes.

The command line and what the numbers mean: jax_vlm/tools/aot/__main__.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jax_vlm.core.errors import UserError, require
from jax_vlm.models import transformer
from jax_vlm.tools.aot.chips import GIB, ChipSpec, chip_spec, devices_per_chip, topology_devices
from jax_vlm.tools.aot.tables import fmt, sweep_row
from jax_vlm.training import sharding
from jax_vlm.training.config import validate_config
from jax_vlm.training.step_builder import TrainStep, build_train_step

# Sequences of the paper's FDP/IDP examples: two 1,024-token images plus an action.
PAPER_SEQ_LEN = 2100
PAPER_GLOBAL_BATCH = 96
PAPER_LORA_RANK = 16




# ------------------------------------------------------------------------------------------------
# Batch size and config points.


def aot_global_batch(requested: int, data_parallel: int, accum_steps: int = 1) -> int:
  """`requested` if the mesh divides it, else the nearest multiple of data*fsdp*accum (ties up,
  never 0): 96 stays 96 on 32 data-parallel chips and becomes 128 on 64, 256 on 256."""
  unit = data_parallel * accum_steps
  return max(unit, int(math.floor(requested / unit + 0.5)) * unit)


def parse_point(text: str) -> dict[str, str]:
  """'rules=fsdp_tp,tensor=4,mode=lora,remat=dots' -> {'rules': 'fsdp_tp', ...}."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    require('=' in item, f'sweep point item {item!r} is not key=value; write points like '
            "'rules=fsdp_tp,tensor=4,mode=lora,remat=dots'.")
    key, value = (s.strip() for s in item.split('=', 1))
    out[key] = value
  return out


_SHORT_KEYS = {'rules': 'mesh.rules', 'data': 'mesh.data', 'fsdp': 'mesh.fsdp',
               'tensor': 'mesh.tensor', 'mode': 'train.mode', 'remat': 'model.remat_policy',
               'accum': 'train.grad_accum_steps', 'batch': 'train.global_batch_size'}


def apply_point(config, point: dict[str, str]):
  """A copy of `config` with a sweep point applied (short keys or dotted config keys). 'dp' rules
  put every chip on the data axis; 'mode=lora' sets the paper's rank 16 if the config has none."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in point.items():
    path = _SHORT_KEYS.get(key, key).split('.')
    node = config
    for part in path[:-1]:
      require(part in node, f'sweep point key {key!r} is not in the config; use one of '
              f'{", ".join(_SHORT_KEYS)} or a dotted config key.')
      node = node[part]
    require(path[-1] in node, f'sweep point key {key!r} is not in the config; use one of '
            f'{", ".join(_SHORT_KEYS)} or a dotted config key.')
    old = node[path[-1]]
    if isinstance(old, bool):
      node[path[-1]] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(old, int):
      node[path[-1]] = int(value)
    elif isinstance(old, float):
      node[path[-1]] = float(value)
    else:
      node[path[-1]] = value
  if point.get('rules') == 'dp' and 'data' not in point and 'fsdp' not in point:
    config.mesh.update(data=-1, fsdp=1, tensor=1)
  if config.train.mode == 'lora' and int(config.model.lora_rank) == 0:
    config.model.lora_rank = PAPER_LORA_RANK
  return config


# ------------------------------------------------------------------------------------------------
# Building and compiling the steps.


@dataclasses.dataclass
class TrainStepParts:
  """The trainer's jitted train step and abstract arguments (with shardings) to lower it with."""
  step: TrainStep  # from training.step_builder.build_train_step, as the Trainer runs it
  state: Any  # TrainState of ShapeDtypeStructs with shardings
  batch: dict  # ShapeDtypeStructs [global_batch, seq] with the batch sharding
  global_batch: int
  seq_len: int


def abstract_train_step(config, devices: Sequence, seq_len: int | None = None,
                        global_batch: int | None = None) -> TrainStepParts:
  """The trainer's train step (`build_train_step`) for `devices` (which may be a TPU topology's)
  with abstract state and batch to lower it with; nothing is compiled or put on a device.

  `global_batch` defaults to config.train.global_batch_size rounded to what the mesh needs.
  """
  devices = list(devices)
  seq_len = int(seq_len or min(config.data.max_seq_len, config.model.max_positions))
  shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, len(devices))))
  accum = int(config.train.grad_accum_steps)
  if global_batch is None:
    global_batch = aot_global_batch(int(config.train.global_batch_size),
                                    shape['data'] * shape['fsdp'], accum)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.global_batch_size = int(global_batch)
  validate_config(config, len(devices))
  step = build_train_step(config, devices)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       step.abstract_state, step.state_shardings)
  rows = (global_batch, seq_len)
  batch = {name: jax.ShapeDtypeStruct(rows, dtype, sharding=step.batch_sharding)
           for name, dtype in (('token_ids', jnp.int32), ('positions', jnp.int32),
                               ('segment_ids', jnp.int32), ('loss_weights', jnp.float32))}
  batch['task'] = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=step.batch_sharding)
  return TrainStepParts(step, state, batch, global_batch, seq_len)


def lower_train_step(parts: TrainStepParts):
  """`step_fn.lower(state, batch)` under the mesh and logical rules (activation constraints)."""
  with parts.step.context():
    return parts.step.step_fn.lower(parts.state, parts.batch)


def lower_decode_step(parts: TrainStepParts, batch: int, max_len: int):
  """One sampler step: `DecoderLM` on one new token per row with a `KVCache` of `max_len` slots.

  Params keep the training dtype and sharding; the cache (in the compute dtype) is split by its
  logical axes (`cache_logical_axes`) and donated, as a `lax.while_loop` sampler would carry it.
  """


  step = parts.step
  model, c, mesh, rules = step.model, step.model_config, step.mesh, step.rules
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    cache = jax.eval_shape(lambda: transformer.init_cache(c, batch, max_len))
    cache_shardings = jax.tree.map(
        lambda names: sharding.logical_to_shardings(jax.sharding.PartitionSpec(*names), mesh,
                                                    rules),
        transformer.cache_logical_axes(c), is_leaf=lambda x: isinstance(x, tuple))
  params_sh = jax.tree.map(lambda s: s.sharding, parts.state.params)
  tokens_sh = sharding.batch_sharding(mesh)

  def decode(params, token_ids, cache):
    logits, cache = model.apply({'params': params}, token_ids, cache=cache)
    return logits[:, -1], cache

  fn = jax.jit(decode, in_shardings=(params_sh, tokens_sh, cache_shardings),
               out_shardings=(tokens_sh, cache_shardings), donate_argnums=(2,))
  cache = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), cache,
                       cache_shardings)
  tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=tokens_sh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return fn.lower(parts.state.params, tokens, cache)


# ------------------------------------------------------------------------------------------------
# Reading the compiled program.


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory_report(compiled, hbm_per_device_gib: float | None) -> dict[str, Any]:
  """Per-device bytes of the compiled program (GiB): arguments, outputs, temporaries, code; the
  peak is arguments + outputs - aliased (donated) + temporaries + code."""
  m = compiled.memory_analysis()
  arg, out = m.argument_size_in_bytes, m.output_size_in_bytes
  alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
  code = m.generated_code_size_in_bytes
  total = arg + out - alias + temp + code
  report = {'argument_gib': arg / GIB, 'output_gib': out / GIB, 'alias_gib': alias / GIB,
            'temp_gib': temp / GIB, 'code_gib': code / GIB, 'memory_gib': total / GIB}
  report['fits'] = None if hbm_per_device_gib is None else total / GIB <= hbm_per_device_gib
  return report


def estimate_mfu(model_flops_per_step: float, estimated_step_s: float | None, num_chips: int,
                 peak_flops_per_chip: float | None) -> float | None:
  """MFU implied by a step time: model FLOPs / (time * chips * peak), None without both."""
  if not estimated_step_s or not peak_flops_per_chip or estimated_step_s <= 0:
    return None
  return model_flops_per_step / (estimated_step_s * num_chips * peak_flops_per_chip)


def _xla_seconds(cost: dict[str, float]) -> float | None:
  """XLA's own step-time estimate; libtpu gives a negative sentinel when it has none (e.g. for
  programs with loops or collectives), which means 'unknown'."""
  t = cost.get('optimal_seconds')
  return float(t) if t is not None and t > 0 else None


def roofline_seconds(flops: float, bytes_accessed: float, spec: ChipSpec) -> float:
  """max(compute time, HBM time) per chip from the compiler's counts; ignores communication."""
  return max(flops / spec.peak_bf16_flops, bytes_accessed / spec.hbm_bytes_per_s)


def per_layer_counts(config, devices: Sequence, seq_len: int, global_batch: int,
                     decode_rows: int | None) -> dict[str, dict[str, float]]:
  """Compiler FLOPs and bytes of the full-depth programs, extrapolated from unscanned 1- and
  2-layer compiles of the same widths, mesh and batch: count(L) = c1 + (L - 1) * (c2 - c1); also
  `seconds`, XLA's optimal_seconds extrapolated the same way, when libtpu gives it for both.

  Needed because XLA's cost analysis (optimal_seconds included) counts a `scan` (while-loop) body
  once, not once per layer.
  """
  depth = int(config.model.num_layers)
  counts = {}
  for layers in (1, 2):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.model.update(num_layers=layers, scan_layers=False)
    parts = abstract_train_step(cfg, devices, seq_len=seq_len, global_batch=global_batch)
    programs = {'train': lower_train_step(parts)}
    if decode_rows:
      programs['decode'] = lower_decode_step(parts, decode_rows, seq_len)
    for name, lowered in programs.items():
      cost = _cost(lowered.compile())
      counts.setdefault(name, []).append((float(cost.get('flops', 0.0)),
                                          float(cost.get('bytes accessed', 0.0)),
                                          _xla_seconds(cost)))
  out = {}
  for name, ((f1, b1, t1), (f2, b2, t2)) in counts.items():
    out[name] = {'flops': f1 + (depth - 1) * (f2 - f1),
                 'bytes_accessed': b1 + (depth - 1) * (b2 - b1),
                 'seconds': t1 + (depth - 1) * (t2 - t1) if t1 and t2 and t2 >= t1 else None}
  return out


def analyze_topology(config, topology: str, devices: Sequence | None = None,
                     decode: bool = True, seq_len: int | None = None,
                     global_batch: int | None = None, num_candidates: int | None = None,
                     estimate_time: bool = True) -> dict[str, Any]:
  """Compiles the train step (and a decode step) for `topology` and returns the report dict.

  Keys: `fits`, `memory_per_chip_gib`, `hbm_per_chip_gib`, `estimated_step_s`, `mfu` (implied by
  that estimate), `argument_gib`, `output_gib`, `temp_gib`, `compiler_flops` (per chip),
  `model_flops_per_step`, mesh, batch and timing details, and `decode` (same fields for one decode
  step) when asked. On 'cpu' HBM, peak FLOP/s, fits and MFU are None.

  Step times are compile-time ESTIMATES (`estimate_source` says which): XLA's `optimal_seconds`
  when libtpu gives one (extrapolated over the layers from 1- and 2-layer compiles when the model
  is scanned, since XLA counts a scan body once), else a per-chip roofline max(FLOPs / peak,
  bytes / HBM bandwidth) of the compiler's own counts, extrapolated the same way
  (`per_layer_counts`); neither includes communication that does not overlap, so real steps are
  slower.
  """
  devices = topology_devices(topology) if devices is None else list(devices)
  spec = None if topology == 'cpu' else chip_spec(topology)
  per_chip = devices_per_chip(devices)
  num_chips = len(devices) // per_chip
  hbm_device = None if spec is None else spec.hbm_gib / per_chip
  peak = None if spec is None else spec.peak_bf16_flops

  t0 = time.perf_counter()
  parts = abstract_train_step(config, devices, seq_len=seq_len, global_batch=global_batch)
  compiled = lower_train_step(parts).compile()
  compile_s = time.perf_counter() - t0
  mem = memory_report(compiled, hbm_device)
  cost = _cost(compiled)
  mesh_shape = dict(parts.step.mesh.shape)
  dp = mesh_shape['data'] * mesh_shape['fsdp']
  k = int(num_candidates or config.sampler.num_candidates)
  # K candidates of one prompt, rounded up so the batch axis splits over data*fsdp.
  rows = int(math.ceil(k / dp)) * dp
  dec = lower_decode_step(parts, rows, parts.seq_len).compile() if decode else None
  dcost = _cost(dec) if decode else {}

  # A scanned program's own estimate counts one layer (see per_layer_counts): not usable.
  scanned = bool(parts.step.model_config.scan_layers) and parts.step.model_config.num_layers > 1
  est, dest = (None, None) if scanned else (_xla_seconds(cost), _xla_seconds(dcost))
  source = 'xla optimal_seconds'
  counts = None
  if spec is not None and estimate_time and (est is None or (decode and dest is None)):
    counts = per_layer_counts(config, devices, parts.seq_len, parts.global_batch,
                              rows if decode else None)

    def extrapolated(name):
      c = counts[name]
      if c['seconds']:
        return c['seconds'], 'xla optimal_seconds (1-2 layer extrapolation)'
      return (roofline_seconds(c['flops'], c['bytes_accessed'], spec),
              'roofline of compiler FLOPs/bytes (1-2 layer extrapolation), no communication')

    if est is None:
      est, source = extrapolated('train')
    if decode and dest is None:
      dest = extrapolated('decode')[0]
  tokens = parts.global_batch * parts.seq_len
  model_flops = parts.step.model_config.flops_per_token(parts.seq_len) * tokens
  result = {
      'topology': topology, 'chip': spec.name if spec else 'cpu', 'chips': num_chips,
      'devices': len(devices), 'mesh': mesh_shape, 'rules': config.mesh.rules,
      'mode': config.train.mode, 'remat': parts.step.model_config.remat_policy,
      'lora_rank': parts.step.model_config.lora_rank, 'global_batch': parts.global_batch,
      'seq_len': parts.seq_len, 'fits': mem['fits'],
      'memory_per_chip_gib': mem['memory_gib'] * per_chip,
      'hbm_per_chip_gib': spec.hbm_gib if spec else None,
      'argument_gib': mem['argument_gib'], 'output_gib': mem['output_gib'],
      'alias_gib': mem['alias_gib'], 'temp_gib': mem['temp_gib'], 'code_gib': mem['code_gib'],
      'compiler_flops': float(cost.get('flops', 0.0)),
      'compiler_flops_all_layers': counts['train']['flops'] if counts else None,
      'model_flops_per_step': model_flops,
      'estimated_step_s': est, 'estimate_source': source if est else None,
      'estimated_tokens_per_s': tokens / est if est else None,
      'mfu': estimate_mfu(model_flops, est, num_chips, peak),
      'peak_flops_per_chip': peak, 'compile_s': time.perf_counter() - t0,
      'train_compile_s': compile_s,
      'times_are': 'compile-time ESTIMATES, not measurements',
  }
  if decode:
    dmem = memory_report(dec, hbm_device)
    result['decode'] = {
        'batch': rows, 'max_len': parts.seq_len, 'fits': dmem['fits'],
        'memory_per_chip_gib': dmem['memory_gib'] * per_chip, 'argument_gib': dmem['argument_gib'],
        'temp_gib': dmem['temp_gib'], 'estimated_step_s': dest,
        'estimated_tokens_per_s': rows / dest if dest else None,
        'compiler_flops': float(dcost.get('flops', 0.0))}
  return result


DEFAULT_POINTS = (
    'rules=fsdp,mode=lora',
    'rules=fsdp,mode=full',
    'rules=fsdp_tp,tensor=4,mode=full',
    'rules=fsdp_tp,tensor=8,mode=full',
    'rules=dp,mode=lora',
    'rules=fsdp,mode=lora,remat=dots',
)


_OOM = re.compile(r'Ran out of memory.*?required for HLO temporaries \(([\d.]+)G\) exceeds '
                  r'available HBM \(([\d.]+)G\)')


def out_of_memory(message: str) -> dict[str, Any]:
  """The compiler's 'Ran out of memory on HBM' error as a result: `fits` False, the temporaries it
  needed and the HBM it had (GiB per chip); {} for any other error."""
  m = _OOM.search(message)
  if not m:
    return {}
  return {'fits': False, 'temp_gib': float(m.group(1)), 'hbm_per_chip_gib': float(m.group(2))}


def run_sweep(config, topologies: Sequence[str], points: Sequence[str], name: str = '',
              decode: bool = True, log=print, on_row=None) -> list[dict[str, Any]]:
  """Compiles every (topology, point); a point with `topology=NAME` runs on that topology only.
  Failures (a mesh that does not divide, compile errors) become rows with an `error` note instead
  of stopping the sweep."""
  rows = []
  for topology in topologies:
    devices = topology_devices(topology)
    for text in points:
      point = parse_point(text)
      if point.pop('topology', topology) != topology:
        continue  # the point names another topology
      t0 = time.perf_counter()
      try:
        cfg = apply_point(config, point)
        r = analyze_topology(cfg, topology, devices=devices, decode=decode)
      except (UserError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        r = {'topology': topology, 'rules': point.get('rules'), 'mode': point.get('mode', 'full'),
             'remat': point.get('remat'), 'mesh_text': text, 'error': first,
             'compile_s': time.perf_counter() - t0, **out_of_memory(first)}
      row = sweep_row(name, r)
      rows.append(row)
      if on_row is not None:
        on_row(rows)  # e.g. rewrite the tables, so a long sweep that is stopped keeps its rows
      log(f'[{topology}] {text}: ' + (f'error: {row["error"]}' if row['error'] else
          f'{row["memory_per_chip_gib"]:.2f} GiB/chip, fits={row["fits"]}, est. step '
          f'{fmt(row["estimated_step_s"], 3)} s, est. MFU {fmt(row["mfu"], 3)}, '
          f'{row["compile_s"]:.0f} s to compile'))
  return rows


