"""Runs a training pipeline: the stages listed in the config, each under WORKDIR/<stage>/.

  python train.py --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value ...]

Stages (`config.stages`, default ['train_dynamics']) run in order; a stage with a DONE marker is
skipped, so rerunning the same command after a crash or preemption continues where it stopped
(training itself resumes from its last checkpoint). On a cluster every process runs this same
command; JAX's multi-host runtime is started from the environment (JAX_COORDINATOR_ADDRESS, SLURM,
Cloud TPU). A problem with the user's input stops the run with one sentence (exit code 1).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from jax_vlm.core.errors import UserError
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.pipeline import stages
from jax_vlm.training import sharding, trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, configs/NAME.py[:ARG].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder; one sub-folder per stage.')
_STAGES = flags.DEFINE_list('stages', None, 'Run only these stages (default: config.stages).')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with config-override mistakes (unknown keys, bad values) as one sentence."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    text = str(e.args[0] if e.args else e).strip() or type(e).__name__
    text = text.replace("\\'", "'").replace('\\n', '\n')  # absl nests the KeyError's repr
    lines = text.splitlines()
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    names = {a: a.split('=')[0][2:] for a in overrides}
    bad = [a for a, n in names.items() if f"'{n}'" in text or f"'{n.split('.')[-1]}'" in text]
    where = ', '.join(bad or overrides) or 'the flags'
    if isinstance(e, (KeyError, AttributeError, flags.UnrecognizedFlagError)):
      hint = next((ln.strip().rstrip('\'"') for ln in lines if 'Did you mean' in ln), '')
      _fail(f'{where} names a config key that does not exist{f" ({hint})" if hint else ""}; '
            'check the spelling against configs/base.py.')
    _fail(f'{where} could not be applied to the config ({lines[0]}); check the key names against '
          'configs/base.py and the value types.')


def main(argv):
  del argv
  # Before anything touches a device.
  sharding.maybe_initialize_distributed()
  stages.project_logging()

  try:
    config = _CONFIG.value
    if config is None:
      raise UserError('No config given; pass --config configs/NAME.py.')
    if not _WORKDIR.value:
      raise UserError('No workdir given; pass --workdir DIR for the outputs.')
    config = resolve_paths(config, _WORKDIR.value)  # '{workdir}' templates in the config's paths
    names = _STAGES.value or list(config.get('stages', ('train_dynamics',)))
    if any(n in ('train_dynamics', 'train_fdp') for n in names):
      trainer.validate_config(config)  # before any stage compiles anything
    done = stages.run_stages(config, _WORKDIR.value, names, is_main=sharding.is_main_process())
  except UserError as e:
    _fail(str(e))
  if not done:
    print('Stopped early (preempted); rerun the same command to continue.', file=sys.stderr)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
