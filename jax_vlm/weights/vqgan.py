"""Converts VQGAN weights from PyTorch into the Flax tree of jax_vlm.models.vqgan.VQGAN.

Two sources:
  * Meta's Chameleon release: `vqgan.ckpt` (a torch pickle whose 'state_dict' holds taming keys,
    `loss.*` discriminator keys included, which we drop) and `vqgan.yaml` (the architecture).
    This is the only source with the decoder, which image generation needs.
  * a transformers Chameleon directory: the encoder half under `model.vqmodel.` (same key names
    as taming), enough to tokenize frames.

The Flax tree mirrors taming's key names, so a key maps by renaming
(`encoder.down.0.block.1.conv1.weight` -> `encoder/down_0_block_1/conv1/kernel`) and, for
convolutions, transposing OIHW -> HWIO.
"""

import json
import os
import pickle
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.errors import UserError
from jax_vlm.models.vqgan import VQGAN, VQGANConfig

# Subtrees of the Flax params that the encoder-only (transformers) release provides.
ENCODER_SUBTREES = ('encoder', 'quant_conv', 'quantizer', 'post_quant_conv')


def taming_key_to_path(key: str, ndim: int) -> tuple[str, ...]:
  """`encoder.down.0.block.1.conv1.weight` (a tensor with `ndim` dims) -> Flax param path."""
  if key == 'quantize.embedding.weight':
    return ('quantizer', 'embedding')
  s = re.sub(r'\b(down|up)\.(\d+)\.(block|attn)\.(\d+)\b', r'\1_\2_\3_\4', key)
  s = re.sub(r'\b(down|up)\.(\d+)\.(downsample|upsample)\b', r'\1_\2_\3', s)
  *modules, leaf = s.split('.')
  if leaf == 'weight':
    leaf = 'kernel' if ndim == 4 else 'scale'  # conv weights are 4-D, GroupNorm weights 1-D.
  return tuple(modules) + (leaf,)


def path_to_taming_key(path: tuple[str, ...]) -> str:
  """Inverse of `taming_key_to_path`."""
  if tuple(path) == ('quantizer', 'embedding'):
    return 'quantize.embedding.weight'
  *modules, leaf = path
  leaf = 'weight' if leaf in ('kernel', 'scale') else leaf
  s = '.'.join(list(modules) + [leaf])
  s = re.sub(r'\b(down|up)_(\d+)_(block|attn)_(\d+)\b', r'\1.\2.\3.\4', s)
  s = re.sub(r'\b(down|up)_(\d+)_(downsample|upsample)\b', r'\1.\2.\3', s)
  return s


def _to_numpy(tensor) -> np.ndarray:
  if isinstance(tensor, np.ndarray):
    return tensor
  # torch: bf16 has no numpy twin, so go through float32.
  return tensor.detach().cpu().float().numpy()


