"""The stage runner: a run is `config.stages`, a list of names, each writing under WORKDIR/<stage>/.

A stage is a function `fn(config, stage_dir)` registered by name in `jax_vlm.core.registry` (kind
'stage') where it is defined; the modules that define stages are imported below. The runner runs
them in order and writes `WORKDIR/<stage>/DONE` after a stage returns, so a pipeline that was killed
continues with the first stage that has no DONE marker; a finished stage is skipped. A stage that
stops early on purpose (preemption) raises `StageInterrupted`: no DONE is written and the runner
returns.

Fingerprints: before a stage runs, the resolved config it runs with is written to
`WORKDIR/<stage>/config.json` (readable) and its SHA-256 goes into the DONE marker ('fingerprint').
A done stage whose fingerprint differs from the current config's is refused (a ConfigError naming
the changed keys) unless the stage is in `rerun` (train.py / reproduce: --rerun_stages=a,b; the
config key `rerun_stages` does the same); a rerun keeps the stage folder's files (training resumes
from its checkpoints) and replaces the marker. The fingerprint covers the stage's config except:
the run's bookkeeping (`stages`, `stage_overrides` (already applied), `reproduce`,
`rerun_stages`), the display settings (`train.peak_flops`, `train.progress_bar`,
`train.tensorboard`), the sections and keys a stage does not read (READ_BY: the evaluation sections
for stages other than `evaluate`; NOT_READ_BY: everything but the world, its tokenizer and seed for
the world's data stages, and the trainer keys pretraining sets itself), and, for the stages a
caller shares between seeds (`shared`, e.g. reproduce's SHARED_STAGES), `seed`. A marker written
before such a rule still matches: a changed key the stage does not read is not a change. Paths
under the workdir are recorded as '{workdir}/...', so seeds' folders compare equal. A DONE marker
without a fingerprint (written before fingerprints existed) is accepted as it is.

Per-stage settings: `config.stage_overrides.<stage>` (if the config has it) is a dict of dotted keys
('objectives.idp_share': 0) applied to a copy of the config for that stage only.

A new stage is a function registered with `@registry.register('stage', NAME)` in a module of this
package (or of the layer that owns it), plus an import line here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
from typing import Any, Callable, Iterable

import jax
import ml_collections

from jax_vlm.core import cli, registry, settings
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

_COMPILES = {'programs': 0, 'seconds': 0.0, 'listening': False}


def _count_compile(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event == '/jax/core/compile/backend_compile_duration':
    _COMPILES['programs'] += 1
    _COMPILES['seconds'] += duration


def compile_stats() -> tuple[int, float]:
  """XLA programs compiled by this process since the first stage started, and the seconds their
  backend compiles took (jax.monitoring); a program read from jax's persistent compilation cache
  counts too, with the seconds its read took."""
  if not _COMPILES['listening']:
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    _COMPILES['listening'] = True
  return _COMPILES['programs'], _COMPILES['seconds']


def cpu_seconds(children: bool = False) -> float:
  """CPU seconds (user + system) this process has used; with `children`, plus those of its child
  processes that have ended (a reproduction's worker processes)."""
  who = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if children else [])
  return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


CONFIG_FILE = 'config.json'
NOT_FINGERPRINTED = ('stages', 'stage_overrides', 'reproduce', 'rerun_stages')
# Keys that change what a run shows, not what it computes.
NOT_FINGERPRINTED_KEYS = (('train', 'peak_flops'), ('train', 'progress_bar'),
                          ('train', 'tensorboard'))
# Keys added after runs were made: left out of the fingerprint at the value they had implicitly
# before they existed (not necessarily today's default), so the DONE markers of those runs still
# match a config that asks for that value.
OMITTED_AT_DEFAULT = ((('data', 'train_examples'), 0), (('pretrain', 'text_loss_weight'), 1.0),
                      (('pretrain', 'continue_steps'), 0), (('pretrain', 'continue_documents'), []),
                      (('pretrain', 'region_changed_cells'), 1),
                      (('pretrain', 'continue_cycles'), 1), (('data', 'augment_copies'), 0),
                      (('pretrain', 'restarts'), 0), (('pretrain', 'restart_below'), 0.0),
                      (('pretrain', 'check_step'), 0), (('pretrain', 'check_below'), 0.0),
                      (('data', 'augment_transforms'), ['mirror', 'shift', 'colors']))
# Sections only these stages read; other stages' fingerprints leave them out.
READ_BY = {'world_eval': ('evaluate',), 'eval': ('evaluate',)}
_WORLD_DATA = ('build_data', 'train_tokenizer', 'tokenize')
# Sections ('train') or keys ('train.num_steps') these stages do not read, so their fingerprints
# leave them out and changing them reuses the stage:
# - the world's data stages read only world, vqgan, vq_train, checkpoint, tokenize and seed (a new
#   base, model or trainer over the same world reuses the world, its tokenizer and its tokens);
# - pretraining sets these train / objectives / data keys itself from the pretrain section
#   (world_stages.pretraining_config; tests/test_reproduce.py checks the list against it).
NOT_READ_BY = {
    **{s: _WORLD_DATA for s in ('pretrain', 'data', 'model', 'train', 'objectives', 'mesh',
                                'vocab', 'sampler', 'verifier', 'bootstrap')},
    **{k: ('pretrain',) for k in ('train.num_steps', 'train.learning_rate', 'train.warmup_steps',
                                  'train.global_batch_size', 'train.checkpoint_every',
                                  'train.init_from', 'objectives.idp_loss_weight',
                                  'objectives.fdp_loss_weight', 'data.max_seq_len',
                                  'data.length_buckets', 'data.augment_copies',
                                  'data.augment_transforms')},
}


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


