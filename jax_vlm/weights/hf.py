"""transformers checkpoints <-> `DecoderLM` params.

    module, params = from_pretrained('/ckpt/anole-7b-hf', dtype='bfloat16')
    save_pretrained(module, params, '/out/anole-ft')   # transformers loads it back

Reads `config.json` plus safetensors weights (one file, or shards listed in
`model.safetensors.index.json`) with safetensors' numpy API, tensor by tensor, so no torch is
needed and a 7B model is never held twice. Supported: Chameleon/Anole
(`ChameleonForConditionalGeneration`, the `model.vqmodel.*` VQGAN tensors are skipped here and
copied through on save) and Gemma/Liquid (`GemmaForCausalLM`).

Key mapping (transformers `[out, in]` matrices -> Flax kernels `[in, out]`, heads split out):
    model.embed_tokens.weight [V, d]                   embed_tokens.embedding [V, d]
    model.layers.i.self_attn.q_proj.weight [H*D, d]    layers.self_attn.q_proj.kernel [d, H, D]
    model.layers.i.self_attn.{k,v}_proj.weight         layers.self_attn.{k,v}_proj.kernel [d, K, D]
    model.layers.i.self_attn.o_proj.weight [d, H*D]    layers.self_attn.o_proj.kernel [H, D, d]
    model.layers.i.self_attn.{q,k}_norm.{weight,bias}  layers.self_attn.{q,k}_norm.{scale,bias}
    model.layers.i.mlp.{gate,up}_proj.weight [M, d]    layers.mlp.{gate,up}_proj.kernel [d, M]
    model.layers.i.mlp.down_proj.weight [d, M]         layers.mlp.down_proj.kernel [M, d]
    model.layers.i.{input,post_attention}_layernorm.weight   layers.*_layernorm.scale [d]
    model.norm.weight [d]                              norm.scale [d]
    lm_head.weight [V, d]                              lm_head.kernel [d, V] (untied only)
With scan_layers the per-layer tensors are stacked on a leading axis under `layers`; otherwise they
live under `layers_0`, `layers_1`, ...
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from jax_vlm.core.errors import UserError, require
from jax_vlm.models import lora
from jax_vlm.models.config import TransformerConfig, to_dtype
from jax_vlm.models.transformer import DecoderLM

ARCHITECTURES = {'chameleon': 'ChameleonForConditionalGeneration', 'gemma': 'GemmaForCausalLM'}
SUPPORTED = ', '.join(sorted(ARCHITECTURES))
_LM_PREFIXES = ('model.layers.', 'model.embed_tokens.', 'model.norm.', 'lm_head.')
_WEIGHT_FILE = re.compile(r'^model(-\d+-of-\d+)?\.safetensors$')


# --- configs ---------------------------------------------------------------------------------

def config_from_hf(hf: Mapping[str, Any], where: str = 'config.json',
                   **overrides) -> TransformerConfig:
  """A transformers config dict (config.json) -> TransformerConfig; `overrides` set other fields
  (dtype, param_dtype, scan_layers, remat_policy, lora_rank, ...)."""
  model_type = hf.get('model_type')
  require(model_type in ARCHITECTURES,
          f'model_type {model_type!r} in {where} is not supported; supported model types: '
          f'{SUPPORTED}.')
  require(not hf.get('attention_bias') and not hf.get('mlp_bias'),
          f'{where} asks for attention or MLP biases, which are not supported; use a '
          f'{model_type} checkpoint without biases.')
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  require(rope_type == 'default',
          f'rope type {rope_type!r} in {where} is not supported; only default RoPE is.')
  theta = rope.get('rope_theta', hf.get('rope_theta', 10000.0))
  d_model, heads = int(hf['hidden_size']), int(hf['num_attention_heads'])
  fields = dict(
      family=model_type, vocab_size=int(hf['vocab_size']), d_model=d_model,
      num_layers=int(hf['num_hidden_layers']), num_heads=heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or heads),
      mlp_dim=int(hf['intermediate_size']),
      rope_theta=float(theta))
  if model_type == 'chameleon':
    act = hf.get('hidden_act', 'silu')
    require(act == 'silu',
            f'hidden_act {act!r} in {where} is not supported for chameleon; use silu.')
    fields.update(head_dim=d_model // heads,
                  max_positions=int(hf.get('max_position_embeddings', 4096)),
                  norm_eps=float(hf.get('rms_norm_eps', 1e-5)), qk_norm=True,
                  swin_norm=bool(hf.get('swin_norm', False)),
                  tie_embeddings=bool(hf.get('tie_word_embeddings', False)))
  else:
    act = hf.get('hidden_activation') or hf.get('hidden_act', 'gelu_pytorch_tanh')
    # transformers maps Gemma's legacy 'gelu' to the tanh approximation too.
    require(act in ('gelu', 'gelu_pytorch_tanh'),
            f'hidden activation {act!r} in {where} is not supported for gemma; use '
            'gelu_pytorch_tanh.')
    require(not hf.get('use_bidirectional_attention'),
            f'{where} sets use_bidirectional_attention, which is not supported; use a causal '
            'model.')
    fields.update(head_dim=int(hf.get('head_dim') or d_model // heads),
                  max_positions=int(hf.get('max_position_embeddings', 8192)),
                  norm_eps=float(hf.get('rms_norm_eps', 1e-6)), qk_norm=False, swin_norm=False,
                  tie_embeddings=bool(hf.get('tie_word_embeddings', True)))
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return TransformerConfig(**fields)


def hf_config_dict(config: TransformerConfig, base: Mapping[str, Any] | None = None,
                   dtype: str = 'float32') -> dict:
  """TransformerConfig -> a transformers config.json dict, keeping `base`'s other entries (e.g.
  Chameleon's vocabulary_map and vq_config, token ids)."""
  c = config
  d = dict(base or {})
  if d.get('model_type') not in (None, c.family):
    d = {}  # a base of another architecture has nothing to keep
  d.update(model_type=c.family, architectures=[ARCHITECTURES[c.family]], vocab_size=c.vocab_size,
           hidden_size=c.d_model, intermediate_size=c.mlp_dim, num_hidden_layers=c.num_layers,
           num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
           max_position_embeddings=c.max_positions, rms_norm_eps=c.norm_eps,
           tie_word_embeddings=c.tie_embeddings, dtype=dtype,
           rope_parameters={'rope_theta': c.rope_theta, 'rope_type': 'default'})
  d.pop('rope_scaling', None)
  d.pop('torch_dtype', None)
  if 'rope_theta' in d:
    d['rope_theta'] = c.rope_theta
  if c.family == 'chameleon':
    require(c.head_dim * c.num_heads == c.d_model and c.qk_norm and c.mlp_activation == 'silu',
            f'model config (d_model {c.d_model}, {c.num_heads} heads of {c.head_dim}, qk_norm '
            f'{c.qk_norm}) cannot be written as a transformers Chameleon model; it needs '
            'd_model = heads * head_dim and qk_norm on.')
    d['swin_norm'] = c.swin_norm
    d['hidden_act'] = 'silu'
    # transformers' ChameleonModel reads vocabulary_map when it is built (AttributeError on None);
    # a model trained here without a tokenizer at hand gets an empty map: text works, images need
    # the tokenizer's IMGIMG names (tools/export.py fills them in from config.vocab).
    if not isinstance(d.get('vocabulary_map'), Mapping):
      d['vocabulary_map'] = {}
  else:
    require(not c.qk_norm and not c.swin_norm,
            'model config with qk_norm or swin_norm cannot be written as a transformers Gemma '
            'model; '
            'turn them off.')
    d['head_dim'] = c.head_dim
    d['hidden_act'] = 'gelu_pytorch_tanh'
    if 'hidden_activation' in d:
      d['hidden_activation'] = 'gelu_pytorch_tanh'
  return d


