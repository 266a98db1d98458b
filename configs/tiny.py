"""A tiny decoder that runs in about a second on CPU: for tests, smoke runs and examples.

  python train.py --config configs/tiny.py[:gemma] ...

ARG picks the family ('chameleon', the default, or 'gemma'). The vocabulary is small, so pair it
with a matching tiny tokenizer and VQGAN (vqgan: 64 px, 16 codes).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  family = arg or 'chameleon'
  config = base.get_base_config()
  config.model.update(
      family=family, vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=16, mlp_dim=128, max_positions=512, norm_eps=1e-5 if family == 'chameleon' else 1e-6,
      qk_norm=family == 'chameleon', swin_norm=False, tie_embeddings=family == 'gemma',
      dtype='float32', param_dtype='float32', remat_policy='none')
  config.vqgan.update(resolution=64, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1,
                      z_channels=8, embed_dim=8, num_embeddings=16)
  config.vocab.num_image_codes = 16
  config.data.max_seq_len = 128
  return config
