"""The training loop: mesh, sharded state, batches, checkpoints, preemption, metrics.

`Trainer(config, workdir).run()` trains `config.train.num_steps` optimizer updates of the IDP/FDP
objectives on the data set the config names, writing into `workdir`:

  workdir/checkpoints/<step>/   Orbax: train state (params, optimizer state, step, RNG) + data state
  workdir/metrics.jsonl         every logged metric, one JSON object per line
  workdir/tensorboard/          the same as TensorBoard events
  workdir/params/               final params (Orbax, LoRA adapters merged), what later stages read

A restarted run continues from the newest readable checkpoint with the same data order, so it ends
with the same params and logged losses as an uninterrupted one. SIGTERM (preemption) finishes the
current step, saves, and returns with status 'preempted'. A non-finite loss stops the run with a
UserError naming the step before anything is saved, so the last good checkpoint stays intact.
Config mistakes (unknown keys, impossible meshes, batch sizes) are reported before compilation.

`train_dynamics_stage` / `train_fdp_stage` are registered stages (pipeline/stages.py runs them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jax_vlm.core import registry, settings
from jax_vlm.core.errors import StageInterrupted, UserError, require
from jax_vlm.input.sources import make_batch_source
from jax_vlm.models import lora
from jax_vlm.models.config import TransformerConfig
from jax_vlm.training import checkpointing, sharding
from jax_vlm.training import train_step as ts
from jax_vlm.training.config import validate_config
from jax_vlm.training.metrics_writer import MetricsWriter
from jax_vlm.training.step_builder import build_train_step
from jax_vlm.weights import hf


class NonFiniteLoss(UserError):
  """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


# ------------------------------------------------------------------------------------------------
# The trainer.


def _merge_loaded(fresh: Any, loaded: Any) -> Any:
  """`fresh` with every leaf that `loaded` (a nested dict) also has replaced by the loaded one."""
  if isinstance(fresh, dict):
    return {k: _merge_loaded(v, loaded[k]) if isinstance(loaded, dict) and k in loaded else v
            for k, v in fresh.items()}
  return loaded


def _dict_paths(tree: Any, prefix: tuple = ()) -> set[tuple]:
  if isinstance(tree, dict):
    out = set()
    for k, v in tree.items():
      out |= _dict_paths(v, prefix + (str(k),))
    return out
  return {prefix}


def leaf_difference(fresh: Any, loaded: Any) -> tuple[list[str], list[str]]:
  """(missing, extra): leaf paths ('a/b/kernel') of the model that `loaded` lacks (LoRA adapters
  aside: they are made fresh) and of `loaded` that the model lacks."""
  want, have = _dict_paths(fresh), _dict_paths(loaded)
  missing = sorted('/'.join(p) for p in want - have if not (p and p[-1] in lora.LORA_NAMES))
  extra = sorted('/'.join(p) for p in have - want)
  return missing, extra


