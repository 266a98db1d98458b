"""Liquid-7B (Liquid_V1_7B, Gemma-7B architecture): transformers' GemmaForCausalLM.

  python train.py --config configs/liquid_7b.py --config.checkpoint.model_dir=/ckpt/Liquid_V1_7B \
      --config.vocab.tokenizer_dir=/ckpt/Liquid_V1_7B ...

264,192 tokens = 256,000 Gemma text tokens + 8,192 image codes appended after them (scheme
'offset'), d_model 3072, 28 layers of 16 heads x 256, GeGLU MLP 24,576, (1 + w) RMSNorm with eps
1e-6, embeddings scaled by sqrt(d_model), tied LM head, 8,192 positions. ARG: unused.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base.get_base_config()
  config.model.update(
      family='gemma', vocab_size=264192, d_model=3072, num_layers=28, num_heads=16,
      num_kv_heads=16, head_dim=256, mlp_dim=24576, max_positions=8192, rope_theta=10000.0,
      norm_eps=1e-6, qk_norm=False, swin_norm=False, tie_embeddings=True)
  v = config.vocab
  v.image_token_scheme = 'offset'
  v.image_token_offset = 256000  # image code c is token 256000 + c
  v.num_image_codes = 8192
  # Gemma's tokenizer names; check boi/eoi against the checkpoint's tokenizer.
  v.bos_token = '<bos>'
  v.eos_token = '<eos>'
  v.pad_token = '<pad>'
  v.boi_token = '<boi>'
  v.eoi_token = '<eoi>'
  return config