def chameleon_vq_config(vqgan: Mapping[str, Any]) -> dict:
  """configs/base.py's `vqgan` section -> transformers' ChameleonVQVAEConfig dict."""
  return dict(embed_dim=int(vqgan['embed_dim']), num_embeddings=int(vqgan['num_embeddings']),
              double_latent=bool(vqgan.get('double_z', False)),
              latent_channels=int(vqgan['z_channels']), resolution=int(vqgan['resolution']),
              in_channels=int(vqgan.get('in_channels', 3)),
              base_channels=int(vqgan['base_channels']),
              channel_multiplier=[int(m) for m in vqgan['channel_multiplier']],
              num_res_blocks=int(vqgan['num_res_blocks']),
              attn_resolutions=[int(r) for r in (vqgan.get('attn_resolutions') or ())],
              dropout=float(vqgan.get('dropout', 0.0)), attn_type='vanilla')


# --- the key mapping -------------------------------------------------------------------------

def _layer_entries(c: TransformerConfig):
  """(flax path inside a layer, hf suffix, hf shape, hf -> flax, flax -> hf) for one layer."""
  d, h, k, hd, m = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim

  def in_out(*out):  # [prod(out), d] <-> [d, *out]
    return (lambda w: w.T.reshape((d,) + out)), (lambda w: w.reshape(d, -1).T)

  q_in, q_out = in_out(h, hd)
  kv_in, kv_out = in_out(k, hd)
  mlp_in, mlp_out = in_out(m)
  same = (lambda w: w), (lambda w: w)
  entries = [
      (('self_attn', 'q_proj', 'kernel'), 'self_attn.q_proj.weight', (h * hd, d), q_in, q_out),
      (('self_attn', 'k_proj', 'kernel'), 'self_attn.k_proj.weight', (k * hd, d), kv_in, kv_out),
      (('self_attn', 'v_proj', 'kernel'), 'self_attn.v_proj.weight', (k * hd, d), kv_in, kv_out),
      (('self_attn', 'o_proj', 'kernel'), 'self_attn.o_proj.weight', (d, h * hd),
       lambda w: w.T.reshape(h, hd, d), lambda w: w.reshape(h * hd, d).T),
      (('mlp', 'gate_proj', 'kernel'), 'mlp.gate_proj.weight', (m, d), mlp_in, mlp_out),
      (('mlp', 'up_proj', 'kernel'), 'mlp.up_proj.weight', (m, d), mlp_in, mlp_out),
      (('mlp', 'down_proj', 'kernel'), 'mlp.down_proj.weight', (d, m),
       lambda w: w.T, lambda w: w.T),
      (('input_layernorm', 'scale'), 'input_layernorm.weight', (d,)) + same,
      (('post_attention_layernorm', 'scale'), 'post_attention_layernorm.weight', (d,)) + same,
  ]
  if c.qk_norm:
    for name, n in (('q_norm', h), ('k_norm', k)):
      entries += [(('self_attn', name, 'scale'), f'self_attn.{name}.weight', (n, hd)) + same,
                  (('self_attn', name, 'bias'), f'self_attn.{name}.bias', (n, hd)) + same]
  return entries