class Trainer:
  """Owns the mesh, the compiled step and the loop; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, batch_source=None,
               devices=None):
    validate_config(config, None if devices is None else len(devices))
    self.config = config
    self.workdir = os.path.abspath(workdir)
    step = self._step = build_train_step(config, devices)
    self.mesh, self.rules = step.mesh, step.rules
    self.model_config, self.model = step.model_config, step.model
    self.tx, self.schedule, self.mask = step.tx, step.schedule, step.mask
    self.abstract_state, self.state_shardings = step.abstract_state, step.state_shardings
    self.batch_sharding = step.batch_sharding
    self._init_fn, self._step_fn = step.init_fn, step.step_fn
    self.accum_steps = int(config.train.grad_accum_steps)
    self.local_batch_size = int(config.train.global_batch_size) // jax.process_count()
    self.batch_source = batch_source
    self._preempted = False

  def _context(self):
    """Mesh + logical rules, so the model's activation constraints resolve while tracing."""
    return self._step.context()

  # --- state ---------------------------------------------------------------------------------
  def init_state(self) -> ts.TrainState:
    """Fresh state, created already sharded; params from `train.init_from` / model_dir if set."""
    with self._context():
      state = self._init_fn(jax.random.PRNGKey(int(self.config.seed)))
    source = self._initial_params_path()
    if source:
      state = state.replace(params=self._load_params(source, state.params))
    return state

  def _initial_params_path(self) -> str:
    init_from = self.config.train.init_from
    if init_from:
      stage_params = os.path.join(os.path.dirname(self.workdir), init_from, 'params')
      if os.path.isdir(stage_params):
        return stage_params
      require(os.path.isdir(init_from), f'train.init_from={init_from!r} is neither a stage with '
              'saved params nor a directory; run that stage first or fix the path.')
      return init_from
    return self.config.checkpoint.model_dir

  def _load_params(self, path: str, fresh: Any) -> Any:
    """Loads base weights (transformers dir or Orbax params); LoRA adapters stay freshly made."""
    shardings = self.state_shardings.params
    if os.path.exists(os.path.join(path, 'config.json')):
      _, loaded = hf.from_pretrained(path, scan_layers=self.model_config.scan_layers)
    else:
      checkpointing.check_model_record(path, self.model_config)  # family, vocabulary, shapes
      loaded = checkpointing.load_params(path)
    missing, extra = leaf_difference(fresh, loaded)
    if missing or extra:
      what = '; '.join(f'{len(names)} {kind} leaf/leaves (e.g. {names[0]})'
                       for kind, names in (('missing', missing), ('extra', extra)) if names)
      require(bool(self.config.train.get('init_partial', False)),
              f'The params in {path} do not match the model: {what}; check config.model against '
              'them, or pass --config.train.init_partial=true to keep the fresh values of missing '
              'leaves and drop extra ones.')
      logging.warning('train.init_partial: %s in %s; missing leaves keep their fresh values, '
                      'extra ones are dropped.', what, path)
    merged = _merge_loaded(fresh, loaded)
    flat_fresh, _ = jax.tree_util.tree_flatten_with_path(fresh)
    for (path_, a), b in zip(flat_fresh, jax.tree.leaves(merged)):
      require(tuple(a.shape) == tuple(np.shape(b)),
              f'params in {path} have shape {np.shape(b)} at {jax.tree_util.keystr(path_)} but the '
              f'model config needs {tuple(a.shape)}; set config.model to the checkpoint\'s sizes.')
    # One leaf at a time, straight onto its sharding: no full copy of the model on one device.
    return jax.tree.map(lambda x, f, sh: jax.device_put(np.asarray(x).astype(f.dtype), sh),
                        merged, fresh, shardings)

  def restore_params(self) -> tuple[int, Any]:
    """(step, params) of the newest readable training checkpoint in this workdir, sharded."""
    ckpts = checkpointing.TrainCheckpoints(os.path.join(self.workdir, 'checkpoints'),
                                           keep=int(self.config.train.keep_checkpoints))
    try:
      abstract = checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)
      restored = ckpts.restore(abstract)
    finally:
      ckpts.close()
    require(restored is not None, f'no training checkpoint in {ckpts.directory}; train first or '
            'pass the stage folder that has one.')
    return restored[0], restored[1].params

  # --- loop ----------------------------------------------------------------------------------
  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._preempted = True

  def _should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All processes must agree on the step to stop at.
      from jax.experimental import multihost_utils
      return self._preempted or multihost_utils.reached_preemption_sync_point(step)
    return self._preempted

  def run(self, until: int | None = None) -> dict[str, Any]:
    """Trains to `num_steps`; returns {'status': 'done' | 'preempted' | 'paused', 'step',
    'metrics'}. `until`: stop after that step (saved) with status 'paused', the schedule still
    `num_steps` long; the next run() resumes from that checkpoint and ends with the params of an
    unpaused run. A run restored at or past `until` trains no step before it pauses."""
    cfg = self.config.train
    num_steps = int(cfg.num_steps)
    stop_at = num_steps if until is None else min(int(until), num_steps)
    os.makedirs(self.workdir, exist_ok=True)
    ckpts = checkpointing.TrainCheckpoints(os.path.join(self.workdir, 'checkpoints'),
                                           keep=int(cfg.keep_checkpoints))
    source = self.batch_source or make_batch_source(self.config, self.local_batch_size)
    abstract = checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)
    restored = ckpts.restore(abstract)
    if restored is None:
      state, start = self.init_state(), 0
    else:
      start, state, data_state = restored
      source.set_state(data_state)
      logging.info('Restored step %d from %s.', start, ckpts.directory)
    last_saved = start if restored is not None else None

    writer = MetricsWriter(self.workdir, num_steps, start, progress_bar=bool(cfg.progress_bar),
                           tensorboard=bool(cfg.tensorboard))
    if restored is not None:
      writer.message(f'Resuming from step {start} ({ckpts.directory}).')
    old_handler = None
    if cfg.save_on_preemption:
      with contextlib.suppress(ValueError):  # not the main thread: no signal handling
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    seq_len = None
    pending: list[tuple[int, dict]] = []
    last_metrics: dict[str, Any] = {}
    timer = (time.perf_counter(), start)
    status = 'done'
    step = start
    try:
      while step < stop_at:
        batch = sharding.global_batch(next(source), self.mesh)
        seq_len = batch['token_ids'].shape[1]
        with self._context():
          state, metrics = self._step_fn(state, batch)
        step += 1
        pending.append((step, metrics))
        if step == start + 1:
          jax.block_until_ready(metrics)  # keep compilation out of the throughput numbers
          timer = (time.perf_counter(), step)
        stop = self._should_stop(step)
        save = step % int(cfg.checkpoint_every) == 0 or step in (num_steps, stop_at) or stop
        if save or step % int(cfg.log_every) == 0:
          last_metrics = self._flush(pending, writer, timer, seq_len, last_saved, ckpts)
          if step % int(cfg.log_every) == 0:
            timer = (time.perf_counter(), step)
          pending = []
        writer.advance()
        if save:
          ckpts.save(step, state, source.get_state())
          last_saved = step
        if stop:
          status = 'preempted'
          writer.message(f'Preempted: saved step {step} in {ckpts.directory}; rerun to continue.')
          break
      ckpts.wait()
      if status == 'done' and step < num_steps:
        status = 'paused'
      if status == 'done':
        self.final_params = state.params
    finally:
      ckpts.close()
      writer.close()
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    self.final_state = state
    return {'status': status, 'step': step, 'metrics': last_metrics}

  def _flush(self, pending, writer, timer, seq_len, last_saved, ckpts) -> dict[str, Any]:
    """Fetches pending metrics, stops on a non-finite loss, logs the last one."""
    fetched = [(s, jax.device_get(m)) for s, m in pending]
    for s, m in fetched:
      # The loss and gradient norm of the step and the params it produced (what a save would hold).
      bad = [(what, f'{float(m[k])}') for k, what in (('loss', 'The loss'),
                                                         ('grad_norm', 'The gradient norm'))
             if k in m and not math.isfinite(float(m[k]))]
      if 'params_finite' in m and not bool(m['params_finite']):
        bad.append(('The updated params', 'NaN or inf values'))
      if bad:
        kept = (f'the last good checkpoint is step {last_saved} in {ckpts.directory}'
                if last_saved is not None else 'no checkpoint was written')
        raise NonFiniteLoss(f'{bad[0][0]} became non-finite ({bad[0][1]}) at step {s}; '
                            f'{kept}; lower train.learning_rate or check the data.')
    step, m = fetched[-1]
    out = {}
    for k, v in m.items():
      v = float(v)
      if k.endswith('_tokens') or k == 'params_finite':
        continue
      task = k.split('_')[0]
      if task in ts.OBJECTIVES and float(m[f'{task}_tokens']) == 0:
        continue  # this objective had no tokens in the step: nothing to report
      out[k] = v
    elapsed = time.perf_counter() - timer[0]
    steps_done = step - timer[1]
    if steps_done > 0 and elapsed > 0:
      tokens = steps_done * int(self.config.train.global_batch_size) * seq_len
      out['tokens_per_s'] = tokens / elapsed
      out['steps_per_s'] = steps_done / elapsed
      peak = float(self.config.train.peak_flops)
      if peak > 0:
        flops = self.model_config.flops_per_token(seq_len) * out['tokens_per_s']
        out['mfu'] = flops / (peak * jax.device_count())
    writer.write(step, out)
    return out


