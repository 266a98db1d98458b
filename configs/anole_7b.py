"""Anole-7B (= Chameleon-7B architecture): transformers' ChameleonForConditionalGeneration.

  python train.py --config configs/anole_7b.py --config.checkpoint.model_dir=/ckpt/anole-7b-hf \
      --config.vocab.tokenizer_dir=/ckpt/anole-7b-hf ...

65,536 tokens (text + 8,192 IMGIMG image tokens), d_model 4096, 32 layers of 32 heads x 128,
MLP 11,008, per-head QK LayerNorm, untied LM head. The VQGAN (8,192 codes of dim 256 at 512 px,
1,024 tokens an image) is configs/base.py's default. ARG: unused.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base.get_base_config()
  config.model.update(
      family='chameleon', vocab_size=65536, d_model=4096, num_layers=32, num_heads=32,
      num_kv_heads=32, head_dim=128, mlp_dim=11008, max_positions=4096, rope_theta=10000.0,
      norm_eps=1e-5, qk_norm=True, swin_norm=False, tie_embeddings=False)
  config.vocab.image_token_scheme = 'chameleon'
  config.vocab.num_image_codes = 8192
  # Real actions are free text: bootstrapping stratifies IDP labels by their first word (verb).
  config.bootstrap.class_key = 'first_word'
  return config