def _top_entries(c: TransformerConfig):
  same = (lambda w: w), (lambda w: w)
  entries = [(('embed_tokens', 'embedding'), 'model.embed_tokens.weight', (c.vocab_size, c.d_model))
             + same, (('norm', 'scale'), 'model.norm.weight', (c.d_model,)) + same]
  if not c.tie_embeddings:
    entries.append((('lm_head', 'kernel'), 'lm_head.weight', (c.vocab_size, c.d_model),
                    lambda w: w.T, lambda w: w.T))
  return entries


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...], where: str):
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      raise UserError(f'params {where} have no {"/".join(path)}; pass params of a DecoderLM with '
                      'this config.')
    tree = tree[p]
  return tree


def params_from_state_dict(state_dict: Mapping[str, Any], config: TransformerConfig,
                           where: str = 'the checkpoint', dtype=None) -> dict:
  """transformers tensors (name -> array; may be lazy) -> a Flax params tree for `config`
  (stacked under 'layers' when config.scan_layers). Arrays are numpy, cast to `dtype`
  (default config.param_dtype)."""
  dtype = to_dtype(dtype or config.param_dtype)

  def fetch(name, shape):
    if name not in state_dict:
      raise UserError(f'tensor {name} is missing from {where}; use a complete '
                      f'{ARCHITECTURES[config.family]} checkpoint that matches its config.json.')
    w = state_dict[name]
    got = tuple(np.shape(w))
    require(got == tuple(shape), f'tensor {name} in {where} has shape {got} but the config needs '
            f'{tuple(shape)}; check that config.json matches the weights.')
    return np.asarray(w).astype(dtype, copy=False)

  params: dict = {}
  for path, name, shape, to_flax, _ in _top_entries(config):
    _set(params, path, to_flax(fetch(name, shape)))
  layer = _layer_entries(config)
  for path, suffix, shape, to_flax, _ in layer:
    if config.scan_layers:
      stacked = None
      for i in range(config.num_layers):
        w = to_flax(fetch(f'model.layers.{i}.{suffix}', shape))
        if stacked is None:
          stacked = np.empty((config.num_layers,) + w.shape, dtype)
        stacked[i] = w
      _set(params, ('layers',) + path, stacked)
    else:
      for i in range(config.num_layers):
        _set(params, (f'layers_{i}',) + path, to_flax(fetch(f'model.layers.{i}.{suffix}', shape)))
  return params


