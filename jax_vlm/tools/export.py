"""Exports trained weights: params only, LoRA merged into the base kernels, as Orbax and/or HF.

  python -m jax_vlm.export --config configs/NAME.py[:ARG] --workdir DIR --out OUT \
      [--format orbax|hf|both] [--stage NAME] [--config.key=value ...]

DIR is train.py's workdir (the stage folder is `--stage`, default the last training stage in
config.stages) or a stage folder itself (it has `checkpoints/`). The newest readable checkpoint is
used. `--format orbax` writes an Orbax params checkpoint at OUT, `hf` a transformers directory at
OUT (via jax_vlm.weights.hf.save_pretrained), `both` writes OUT/orbax and OUT/hf.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jax_vlm.core.errors import UserError, require
from jax_vlm.training import checkpointing, sharding, trainer
from jax_vlm.weights import hf

FORMATS = ('orbax', 'hf', 'both')
TRAIN_STAGES = ('train_dynamics', 'train_fdp')


def find_stage_dir(config, workdir: str, stage: str | None = None) -> str:
  """The folder holding `checkpoints/`: `workdir` itself, or `workdir/<stage>`."""
  if stage is None and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return workdir
  if stage is None:
    trained = [s for s in config.get('stages', ('train_dynamics',)) if s in TRAIN_STAGES]
    require(trained, 'config.stages has no training stage; pass --stage NAME.')
    stage = trained[-1]
  stage_dir = os.path.join(workdir, stage)
  require(os.path.isdir(os.path.join(stage_dir, 'checkpoints')),
          f'{stage_dir} has no checkpoints/ folder; check --workdir and --stage.')
  return stage_dir


def export(config, workdir: str, out: str, fmt: str = 'both', stage: str | None = None) -> dict:
  """Writes the merged params of the newest checkpoint; returns {'step', 'orbax', 'hf'} paths."""
  require(fmt in FORMATS, f'--format={fmt!r} is unknown; use one of {", ".join(FORMATS)}.')
  stage_dir = find_stage_dir(config, os.path.abspath(workdir), stage)
  t = trainer.Trainer(config, stage_dir)
  step, params = t.restore_params()
  params = trainer.merge_lora_params(params, t.model_config)
  # The exported model is the base architecture: no adapters left.
  base_config = t.model_config.replace(lora_rank=0)
  out = os.path.abspath(out)
  paths = {'step': step, 'orbax': None, 'hf': None}
  if fmt in ('orbax', 'both'):
    paths['orbax'] = out if fmt == 'orbax' else os.path.join(out, 'orbax')
    checkpointing.save_params(paths['orbax'], params)
  if fmt in ('hf', 'both'):
    import jax

    paths['hf'] = out if fmt == 'hf' else os.path.join(out, 'hf')
    host_params = jax.tree.map(lambda x: jax.device_get(x), params)
    if jax.process_index() == 0:
      hf.save_pretrained(base_config, host_params, paths['hf'])
  return paths


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, configs/NAME.py[:ARG].')
_WORKDIR = flags.DEFINE_string('workdir', None, "train.py's workdir, or a stage folder.")
_OUT = flags.DEFINE_string('out', None, 'Where to write the exported model.')
_FORMAT = flags.DEFINE_enum('format', 'both', list(FORMATS), 'orbax, hf (transformers) or both.')
_STAGE = flags.DEFINE_string('stage', None, 'Stage folder under --workdir (default: last training '
                             'stage in config.stages).')


def main(argv):
  del argv
  sharding.maybe_initialize_distributed()
  try:
    if _CONFIG.value is None:
      raise UserError('No config given; pass --config configs/NAME.py.')
    if not _WORKDIR.value or not _OUT.value:
      raise UserError('Pass --workdir DIR (where train.py wrote) and --out OUT.')
    paths = export(_CONFIG.value, _WORKDIR.value, _OUT.value, _FORMAT.value, _STAGE.value)
  except UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'Exported step {paths["step"]}: ' + ', '.join(
      f'{k}={v}' for k, v in paths.items() if k != 'step' and v))


if __name__ == '__main__':
  app.run(main)