def _torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax shape -> the PyTorch shape of the same tensor (HWIO -> OIHW for convolutions)."""
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def expected_param_shapes(config: VQGANConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flax path -> shape of every parameter of `VQGAN(config)` (computed abstractly, no FLOPs)."""
  # The architecture does not depend on the image size; a small one keeps tracing cheap.
  size = config.downsample_factor
  images = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
  variables = jax.eval_shape(VQGAN(config).init, jax.random.key(0), images)
  flat = flax.traverse_util.flatten_dict(variables['params'])
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def vqgan_params_from_torch(state_dict: Mapping[str, Any], config: VQGANConfig | None = None,
                            prefix: str = '', subtrees: tuple[str, ...] | None = None,
                            source: str = 'the checkpoint') -> dict:
  """taming-named tensors (under `prefix`) -> Flax params (numpy, the config's param dtype).

  With `config`, checks that every parameter of `VQGAN(config)` in `subtrees` (default: all) is
  there with the right shape, and that no encoder/decoder tensor is left over (which would mean
  the config describes a different architecture). Keys outside `prefix` and `loss.*` are dropped.
  """
  converted = {}
  for key, tensor in state_dict.items():
    if not key.startswith(prefix):
      continue
    name = key[len(prefix):]
    if name.startswith('loss.'):
      continue  # the GAN discriminator and perceptual loss of taming's training
    array = _to_numpy(tensor)
    path = taming_key_to_path(name, array.ndim)
    if subtrees is not None and path[0] not in subtrees:
      continue
    if array.ndim == 4:
      array = np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    converted[path] = array
  if not converted:
    raise UserError(f'{source} holds no VQGAN tensors under the prefix {prefix!r}; check that it '
                    'is a Chameleon VQGAN checkpoint.')

  if config is not None:
    expected = expected_param_shapes(config)
    if subtrees is not None:
      expected = {p: s for p, s in expected.items() if p[0] in subtrees}
    for path, shape in expected.items():
      key = prefix + path_to_taming_key(path)
      if path not in converted:
        raise UserError(f'{source} has no tensor {key}, which the VQGAN config needs; check that '
                        'the config (vqgan.yaml / vq_config) belongs to this checkpoint.')
      if tuple(converted[path].shape) != shape:
        got = _torch_layout(converted[path].shape)
        raise UserError(f'tensor {key} in {source} has shape {got} but the VQGAN config '
                        f'expects {_torch_layout(shape)}; check that the config belongs to this '
                        'checkpoint.')
    for path in converted:
      if path not in expected and path[0] in ('encoder', 'decoder'):
        key = prefix + path_to_taming_key(path)
        raise UserError(f'{source} has tensor {key} that the VQGAN config does not describe; check '
                        'that the config (vqgan.yaml / vq_config) belongs to this checkpoint.')
    converted = {p: a for p, a in converted.items() if p in expected}
    converted = {p: a.astype(config.param_dtype) for p, a in converted.items()}
  return flax.traverse_util.unflatten_dict(converted)


def vqgan_params_to_torch_state_dict(params: Mapping[str, Any], prefix: str = '') -> dict:
  """Flax params -> taming-named torch tensors (OIHW convolutions), e.g. to write a vqgan.ckpt."""
  import torch  # pylint: disable=g-import-not-at-top

  state_dict = {}
  for path, leaf in flax.traverse_util.flatten_dict(dict(params)).items():
    array = np.asarray(jnp.asarray(leaf, jnp.float32))
    if array.ndim == 4:
      array = np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
    array = np.array(array, copy=True, order='C')  # writable and contiguous, as torch wants
    state_dict[prefix + path_to_taming_key(path)] = torch.from_numpy(array)
  return state_dict


def vqgan_config_from_yaml(yaml_path: str, **overrides) -> VQGANConfig:
  """Meta's vqgan.yaml (model.params.{embed_dim, n_embed, ddconfig}) -> VQGANConfig."""
  import yaml  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(yaml_path):
    raise UserError(f'VQGAN config {yaml_path} does not exist; point to the vqgan.yaml that '
                    'comes with the checkpoint.')
  try:
    with open(yaml_path) as f:
      doc = yaml.safe_load(f)
    params = doc['model']['params']
    dd = params['ddconfig']
    config = dict(
        resolution=dd['resolution'], in_channels=dd['in_channels'], out_channels=dd['out_ch'],
        base_channels=dd['ch'], channel_multiplier=tuple(dd['ch_mult']),
        num_res_blocks=dd['num_res_blocks'], attn_resolutions=tuple(dd.get('attn_resolutions', ())),
        z_channels=dd['z_channels'], embed_dim=params['embed_dim'],
        num_embeddings=params['n_embed'], double_z=dd.get('double_z', False),
        dropout=dd.get('dropout', 0.0))
  except (yaml.YAMLError, KeyError, TypeError) as e:
    raise UserError(f'VQGAN config {yaml_path} is not a taming vqgan.yaml (missing or unreadable '
                    f'field {e}); use the vqgan.yaml from the Chameleon release.') from None
  config.update(overrides)
  return VQGANConfig(**config)


def _torch_load(path: str):
  import torch  # pylint: disable=g-import-not-at-top

  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    pass  # Lightning checkpoints also pickle hyper-parameters objects; retry below.
  except (EOFError, RuntimeError, OSError) as e:
    raise UserError(f'VQGAN checkpoint {path} could not be read ({e}); re-download it.') from None
  try:
    # Only reached for checkpoints that pickle objects besides tensors; the user chose this file.
    return torch.load(path, map_location='cpu', weights_only=False)
  except ModuleNotFoundError as e:
    raise UserError(f'VQGAN checkpoint {path} pickles objects from the missing module '
                    f'{e.name!r}; install it or re-save only its state_dict with '
                    'torch.save.') from None
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'VQGAN checkpoint {path} could not be read ({e}); re-download it.') from None


