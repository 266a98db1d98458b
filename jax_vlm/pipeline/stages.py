"""The stage runner: a run is `config.stages`, a list of names, each writing under WORKDIR/<stage>/.

A stage is a function `fn(config, stage_dir)` registered by name in `jax_vlm.core.registry` (kind
'stage') where it is defined; the modules that define stages are imported below. The runner runs
them in order and writes `WORKDIR/<stage>/DONE` after a stage returns, so a pipeline that was killed
continues with the first stage that has no DONE marker; a finished stage is skipped. A stage that
stops early on purpose (preemption) raises `StageInterrupted`: no DONE is written and the runner
returns.

Per-stage settings: `config.stage_overrides.<stage>` (if the config has it) is a dict of dotted keys
('objectives.idp_share': 0) applied to a copy of the config for that stage only.

A new stage is a function registered with `@registry.register('stage', NAME)` in a module of this
package (or of the layer that owns it), plus an import line here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import ml_collections

from jax_vlm.core import registry, settings
from jax_vlm.core.errors import StageInterrupted, require
from jax_vlm.evaluation import world as world_evaluation  # noqa: F401  (evaluate)
from jax_vlm.method import bootstrap  # noqa: F401  (bootstrap)
from jax_vlm.pipeline import (
  fdp_variants,  # noqa: F401  (train_ft, train_fdm, ...)
  world_stages,  # noqa: F401  (build_data, train_tokenizer, tokenize)
)
from jax_vlm.training import trainer  # noqa: F401  (train_dynamics, train_fdp)

StageFn = Callable[[ml_collections.ConfigDict, str], None]
DONE = 'DONE'


def registered() -> list[str]:
  return registry.names('stage')


def get(name: str) -> StageFn:
  return registry.get('stage', name)


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` with `config.stage_overrides[name]` (dotted keys) applied."""
  overrides = config.get('stage_overrides', None)
  if not overrides or name not in overrides:
    return config
  return settings.with_overrides(config, overrides[name], f'stage_overrides.{name}')


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
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  own = (os.path.join(root, 'jax_vlm'), os.path.join(root, 'data'), os.path.join(root, 'train.py'))
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.pathname.startswith(own))
  logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
