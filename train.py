"""Runs a training pipeline: the stages listed in the config, each under WORKDIR/<stage>/.

  python train.py --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value ...]
                  [--stages a,b] [--rerun_stages a,b]

Stages (`config.stages`, default ['train_dynamics']) run in order; a stage with a DONE marker is
skipped, so rerunning the same command after a crash or preemption continues where it stopped
(training itself resumes from its last checkpoint). A finished stage whose config differs from the
one it ran with is refused unless it is named in --rerun_stages. On a cluster every process runs
this same command; JAX's multi-host runtime is started from the environment
(JAX_COORDINATOR_ADDRESS, SLURM, Cloud TPU).

Errors (jax_vlm/core/cli.py): a mistake in the command or config is one sentence with exit code 2,
a runtime input error one sentence with exit code 1; SIGTERM saves (during training) and exits 0.
"""

import sys

from absl import flags
from ml_collections import config_flags

from jax_vlm.core import cli
from jax_vlm.core.errors import UserError
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.pipeline import stages, world_stages
from jax_vlm.pipeline.fdp_variants import TRAINING_STAGES
from jax_vlm.training import sharding, trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, configs/NAME.py[:ARG].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder; one sub-folder per stage.')
_STAGES = flags.DEFINE_list('stages', None, 'Run only these stages (default: config.stages).')
_RERUN = flags.DEFINE_list('rerun_stages', [], 'Rerun these stages even if they are done (their '
                           'old DONE marker is replaced); needed when their config changed.')


def main(argv):
  del argv
  stages.project_logging()  # first, so the distributed start-up line is shown
  # Before anything touches a device.
  sharding.maybe_initialize_distributed()
  config = _CONFIG.value
  if config is None:
    raise cli.ConfigError('No config given; pass --config configs/NAME.py.')
  if not _WORKDIR.value:
    raise cli.ConfigError('No workdir given; pass --workdir DIR for the outputs.')
  try:  # data.augment_copies > 0: the augment stage, and train_dynamics reads its records
    config = world_stages.with_augmentation(config)
  except UserError as e:
    raise cli.ConfigError(str(e)) from None
  config = resolve_paths(config, _WORKDIR.value)  # '{workdir}' templates in the config's paths
  names = _STAGES.value or list(config.get('stages', ('train_dynamics',)))
  if any(n in TRAINING_STAGES for n in names):
    try:
      trainer.validate_config(config)  # before any stage compiles anything
    except UserError as e:
      raise cli.ConfigError(str(e)) from None
  done = stages.run_stages(config, _WORKDIR.value, names, is_main=sharding.is_main_process(),
                           rerun=_RERUN.value)
  if not done:
    print('Stopped early (preempted); rerun the same command to continue.', file=sys.stderr)


if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  sys.exit(cli.run(main, flags.FLAGS, __doc__, config_flag=_CONFIG))