def _plain_params(params) -> dict:
  """Unboxes, unfreezes and unwraps a {'params': ...} variables dict."""
  params = flax.linen.meta.unbox(params)
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  if isinstance(params, Mapping) and 'params' in params and 'embed_tokens' not in params:
    params = params['params']
  return dict(params)


def state_dict_from_params(params, config: TransformerConfig, dtype=None) -> dict[str, np.ndarray]:
  """Flax params (stacked or per-layer, whatever config.scan_layers says; LoRA adapters are merged
  first) -> transformers tensors as numpy arrays (in `dtype`, default the params' own)."""
  params = _plain_params(params)
  if any(k[-1] in lora.LORA_NAMES for k in flax.traverse_util.flatten_dict(params)):
    params = lora.merge_lora(params, config)
  stacked = 'layers' in params
  out = {}

  def put(name, w, from_flax):
    w = np.asarray(w)
    w = from_flax(w)
    out[name] = np.ascontiguousarray(w.astype(to_dtype(dtype)) if dtype else w)

  for path, name, _, _, from_flax in _top_entries(config):
    put(name, _get(params, path, 'to save'), from_flax)
  for path, suffix, _, _, from_flax in _layer_entries(config):
    for i in range(config.num_layers):
      if stacked:
        w = np.asarray(_get(params, ('layers',) + path, 'to save'))[i]
      else:
        w = _get(params, (f'layers_{i}',) + path, 'to save')
      put(f'model.layers.{i}.{suffix}', w, from_flax)
  return out


# --- files -----------------------------------------------------------------------------------

class SafetensorsCheckpoint(Mapping):
  """Lazy name -> numpy array view over a directory's safetensors files (single or sharded)."""

  def __init__(self, path: str):
    from safetensors import safe_open
    self.path = path
    index = os.path.join(path, 'model.safetensors.index.json')
    files = None
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
      files = sorted(set(weight_map.values()))
      for name in files:
        require(os.path.exists(os.path.join(path, name)),
                f'{path} lists shard {name} in model.safetensors.index.json but the file is '
                'missing; download the complete checkpoint.')
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith('.safetensors'))
    require(bool(files), f'{path} has no *.safetensors weights; save the model with '
            'safetensors (transformers save_pretrained does by default).')
    self._handles = {name: safe_open(os.path.join(path, name), framework='numpy') for name in files}
    self._where = {}
    for name, handle in self._handles.items():
      for key in handle.keys():
        self._where[key] = name

  def __getitem__(self, name: str) -> np.ndarray:
    return self._handles[self._where[name]].get_tensor(name)

  def __contains__(self, name) -> bool:
    return name in self._where

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def read_hf_config(path: str) -> dict:
  """config.json of a transformers checkpoint directory (UserError if it is not one)."""
  require(os.path.isdir(path), f'{path} is not a directory; pass a transformers checkpoint '
          'directory (config.json + *.safetensors).')
  config_path = os.path.join(path, 'config.json')
  require(os.path.exists(config_path), f'{path} has no config.json, so it is not a transformers '
          'checkpoint; pass the directory that transformers save_pretrained wrote.')
  try:
    with open(config_path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{config_path} is not valid JSON ({e}); restore the file.') from None


def from_pretrained(path: str, dtype=None, param_dtype=None, scan_layers: bool | None = None,
                    as_numpy: bool = True, **config_overrides):
  """Loads a transformers checkpoint directory -> (DecoderLM, params).

  dtype / param_dtype: compute and parameter dtypes (defaults: configs/base.py's bfloat16 /
  float32); scan_layers: stack the layers (default True); other TransformerConfig fields may be
  overridden by keyword (remat_policy, attention_impl, lora_rank, ...; LoRA adapters are not
  created here, see models/lora.init_lora_params). Params are host numpy arrays unless
  `as_numpy=False`, so big models can go straight to their shardings with jax.device_put.
  """
  path = os.path.abspath(path)
  hf = read_hf_config(path)
  config = config_from_hf(hf, where=os.path.join(path, 'config.json'), dtype=dtype,
                          param_dtype=param_dtype, scan_layers=scan_layers,
                          **config_overrides)
  params = params_from_state_dict(SafetensorsCheckpoint(path), config, where=path)
  if not as_numpy:
    import jax.numpy as jnp
    params = flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()})
  return DecoderLM(config, hf_source=path), params


def _torch_dtype_name(arrays: Mapping[str, np.ndarray]) -> str:
  dtypes = {str(a.dtype) for a in arrays.values()}
  return 'bfloat16' if 'bfloat16' in dtypes else ('float16' if 'float16' in dtypes else 'float32')


