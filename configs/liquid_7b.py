"""Liquid-7B (Liquid_V1_7B, Gemma-7B architecture): transformers' GemmaForCausalLM.

  python train.py --config configs/liquid_7b.py --config.checkpoint.model_dir=/ckpt/Liquid_V1_7B \
      --config.vocab.tokenizer_dir=/ckpt/Liquid_V1_7B ...

264,192 tokens = 256,000 Gemma text tokens + 8,192 image codes appended after them (scheme
'offset'), d_model 3072, 28 layers of 16 heads x 256, GeGLU MLP 24,576, (1 + w) RMSNorm with eps
1e-6, embeddings scaled by sqrt(d_model), tied LM head, 8,192 positions. ARG: unused.
The begin/end-of-image token names (vocab.boi_token / vocab.eoi_token) are unverified guesses;
set them from the real tokenizer (see below).
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
  # Gemma's tokenizer names for bos/eos/pad. The image delimiters below are a GUESS: the names
  # '<boi>' / '<eoi>' have not been checked against Liquid_V1_7B's real tokenizer. They are plain
  # config values: with the real tokenizer at hand, look up the tokens Liquid wraps image codes in
  # (its tokenizer_config.json / added_tokens) and pass them, e.g.
  #   --config.vocab.boi_token='<NAME>' --config.vocab.eoi_token='<NAME>'
  # A name the tokenizer lacks stops the run with one sentence naming vocab.boi_token/eoi_token.
  v.bos_token = '<bos>'
  v.eos_token = '<eos>'
  v.pad_token = '<pad>'
  v.boi_token = '<boi>'  # unverified guess; see above
  v.eoi_token = '<eoi>'  # unverified guess; see above
  # Real actions are free text: bootstrapping stratifies IDP labels by their first word (verb).
  config.bootstrap.class_key = 'first_word'
  return config
