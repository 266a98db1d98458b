"""LoRA adapters of `DecoderLM`: find them, add them to loaded params, fold them into the kernels.

A targeted projection holds `kernel [*in, *out]`, `lora_a [*in, rank]` and `lora_b [rank, *out]`
(with a leading `layers` axis on all three when layers are scanned); its output is
x.kernel + (alpha / rank) * x.lora_a.lora_b. Works on plain or logically boxed param trees.
"""

import math

import flax
import jax
import jax.numpy as jnp

from jax_vlm.models.config import TransformerConfig

LORA_NAMES = ('lora_a', 'lora_b')


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def is_lora_param(path) -> bool:
  """True for a `lora_a` / `lora_b` leaf; `path` is a tuple of names or jax tree-path keys."""
  return bool(path) and _key_name(path[-1]) in LORA_NAMES


def _unbox(x):
  return x.unbox() if isinstance(x, flax.linen.Partitioned) else x


def _lora_delta(kernel, lora_a, lora_b) -> jax.Array:
  """lora_a . lora_b in the kernel's shape (float32), with or without a leading layers axis."""
  stacked = kernel.ndim == (lora_a.ndim - 1) + (lora_b.ndim - 2)
  lead = 1 if stacked else 0
  a = jnp.asarray(lora_a, jnp.float32)
  b = jnp.asarray(lora_b, jnp.float32)
  rank = a.shape[-1]
  a2 = a.reshape(a.shape[:lead] + (-1, rank))
  b2 = b.reshape(b.shape[:lead] + (rank, -1))
  return jnp.matmul(a2, b2).reshape(kernel.shape)


def merge_lora(params, config: TransformerConfig):
  """Returns params with every adapter folded into its kernel (kernel + alpha/rank * A.B) and the
  `lora_a` / `lora_b` leaves removed; kernels keep their dtype. A no-op without adapters."""
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params

  def merge(tree):
    if not isinstance(tree, dict):
      return tree
    if 'kernel' in tree and 'lora_a' in tree and 'lora_b' in tree:
      boxed = tree['kernel']
      kernel = _unbox(boxed)
      rank = _unbox(tree['lora_a']).shape[-1]
      # The rank comes from the params, so a config with another rank cannot mis-scale them.
      scale = config.lora_alpha / rank
      delta = _lora_delta(kernel, _unbox(tree['lora_a']), _unbox(tree['lora_b']))
      merged = (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(kernel.dtype)
      out = {k: v for k, v in tree.items() if k not in LORA_NAMES}
      if isinstance(boxed, flax.linen.Partitioned):
        merged = boxed.replace_boxed(merged)
      out['kernel'] = merged
      return out
    return {k: merge(v) for k, v in tree.items()}

  return merge(params)


def init_lora_params(params, config: TransformerConfig, rng: jax.Array):
  """Adds `lora_a` (Kaiming-uniform) / `lora_b` (zeros) next to each targeted kernel of plain
  (unboxed) params that lack them, e.g. after `from_pretrained`, in the same shapes and
  distribution as `DecoderLM(config).init` with `config.lora_rank`. Needs lora_rank > 0."""
  rank = config.lora_rank
  if rank <= 0:
    return params
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  counter = [0]

  def add(tree, stacked):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, sub in tree.items():
      is_stack = stacked or name == 'layers'
      if (name in config.lora_targets and isinstance(sub, dict) and 'kernel' in sub
          and 'lora_a' not in sub):
        kernel = sub['kernel']
        lead = 1 if is_stack else 0
        n_in = 2 if name == 'o_proj' else 1  # o_proj reads [heads, head_dim]
        in_shape = kernel.shape[:lead + n_in]
        out_shape = kernel.shape[lead + n_in:]
        bound = 1.0 / math.sqrt(math.prod(in_shape[lead:]))
        key = jax.random.fold_in(rng, counter[0])
        counter[0] += 1
        sub = dict(sub)
        sub['lora_a'] = jax.random.uniform(key, in_shape + (rank,), config.param_dtype, -bound,
                                           bound)
        sub['lora_b'] = jnp.zeros(kernel.shape[:lead] + (rank,) + out_shape, config.param_dtype)
        out[name] = sub
      else:
        out[name] = add(sub, is_stack)
    return out

  return add(params, False)
