"""Exports trained weights: params only, LoRA merged into the base kernels, as Orbax and/or HF.

  python -m jax_vlm.export --config configs/NAME.py[:ARG] --workdir DIR --out OUT \
      [--format orbax|hf|both] [--stage NAME] [--config.key=value ...]

DIR is train.py's workdir (the stage folder is `--stage`, default the last training stage in
config.stages) or a stage folder itself (it has `checkpoints/`). The newest readable checkpoint is
used. `--format orbax` writes an Orbax params checkpoint at OUT, `hf` a transformers directory at
OUT (via jax_vlm.weights.hf.save_pretrained), `both` writes OUT/orbax and OUT/hf.

The transformers directory loads with ChameleonForConditionalGeneration / GemmaForCausalLM
`from_pretrained` for both families: config.json carries what transformers needs beyond the sizes
(Chameleon's `vocabulary_map` from config.vocab's tokenizer, its `vq_config` from config.vqgan,
the special token ids), the tokenizer files are copied next to the weights, and with
config.checkpoint.vqgan_dir set the VQGAN's encoder goes in as `model.vqmodel.*`.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import flags
from ml_collections import config_flags

from jax_vlm.core import cli
from jax_vlm.core.errors import require
from jax_vlm.pipeline.fdp_variants import TRAINING_STAGES
from jax_vlm.tokens import vocab as vocab_lib
from jax_vlm.training import checkpointing, sharding, trainer
from jax_vlm.weights import hf, vqgan_files
from jax_vlm.weights import vqgan as vqgan_weights

FORMATS = ('orbax', 'hf', 'both')


def find_stage_dir(config, workdir: str, stage: str | None = None) -> str:
  """The folder holding `checkpoints/`: `workdir` itself, or `workdir/<stage>`."""
  if stage is None and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return workdir
  if stage is None:
    trained = [s for s in config.get('stages', ('train_dynamics',)) if s in TRAINING_STAGES]
    require(trained, 'config.stages has no training stage; pass --stage NAME.')
    stage = trained[-1]
  stage_dir = os.path.join(workdir, stage)
  require(os.path.isdir(os.path.join(stage_dir, 'checkpoints')),
          f'{stage_dir} has no checkpoints/ folder; check --workdir and --stage.')
  return stage_dir


def hf_base_config(config) -> dict:
  """config.json entries beyond the model sizes: token ids, and for Chameleon the vocabulary map
  (the tokenizer's names -> ids, when config.vocab.tokenizer_dir is a directory) and vq_config."""
  base: dict = {}
  family = config.model.family
  tokenizer_dir = config.vocab.get('tokenizer_dir', '')
  if tokenizer_dir and os.path.isdir(tokenizer_dir):
    tokenizer = vocab_lib.load_tokenizer(tokenizer_dir)
    names = tokenizer.get_vocab()
    for field in ('bos_token', 'eos_token', 'pad_token'):
      if config.vocab.get(field) in names:
        base[f'{field}_id'] = int(names[config.vocab[field]])
    if family == 'chameleon':
      base['vocabulary_map'] = {str(k): int(v) for k, v in names.items()}
  if family == 'chameleon':
    base.setdefault('vocabulary_map', {})
    if 'vqgan' in config:
      base['vq_config'] = hf.chameleon_vq_config(config.vqgan)
  return base


def vqgan_tensors(config) -> dict:
  """The VQGAN encoder as transformers' `model.vqmodel.*` tensors (Chameleon, with
  config.checkpoint.vqgan_dir set to a Flax VQGAN directory); {} otherwise."""
  vqgan_dir = config.get('checkpoint', {}).get('vqgan_dir', '')
  if config.model.family != 'chameleon' or not vqgan_dir or not os.path.isdir(vqgan_dir):
    return {}
  _, params = vqgan_files.load_vqgan(vqgan_dir)
  params = {k: v for k, v in dict(params).items() if k in vqgan_weights.ENCODER_SUBTREES}
  tensors = vqgan_weights.vqgan_params_to_torch_state_dict(params, prefix='model.vqmodel.')
  return {k: v.numpy() for k, v in tensors.items()}


def write_hf(config, model_config, params, out: str) -> str:
  """Writes `params` (host arrays, no adapters) as a transformers directory at `out`, with
  hf_base_config's entries and the tokenizer files; returns `out`."""
  hf.save_pretrained(model_config, params, out, base_config=hf_base_config(config),
                     extra_tensors=vqgan_tensors(config))
  tokenizer_dir = config.vocab.get('tokenizer_dir', '')
  if tokenizer_dir and os.path.isdir(tokenizer_dir):
    for name in os.listdir(tokenizer_dir):
      full = os.path.join(tokenizer_dir, name)
      if os.path.isfile(full) and name != 'config.json' and not name.endswith('.safetensors'):
        shutil.copy2(full, os.path.join(out, name))
  return out


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
      write_hf(config, base_config, host_params, paths['hf'])
  return paths


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, configs/NAME.py[:ARG].')
_WORKDIR = flags.DEFINE_string('workdir', None, "train.py's workdir, or a stage folder.")
_OUT = flags.DEFINE_string('out', None, 'Where to write the exported model.')
_FORMAT = flags.DEFINE_enum('format', 'both', list(FORMATS), 'orbax, hf (transformers) or both.')
_STAGE = flags.DEFINE_string('stage', None, 'Stage folder under --workdir (default: last training '
                             'stage in config.stages).')


def main(argv) -> int:
  """Exports the newest params of a training run; mistakes go through jax_vlm/core/cli.py."""
  del argv
  sharding.maybe_initialize_distributed()
  if _CONFIG.value is None:
    raise cli.ConfigError('No config given; pass --config configs/NAME.py.')
  if not _WORKDIR.value or not _OUT.value:
    raise cli.ConfigError('Pass --workdir DIR (where train.py wrote) and --out OUT.')
  paths = export(_CONFIG.value, _WORKDIR.value, _OUT.value, _FORMAT.value, _STAGE.value)
  print(f'Exported step {paths["step"]}: ' + ', '.join(
      f'{k}={v}' for k, v in paths.items() if k != 'step' and v))
  return 0


if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  sys.exit(cli.run(main, flags.FLAGS, __doc__, config_flag=_CONFIG))
