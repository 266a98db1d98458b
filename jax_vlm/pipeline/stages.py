"""The stage runner: a run is `config.stages`, a list of names, each writing under WORKDIR/<stage>/.

A stage is a function `fn(config, stage_dir)` registered by name. The runner runs them in order and
writes `WORKDIR/<stage>/DONE` after a stage returns, so a pipeline that was killed continues with
the first stage that has no DONE marker; a finished stage is skipped. A stage that stops early on
purpose (preemption) raises `StageInterrupted`: no DONE is written and the runner returns.

Per-stage settings: `config.stage_overrides.<stage>` (if the config has it) is a dict of dotted keys
('objectives.idp_share': 0) applied to a copy of the config for that stage only.

Register a stage where it is defined:

    from jax_vlm.pipeline import stages

    @stages.register('build_data')
    def build_data(config, stage_dir): ...

and add its module to `STAGE_MODULES` below so the runner imports it (lazily) on first use.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from typing import Callable

import ml_collections

from jax_vlm.errors import require

StageFn = Callable[[ml_collections.ConfigDict, str], None]

_REGISTRY: dict[str, StageFn] = {}
# Modules that register stages when imported; imported on the first lookup.
STAGE_MODULES = ['jax_vlm.training.trainer', 'jax_vlm.method.bootstrap', 'jax_vlm.pipeline.world_stages',
                 'jax_vlm.evaluation.world']
DONE = 'DONE'


class StageInterrupted(Exception):
  """A stage stopped before finishing on purpose (e.g. preemption); rerun to continue it."""


def register(name: str) -> Callable[[StageFn], StageFn]:
  """Decorator: registers `fn(config, stage_dir)` as stage `name`."""
  def wrap(fn: StageFn) -> StageFn:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f'stage {name!r} is registered twice')
    _REGISTRY[name] = fn
    return fn
  return wrap


def _load_modules() -> None:
  for module in STAGE_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:  # a missing dependency inside the module is a real error
        raise
      logging.debug('stage module %s is not there (yet)', module)


def registered() -> list[str]:
  _load_modules()
  return sorted(_REGISTRY)


def get(name: str) -> StageFn:
  _load_modules()
  require(name in _REGISTRY,
          f'stage {name!r} is not registered; use one of {", ".join(sorted(_REGISTRY))}.')
  return _REGISTRY[name]


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` with `config.stage_overrides[name]` (dotted keys) applied."""
  overrides = config.get('stage_overrides', None)
  if not overrides or name not in overrides:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in dict(overrides[name]).items():
    *parents, leaf = key.split('.')
    node = out
    for p in parents:
      require(p in node, f'stage_overrides.{name} key {key!r} does not exist in the config; fix '
              'the key.')
      node = node[p]
    require(leaf in node, f'stage_overrides.{name} key {key!r} does not exist in the config; fix '
            'the key.')
    node[leaf] = value
  return out


def section_with_defaults(defaults: dict, given, name: str) -> ml_collections.ConfigDict:
  """`config.<name>` (`given`, may be None) on top of `defaults`; unknown keys are a UserError."""
  out = ml_collections.ConfigDict(dict(defaults))
  if given:
    unknown = sorted(set(given.keys()) - set(defaults))
    require(not unknown, f'config.{name} has unknown key(s) {", ".join(unknown)}; use '
            f'{", ".join(sorted(defaults))}.')
    for k in given.keys():
      out[k] = given[k]
  return out


def is_done(workdir: str, name: str) -> bool:
  return os.path.exists(os.path.join(workdir, name, DONE))


def run_stages(config: ml_collections.ConfigDict, workdir: str,
               names: list[str] | tuple[str, ...] | None = None, is_main: bool = True) -> bool:
  """Runs the stages (default `config.stages`) in order; True when all are done.

  Unknown stage names are reported before any stage runs.
  """
  names = list(names if names is not None else config.get('stages', ('train_dynamics',)))
  require(names, 'config.stages is empty; list the stages to run, e.g. ["train_dynamics"].')
  fns = [get(n) for n in names]  # unknown names fail here, before any work
  for name, fn in zip(names, fns):
    stage_dir = os.path.join(workdir, name)
    if is_done(workdir, name):
      logging.info('Stage %s is done (%s); skipping it.', name, stage_dir)
      continue
    os.makedirs(stage_dir, exist_ok=True)
    logging.info('Stage %s: running in %s.', name, stage_dir)
    start = time.time()
    try:
      fn(stage_config(config, name), stage_dir)
    except StageInterrupted as e:
      logging.warning('Stage %s interrupted (%s); rerun the same command to continue.', name, e)
      return False
    if is_main:
      # Written last, atomically: a stage killed before this point runs again.
      tmp = os.path.join(stage_dir, DONE + '.tmp')
      with open(tmp, 'w') as f:
        json.dump({'stage': name, 'seconds': round(time.time() - start, 1)}, f)
      os.replace(tmp, os.path.join(stage_dir, DONE))
  return True


def project_logging() -> None:
  """INFO from this project's modules, WARNING and up from libraries (Orbax logs every save).

  For the command-line programs (train.py, reproduce): a person follows the run's own messages.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  own = (os.path.join(root, 'jax_vlm'), os.path.join(root, 'data'), os.path.join(root, 'train.py'))
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.pathname.startswith(own))
  logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
