"""jax_vlm: unified (early-fusion) vision-language models in JAX/Flax for world dynamics.

Public entry points:
  module, params = jax_vlm.from_pretrained(path)      # a transformers checkpoint directory
  jax_vlm.save_pretrained(module, params, path)       # and back
"""

__version__ = '0.1.0'


def from_pretrained(path, **kwargs):
  """Loads a transformers checkpoint directory as (DecoderLM module, Flax params)."""
  from jax_vlm.weights.hf import from_pretrained as _impl
  return _impl(path, **kwargs)


def save_pretrained(module, params, path, **kwargs):
  """Writes Flax params as a directory that transformers loads (config.json + safetensors)."""
  from jax_vlm.weights.hf import save_pretrained as _impl
  return _impl(module, params, path, **kwargs)
