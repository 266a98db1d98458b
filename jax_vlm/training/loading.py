"""A trained model on disk -> (module, params, vocabulary), for the programs that run one: the
AURORA-BENCH predictors (evaluation/aurora_models.py) and the bootstrap stage's IDP labeller
(method/bootstrap.py).

A checkpoint is either
  - this project's Orbax params directory (train.py's `<stage>/params`, `python -m jax_vlm.export
    --format orbax`, `python -m jax_vlm.convert hf-to-flax`): the model's sizes come from its
    `hf_config.json` (convert) or `model_config.json` (train.py's record of the architecture), else
    from config.model; or
  - a transformers directory (config.json + safetensors; `python -m jax_vlm.export --format hf`):
    the sizes come from its config.json.
The vocabulary is config.vocab, with the checkpoint's own tokenizer files when it has them (what
it was trained with; export copies them) and else config.vocab.tokenizer_dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jax_vlm.core.errors import require
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens.vocab import UnifiedVocab
from jax_vlm.training import checkpointing
from jax_vlm.weights import hf


@dataclasses.dataclass
class LoadedModel:
  module: DecoderLM
  params: Any
  vocab: UnifiedVocab
  path: str


def vocab_for(config, path: str) -> UnifiedVocab:
  """The checkpoint's own tokenizer files when it has them, else config.vocab.tokenizer_dir; the
  other vocab settings from config.vocab."""
  vocab_cfg = config.vocab
  if os.path.isfile(os.path.join(path, 'tokenizer_config.json')):
    vocab_cfg = vocab_cfg.copy_and_resolve_references()
    vocab_cfg.tokenizer_dir = path
  require(bool(vocab_cfg.tokenizer_dir),
          f'No tokenizer for {path}: set --config.vocab.tokenizer_dir=DIR (the checkpoint has no '
          'tokenizer files).')
  return UnifiedVocab.from_config(vocab_cfg)


def _orbax_model_config(config, path: str) -> TransformerConfig:
  dtype, scan = config.model.dtype, bool(config.model.scan_layers)
  hf_config = os.path.join(path, hf.HF_CONFIG_FILE)
  if os.path.isfile(hf_config):
    with open(hf_config) as f:
      return hf.config_from_hf(json.load(f), where=hf_config, dtype=dtype, scan_layers=scan,
                               remat_policy='none')
  model_config = TransformerConfig.from_config(config.model, lora_rank=0, remat_policy='none')
  record = os.path.join(path, checkpointing.MODEL_FILE)
  if os.path.isfile(record):
    try:
      with open(record) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      saved = {}
    arch = {k: saved[k] for k in checkpointing.ARCH_KEYS if k in saved and k != 'scan_layers'}
    if arch:
      model_config = dataclasses.replace(model_config, **arch)
  return model_config


def load_model(config, path: str, what: str, flag: str | None = None) -> LoadedModel:
  """A checkpoint directory (see the module docstring) -> module, params, vocab; one-sentence
  UserErrors for a missing directory, an embedding table that does not fit, a family that does not
  fit the vocabulary's image-token scheme. `flag` names the config key that set `path` (default
  eval.<what>_checkpoint)."""
  flag = flag or f'eval.{what}_checkpoint'
  require(bool(path), f'No {what} checkpoint given; pass --config.{flag}=DIR.')
  path = os.path.abspath(path)
  require(os.path.isdir(path), f'{what} checkpoint {path} is not a directory; pass an Orbax params '
          'directory (train.py/export) or a transformers directory.')
  if os.path.isfile(os.path.join(path, 'config.json')):
    module, params = hf.from_pretrained(path, dtype=config.model.dtype,
                                        param_dtype=config.model.param_dtype,
                                        scan_layers=bool(config.model.scan_layers),
                                        remat_policy='none')
    params = jax.tree.map(np.asarray, params)
  else:
    module = DecoderLM(_orbax_model_config(config, path))
    params = checkpointing.load_params(path)
    if isinstance(params, dict) and 'params' in params and 'embed_tokens' not in params:
      params = params['params']
  embedding = params.get('embed_tokens', {}).get('embedding') if isinstance(params, dict) else None
  require(embedding is not None, f'The {what} checkpoint {path} has no embed_tokens/embedding; '
          'pass the params of a DecoderLM.')
  rows = int(np.shape(embedding)[0])
  require(rows == module.config.vocab_size,
          f'The {what} checkpoint {path} has {rows} token embeddings but model.vocab_size is '
          f'{module.config.vocab_size}; set --config.model.* to the sizes it was trained with.')
  vocab = vocab_for(config, path)
  family, scheme = module.config.family, vocab.scheme
  require(vocab.vocab_size <= module.config.vocab_size,
          f'The {what} checkpoint {path} has {module.config.vocab_size} token embeddings but the '
          f'vocabulary needs {vocab.vocab_size}; use a checkpoint trained with this tokenizer.')
  require((family == 'chameleon') == (scheme == 'chameleon'),
          f'The {what} checkpoint {path} is a {family} model but vocab.image_token_scheme is '
          f'{scheme!r}; use chameleon with IMGIMG tokens and gemma (Liquid) with offset tokens.')
  return LoadedModel(module, params, vocab, path)