# ------------------------------------------------------------------------------------------------
# Stage entry points.


@registry.register('stage', 'train_dynamics')
def train_dynamics_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Trains IDP + FDP as the config says, then writes `stage_dir/params` (LoRA merged).

  Raises StageInterrupted when preempted, so the stage is not marked done.
  """
  trainer = Trainer(config, stage_dir)
  result = trainer.run()
  if result['status'] != 'done':
    raise StageInterrupted(f'training stopped at step {result["step"]}')
  params = trainer.final_params
  if config.train.mode == 'lora':
    params = merge_lora_params(params, trainer.model_config)
  # Every process takes part (Orbax writes collectively; the primary process writes metadata).
  checkpointing.save_params(os.path.join(stage_dir, 'params'), params,
                            trainer.model_config.replace(lora_rank=0))


# What train_fdp changes unless config.stage_overrides.train_fdp says otherwise.
TRAIN_FDP_DEFAULTS = {'objectives.idp_share': 0, 'objectives.fdp_share': 1}


@registry.register('stage', 'train_fdp')
def train_fdp_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """FDP-only training (e.g. on IDP-bootstrapped data): train_dynamics with FDP objective settings.

  The data set and other settings come from `config.stage_overrides.train_fdp`.
  """
  given = config.get('stage_overrides', {}).get('train_fdp', {}) or {}
  config = settings.with_overrides(config, TRAIN_FDP_DEFAULTS, 'TRAIN_FDP_DEFAULTS', keep=given)
  train_dynamics_stage(config, stage_dir)


def merge_lora_params(params: Any, model_config: TransformerConfig) -> Any:
  """Base weights with the adapters folded in (see jax_vlm/models/lora.py)."""
  return lora.merge_lora(params, model_config)
