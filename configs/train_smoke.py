"""A tiny model trained on synthetic IDP/FDP batches: for trainer tests and smoke runs on a laptop.

  python train.py --config configs/train_smoke.py[:RULES[,lora]] --workdir /tmp/smoke

RULES is a mesh rule preset ('dp', 'fsdp', 'fsdp_tp'; 'fsdp_tp' uses tensor=2); ',lora' trains
LoRA adapters (rank 4) instead of all weights. Seconds per run on CPU.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or 'fsdp').split(',') if p]
  config = base.get_base_config()
  config.stages = ('train_dynamics',)
  config.model.update(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, max_positions=64, dtype='float32',
                      remat_policy='none')
  config.data.max_seq_len = 32
  t = config.train
  t.data_source = 'synthetic'
  t.global_batch_size = 8
  t.num_steps = 8
  t.warmup_steps = 2
  t.learning_rate = 3e-3
  t.log_every = 1
  t.checkpoint_every = 2
  t.keep_checkpoints = 3
  t.progress_bar = False
  config.mesh.rules = parts[0]
  if parts[0] == 'fsdp_tp':
    config.mesh.tensor = 2
  if 'lora' in parts[1:]:
    t.mode = 'lora'
    t.learning_rate = 3e-2
    config.model.lora_rank = 4
    config.model.lora_alpha = 8.0
  return config