def _plain(value: Any, workdir: str) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return {str(k): _plain(v, workdir) for k, v in dict(value).items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, workdir) for v in value]
  if isinstance(value, str) and workdir and value.startswith(workdir):
    return '{workdir}' + value[len(workdir):]
  if isinstance(value, float) and value != value:
    return 'nan'
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def _unread(name: str) -> set[str]:
  """The sections and 'section.key's stage `name` does not read (READ_BY, NOT_READ_BY)."""
  return ({k for k, users in READ_BY.items() if name not in users}
          | {k for k, readers in NOT_READ_BY.items() if name in readers})


def fingerprint_config(config: ml_collections.ConfigDict, name: str, workdir: str,
                       shared: bool = False) -> dict:
  """The part of stage `name`'s config its fingerprint covers, as plain JSON values."""
  skip = set(NOT_FINGERPRINTED) | _unread(name)
  if shared:
    skip.add('seed')
  data = _plain({k: v for k, v in config.items() if k not in skip}, os.path.abspath(workdir))
  unread_keys = [tuple(k.split('.', 1)) for k in skip if '.' in k]
  for section, key in (*NOT_FINGERPRINTED_KEYS, *unread_keys):
    if isinstance(data.get(section), dict):
      data[section].pop(key, None)
  for (section, key), default in OMITTED_AT_DEFAULT:
    if isinstance(data.get(section), dict) and data[section].get(key, default) == default:
      data[section].pop(key, None)
  return data


def fingerprint(covered: dict) -> str:
  return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def _changed_keys(old: Any, new: Any, prefix: str = '') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _changed_keys(old.get(k, '<absent>'), new.get(k, '<absent>'), f'{prefix}{k}.')
    return out
  return [] if old == new else [prefix.rstrip('.')]


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def check_fingerprint(stage_dir: str, name: str, covered: dict) -> None:
  """ConfigError when the done stage in `stage_dir` ran with a different config."""
  marker = _read_json(os.path.join(stage_dir, DONE))
  old_hash = marker.get('fingerprint') if isinstance(marker, dict) else None
  if not old_hash or old_hash == fingerprint(covered):
    return
  old = _read_json(os.path.join(stage_dir, CONFIG_FILE))
  keys = _changed_keys(old, covered) if isinstance(old, dict) else []
  # A section or key the stage does not read (its marker predates READ_BY / NOT_READ_BY's entry)
  # is not a change; anything else is, a key left out at its default (OMITTED_AT_DEFAULT) too.
  unread = _unread(name)
  read = [k for k in keys if k not in unread and k.split('.')[0] not in unread]
  if keys and not read:
    return
  keys = read
  what = (f'key(s) {", ".join(keys[:8])}{" ..." if len(keys) > 8 else ""}' if keys
          else f'config (its {CONFIG_FILE} is missing)')
  raise cli.ConfigError(
      f'Stage {name} in {stage_dir} is done but ran with a different {what}; rerun it with '
      f'--rerun_stages={name} (its files are kept), use another --workdir, or restore the old '
      'values.')


def _write_json_atomic(path: str, data: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def run_stages(config: ml_collections.ConfigDict, workdir: str,
               names: list[str] | tuple[str, ...] | None = None, is_main: bool = True,
               rerun: Iterable[str] = (), shared: Iterable[str] = ()) -> bool:
  """Runs the stages (default `config.stages`) in order; True when all are done.

  Unknown stage names are reported before any stage runs. `rerun`: stages run again even when
  done (with `config.rerun_stages`). `shared`: stages whose fingerprint leaves `seed` out.
  """
  names = list(names if names is not None else config.get('stages', ('train_dynamics',)))
  require(names, 'config.stages is empty; list the stages to run, e.g. ["train_dynamics"].')
  fns = [get(n) for n in names]  # unknown names fail here, before any work
  rerun = set(rerun) | set(config.get('rerun_stages', None) or ())
  unknown = sorted(rerun - set(registered()))
  if unknown:
    raise cli.ConfigError(f'--rerun_stages names unknown stage(s) {", ".join(unknown)}; use '
                          f'{", ".join(names)}.')
  shared = set(shared)
  for name, fn in zip(names, fns):
    stage_dir = os.path.join(workdir, name)
    cfg = stage_config(config, name)
    covered = fingerprint_config(cfg, name, workdir, shared=name in shared)
    if is_done(workdir, name) and name not in rerun:
      check_fingerprint(stage_dir, name, covered)
      logging.info('Stage %s is done (%s); skipping it.', name, stage_dir)
      continue
    os.makedirs(stage_dir, exist_ok=True)
    if is_main:
      if is_done(workdir, name):  # a rerun: the old marker goes first, so a crash reruns it
        os.replace(os.path.join(stage_dir, DONE), os.path.join(stage_dir, DONE + '.previous'))
      _write_json_atomic(os.path.join(stage_dir, CONFIG_FILE), covered)
    logging.info('Stage %s: running in %s.', name, stage_dir)
    start, cpu, (compiles, compiling) = time.time(), cpu_seconds(), compile_stats()
    try:
      fn(cfg, stage_dir)
    except StageInterrupted as e:
      logging.warning('Stage %s interrupted (%s); rerun the same command to continue.', name, e)
      return False
    if is_main:
      # Written last, atomically: a stage killed before this point runs again.
      tmp = os.path.join(stage_dir, DONE + '.tmp')
      programs, seconds = compile_stats()
      with open(tmp, 'w') as f:
        json.dump({'stage': name, 'seconds': round(time.time() - start, 1),
                   'cpu_seconds': round(cpu_seconds() - cpu, 1),
                   'compiles': programs - compiles,
                   'compile_seconds': round(seconds - compiling, 1),
                   'fingerprint': fingerprint(covered), 'config': CONFIG_FILE}, f)
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