def convert_vqgan_checkpoint(ckpt_path: str, yaml_path: str) -> tuple[VQGANConfig, dict]:
  """Meta's `vqgan.ckpt` + `vqgan.yaml` -> (VQGANConfig, Flax params with the decoder)."""
  config = vqgan_config_from_yaml(yaml_path)
  if not os.path.isfile(ckpt_path):
    raise UserError(f'VQGAN checkpoint {ckpt_path} does not exist; point to the vqgan.ckpt of the '
                    'Chameleon release.')
  checkpoint = _torch_load(ckpt_path)
  state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state_dict, Mapping):
    raise UserError(f'VQGAN checkpoint {ckpt_path} holds no state_dict; use the vqgan.ckpt of '
                    'the Chameleon release.')
  params = vqgan_params_from_torch(state_dict, config, source=f'VQGAN checkpoint {ckpt_path}')
  return config, params


def vqgan_config_from_hf(vq_config: Mapping[str, Any], **overrides) -> VQGANConfig:
  """transformers' ChameleonVQVAEConfig (object or dict) -> VQGANConfig."""
  if not isinstance(vq_config, Mapping):
    vq_config = vq_config.to_dict()
  if vq_config.get('attn_type', 'vanilla') != 'vanilla':
    raise UserError(f'vq_config.attn_type={vq_config.get("attn_type")!r} is not supported; only '
                    "Chameleon's 'vanilla' attention VQGAN is.")
  config = dict(
      resolution=vq_config['resolution'], in_channels=vq_config['in_channels'],
      base_channels=vq_config['base_channels'],
      channel_multiplier=tuple(vq_config['channel_multiplier']),
      num_res_blocks=vq_config['num_res_blocks'],
      attn_resolutions=tuple(vq_config.get('attn_resolutions') or ()),
      z_channels=vq_config['latent_channels'], embed_dim=vq_config['embed_dim'],
      num_embeddings=vq_config['num_embeddings'],
      double_z=vq_config.get('double_latent', False), dropout=vq_config.get('dropout', 0.0))
  config.update(overrides)
  return VQGANConfig(**config)


def vqgan_params_from_hf(state_dict: Mapping[str, Any], prefix: str = 'model.vqmodel.',
                         config: VQGANConfig | None = None) -> dict:
  """The encoder half of a transformers Chameleon state dict -> Flax params.

  Returns `encoder`, `quant_conv`, `quantizer`, `post_quant_conv` (no decoder: transformers does
  not ship one), which is all `VQGAN.encode` needs. With `config`, shapes are checked.
  """
  return vqgan_params_from_torch(state_dict, config, prefix=prefix, subtrees=ENCODER_SUBTREES,
                                 source='the transformers state dict')


def convert_hf_vqgan(model_dir: str, prefix: str = 'model.vqmodel.') -> tuple[VQGANConfig, dict]:
  """A local transformers Chameleon directory (config.json + safetensors) -> encoder params."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  config_path = os.path.join(model_dir, 'config.json')
  if not os.path.isfile(config_path):
    raise UserError(f'{model_dir} has no config.json; point to a transformers Chameleon directory.')
  with open(config_path) as f:
    model_config = json.load(f)
  if 'vq_config' not in model_config:
    raise UserError(f'{config_path} has no vq_config; point to a transformers Chameleon directory.')
  config = vqgan_config_from_hf(model_config['vq_config'])
  files = sorted(n for n in os.listdir(model_dir) if n.endswith('.safetensors'))
  if not files:
    raise UserError(f'{model_dir} has no .safetensors files; save the model with safetensors.')
  state_dict = {}
  for name in files:
    # framework='pt': numpy has no bfloat16, the dtype Chameleon checkpoints are stored in.
    with safe_open(os.path.join(model_dir, name), framework='pt') as f:
      for key in f.keys():
        if key.startswith(prefix):
          state_dict[key] = f.get_tensor(key)
  return config, vqgan_params_from_hf(state_dict, prefix, config)
