"""The training loop's config sections with their defaults: `objectives`, `train`, `mesh`.

configs/base.py builds its tree from these; the trainer checks a config's keys against them, so a
misspelt key fails before anything compiles.
"""

import jax
import ml_collections

from jax_vlm.core.errors import require
from jax_vlm.training import optim, sharding
from jax_vlm.training import train_step as ts

# Sections whose keys this module owns; an unknown key there is a typo, not an extension.
CHECKED_SECTIONS = ('train', 'mesh', 'objectives')
DATA_SOURCES = ('dataset', 'synthetic')
SCHEDULES = ('alternate', 'mixed')


def objectives_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.schedule = 'alternate'  # 'alternate' | 'mixed'
  c.idp_share = 1
  c.fdp_share = 1
  c.idp_loss_weight = 1.0  # 'mixed': per-objective weight on the summed token loss
  c.fdp_loss_weight = 1.0
  # 'tokens': one mean over all loss tokens of the batch (an objective weighs as its token count);
  # 'objective': each objective's own mean, then averaged, so IDP's few action tokens are not
  # swamped by FDP's image tokens (train_step.objective_scales).
  c.loss_normalization = 'tokens'
  return c


def train_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'full'  # 'full' | 'lora'
  c.global_batch_size = 96
  c.num_steps = 1000
  c.learning_rate = 1e-4
  c.warmup_steps = 50
  c.end_lr_ratio = 0.1
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.95
  c.grad_clip_norm = 1.0
  c.grad_accum_steps = 1
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.lr_schedule = 'cosine'  # 'cosine' (warmup + cosine decay) | 'constant' (warmup only)
  # 'dataset' (jax_vlm.input.pipeline) | 'synthetic' (random batches: tests, benchmarks)
  c.data_source = 'dataset'
  # Params to start from: Orbax params dir or an earlier stage's name ('' = checkpoint.model_dir).
  c.init_from = ''
  # Loading params whose leaves differ from the model's (missing ones keep their fresh init, extra
  # ones are dropped) is an error unless this is True.
  c.init_partial = False
  c.peak_flops = 0.0  # peak FLOP/s per device for MFU; 0 = MFU not reported
  c.progress_bar = True
  c.tensorboard = True  # event files next to metrics.jsonl (tensorboardX)
  c.save_on_preemption = True  # SIGTERM: finish the step, save, exit cleanly
  return c


def mesh_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = 1
  c.fsdp = -1  # -1 fills the rest of the devices
  c.tensor = 1
  c.rules = 'fsdp'  # name of a logical-axis rule preset, see jax_vlm/training/sharding.py
  # Replaces single rules of the preset: 'mlp=tensor,vocab=' (logical=mesh axes, '+' joins two).
  c.rule_overrides = ''
  return c


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises UserError (one sentence) for unknown keys in train/mesh/objectives and for values the
  trainer cannot run with: modes, schedules, shares, mesh sizes and batch divisibility."""
  reference = {'objectives': objectives_section(), 'train': train_section(),
               'mesh': mesh_section()}
  for section in CHECKED_SECTIONS:
    require(section in config, f'config has no {section!r} section; start the config from '
            'configs/base.py:get_base_config().')
    unknown = sorted(set(config[section].keys()) - set(reference[section].keys()))
    require(not unknown, f'config.{section} has unknown key(s) {", ".join(unknown)}; check the '
            f'spelling against configs/base.py ({", ".join(sorted(reference[section].keys()))}).')
  t, o = config.train, config.objectives
  require(t.mode in optim.TRAIN_MODES,
          f'train.mode={t.mode!r} is unknown; use one of {optim.TRAIN_MODES}.')
  require(t.mode != 'lora' or int(config.model.lora_rank) > 0,
          "train.mode='lora' needs model.lora_rank > 0 (the paper uses 16).")
  require(t.data_source in DATA_SOURCES,
          f'train.data_source={t.data_source!r} is unknown; use one of {DATA_SOURCES}.')
  require(o.schedule in SCHEDULES,
          f'objectives.schedule={o.schedule!r} is unknown; use one of {SCHEDULES}.')
  require(o.loss_normalization in ts.LOSS_NORMALIZATIONS,
          f'objectives.loss_normalization={o.loss_normalization!r} is unknown; use one of '
          f'{ts.LOSS_NORMALIZATIONS}.')
  require(int(o.idp_share) >= 0 and int(o.fdp_share) >= 0 and int(o.idp_share + o.fdp_share) > 0,
          f'objectives.idp_share={o.idp_share} and fdp_share={o.fdp_share} must be >= 0 and not '
          'both 0.')
  require(int(t.num_steps) > 0, f'train.num_steps={t.num_steps} must be positive.')
  require(int(t.grad_accum_steps) >= 1,
          f'train.grad_accum_steps={t.grad_accum_steps} must be >= 1.')
  require(int(t.log_every) >= 1 and int(t.checkpoint_every) >= 1,
          'train.log_every and train.checkpoint_every must be >= 1.')
  optim.learning_rate_schedule(t)  # checks lr_schedule
  sharding.logical_rules(config.mesh)  # checks the preset and overrides
  num_devices = jax.device_count() if num_devices is None else num_devices
  shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, num_devices)))
  dp = shape['data'] * shape['fsdp']
  per_update = int(t.global_batch_size)
  require(per_update % (dp * int(t.grad_accum_steps)) == 0,
          f'train.global_batch_size={per_update} must be a multiple of data*fsdp ({dp}) times '
          f'train.grad_accum_steps ({t.grad_accum_steps}); change one of them.')
  require(per_update % jax.process_count() == 0,
          f'train.global_batch_size={per_update} must be a multiple of the '
          f'{jax.process_count()} processes.')
