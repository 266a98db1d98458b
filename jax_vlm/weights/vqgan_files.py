"""The project's one VQGAN directory format: `vqgan_config.json` and `params.msgpack`.

What the world tokenizer stage writes, what `python -m jax_vlm.convert vqgan` writes from
Chameleon's checkpoint, and what tokenization and evaluation read.
"""


from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.errors import require
from jax_vlm.models.vqgan import VQGANConfig

PARAMS_FILE = 'params.msgpack'
CONFIG_FILE = 'vqgan_config.json'


def save_vqgan(directory: str, params: Any, config: VQGANConfig, extra: dict | None = None
               ) -> None:
  """Writes `directory/params.msgpack` and `directory/vqgan_config.json` (+ `extra` keys)."""
  os.makedirs(directory, exist_ok=True)
  cfg = dataclasses.asdict(config)
  cfg['dtype'] = jnp.dtype(config.dtype).name
  cfg['param_dtype'] = jnp.dtype(config.param_dtype).name
  cfg['channel_multiplier'] = list(config.channel_multiplier)
  cfg['attn_resolutions'] = list(config.attn_resolutions)
  host = jax.tree.map(np.asarray, jax.device_get(params))
  tmp = os.path.join(directory, PARAMS_FILE + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host)))
  os.replace(tmp, os.path.join(directory, PARAMS_FILE))
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(dict(cfg, **(extra or {})), f, indent=1)


def load_vqgan(directory: str) -> tuple[VQGANConfig, Any]:
  """(VQGANConfig, params) from a directory `save_vqgan` wrote."""
  params_path = os.path.join(directory, PARAMS_FILE)
  config_path = os.path.join(directory, CONFIG_FILE)
  require(os.path.isfile(params_path) and os.path.isfile(config_path),
          f'VQGAN directory {directory!r} has no {PARAMS_FILE} / {CONFIG_FILE}; run the '
          'train_tokenizer stage first or point checkpoint.vqgan_dir at its params directory.')
  with open(config_path) as f:
    raw = json.load(f)
  fields = {f.name for f in dataclasses.fields(VQGANConfig)}
  config = VQGANConfig(**{k: v for k, v in raw.items() if k in fields})
  with open(params_path, 'rb') as f:
    params = flax.serialization.msgpack_restore(f.read())
  return config, params