def save_pretrained(module_or_config, params, path: str, source: str | None = None, dtype=None,
                    base_config: Mapping[str, Any] | None = None,
                    max_shard_bytes: int = 5 * 2**30,
                    extra_tensors: Mapping[str, np.ndarray] | None = None) -> str:
  """Writes `params` as a transformers checkpoint directory (config.json + model*.safetensors).

  module_or_config: a DecoderLM or TransformerConfig. source: a transformers directory (default
  the one a DecoderLM's params came from, `module.hf_source`) whose config.json extras, non-LM
  tensors (Chameleon's `model.vqmodel.*`) and tokenizer files are kept; base_config: config.json
  entries to keep when there is no source directory (merged over the source's config.json when both
  are given); extra_tensors: non-LM tensors to write too (e.g. `model.vqmodel.*`). LoRA adapters
  are merged.
  dtype: tensor dtype to write (default the params' own). Returns `path`.
  """
  from safetensors.numpy import save_file
  config = getattr(module_or_config, 'config', module_or_config)
  require(isinstance(config, TransformerConfig),
          f'save_pretrained needs a DecoderLM or TransformerConfig, not {type(config).__name__}.')
  path = os.path.abspath(path)
  loaded_from = getattr(module_or_config, 'hf_source', '')
  if not source and loaded_from and os.path.isdir(loaded_from):
    source = loaded_from  # where from_pretrained read the weights, if it is still there
  state = state_dict_from_params(params, config, dtype=dtype)

  base, extra = base_config, {}
  if source:
    source = os.path.abspath(source)
    base = dict(read_hf_config(source), **(base_config or {}))
    if base.get('model_type') == config.family:
      try:
        checkpoint = SafetensorsCheckpoint(source)
      except UserError:
        checkpoint = {}
      for name in checkpoint:
        if not name.startswith(_LM_PREFIXES):  # Chameleon's VQGAN (model.vqmodel.*) and the like
          extra[name] = checkpoint[name]
  state.update(extra)
  state.update({k: np.ascontiguousarray(np.asarray(v)) for k, v in (extra_tensors or {}).items()})
  hf = hf_config_dict(config, base, dtype=_torch_dtype_name(state))

  os.makedirs(path, exist_ok=True)
  if source and source != path:
    for name in os.listdir(source):
      full = os.path.join(source, name)
      if os.path.isfile(full) and not name.endswith(('.safetensors', '.bin', '.index.json', '.pt',
                                                     '.pth', '.ckpt')) and name != 'config.json':
        shutil.copy2(full, os.path.join(path, name))
  for name in os.listdir(path):
    if _WEIGHT_FILE.match(name) or name == 'model.safetensors.index.json':
      os.remove(os.path.join(path, name))

  # Shards of at most max_shard_bytes (one file when it fits), in transformers' naming.
  shards, current, size = [], {}, 0
  for name in sorted(state):
    nbytes = state[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = state[name]
    size += nbytes
  shards.append(current)
  metadata = {'format': 'pt'}
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, 'model.safetensors'), metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
      save_file(shard, os.path.join(path, fname), metadata=metadata)
      weight_map.update({name: fname for name in shard})
    total = sum(a.nbytes for a in state.values())
    with open(os.path.join(path, 'model.safetensors.index.json'), 'w') as f:
      json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  return path


# --- Orbax params next to their transformers config --------------------------------------------

HF_CONFIG_FILE = 'hf_config.json'  # inside an Orbax params directory written by hf-to-flax


def transformer_config_from_file(path: str, **overrides) -> TransformerConfig:
  """A TransformerConfig from a transformers directory, a config.json, or a configs/*.py preset
  (`configs/anole_7b.py[:arg]`, read from its `model` section)."""
  if path.split(':')[0].endswith('.py'):
    import importlib.util
    file, _, arg = path.partition(':')
    require(os.path.exists(file), f'config file {file} does not exist; pass configs/NAME.py.')
    spec = importlib.util.spec_from_file_location('_jax_vlm_preset', file)
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    cfg = preset.get_config(arg) if arg else preset.get_config()
    return TransformerConfig.from_config(cfg.model, **overrides)
  if os.path.isdir(path):
    return config_from_hf(read_hf_config(path), where=path, **overrides)
  require(os.path.exists(path), f'config {path} does not exist; pass a transformers directory, its '
          'config.json or a configs/*.py preset.')
  with open(path) as f:
    return config_from_hf(json.load(f), where=path, **overrides)
