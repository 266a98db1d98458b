"""Building blocks of the decoder: embedding, RMSNorm, per-head QK LayerNorm, RoPE, attention, the
gated MLP, and the linear projection that can carry a LoRA adapter.

Every parameter has logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`;
the LoRA rank axis is left unnamed, i.e. replicated). Projections keep heads as their own axes
(`q_proj.kernel [embed, heads, head_dim]`, `o_proj.kernel [heads, head_dim, embed]`) so that heads
and head_dim can be sharded separately; convert/hf.py reshapes transformers' `[out, in]` matrices
into this layout.
"""

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_vlm.models.config import TransformerConfig

Array = jax.Array
default_init = nn.initializers.normal(stddev=0.02)  # transformers' initializer_range
QK_NORM_EPS = 1e-5  # fixed in Chameleon's ChameleonLayerNorm, not a config value


@jax.tree_util.register_pytree_node_class
class LayerBuffers:
  """A KV cache's keys (or values) as one buffer per layer, for models with scan_layers=False.

  Each layer writes and reads its own [batch, kv_heads, max_len, head_dim] buffer, so a decode
  step's attention reads it in place; a slice of one stacked [layers, ...] array is copied before
  the attention dot on XLA:CPU (docs/benchmarks.md). `shape` and `dtype` describe the stack.
  """

  def __init__(self, layers):
    self.layers = tuple(layers)

  def tree_flatten(self):
    return self.layers, None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    return cls(children)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.layers),) + tuple(self.layers[0].shape)

  @property
  def dtype(self):
    return self.layers[0].dtype

  def __len__(self) -> int:
    return len(self.layers)

  def __getitem__(self, layer: int) -> Array:
    return self.layers[layer]

  def map(self, fn) -> 'LayerBuffers':
    return LayerBuffers(fn(a) for a in self.layers)

  def set(self, layer: int, buffer: Array) -> 'LayerBuffers':
    return LayerBuffers(self.layers[:layer] + (buffer,) + self.layers[layer + 1:])


def _contract(x: Array, kernel: Array, n_in: int, out_dtype=None) -> Array:
  """x [..., *in] . kernel [*in, *out] -> [..., *out], contracting the trailing n_in dims of x.

  On CPU, as one 2-D matmul, [prod(...), prod(in)] . [prod(in), prod(out)], reshaped back: XLA:CPU
  ran the N-D contraction's backward through slow transposed copies, and the 2-D form made a world
  size training step about 30% faster. Elsewhere the N-D contraction stays: for a TPU v5e the
  compiler estimated the 2-D form's step 8% slower (docs/benchmarks.md has both). The choice is
  made where the program is lowered (`lax.platform_dependent`), so an ahead-of-time TPU compile
  on a CPU host gets the TPU form.
  """
  lead, in_shape, out_shape = x.shape[:x.ndim - n_in], kernel.shape[:n_in], kernel.shape[n_in:]

  def as_2d(x, kernel):
    y = lax.dot_general(x.reshape(math.prod(lead), math.prod(in_shape)),
                        kernel.reshape(math.prod(in_shape), math.prod(out_shape)),
                        (((1,), (0,)), ((), ())), preferred_element_type=out_dtype)
    return y.reshape(lead + out_shape)

  def as_nd(x, kernel):
    x_axes = tuple(range(x.ndim - n_in, x.ndim))
    return lax.dot_general(x, kernel, ((x_axes, tuple(range(n_in))), ((), ())),
                           preferred_element_type=out_dtype)
  return lax.platform_dependent(x, kernel, cpu=as_2d, default=as_nd)


def _lora_a_init(n_in: int):
  """Kaiming-uniform over the input dims (as peft does), so the adapter starts as a random map."""
  def init(key, shape, dtype=jnp.float32):
    bound = 1.0 / math.sqrt(math.prod(shape[-1 - n_in:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Projection(nn.Module):
  """A bias-free linear map over the trailing `len(in_axes)` input dims, optionally with LoRA.

  Params: `kernel [*in, *features]`; with `lora_rank > 0` also `lora_a [*in, rank]` (random) and
  `lora_b [rank, *features]` (zeros), so y = x.W + lora_scale * dropout(x).A.B and the adapter
  starts as the identity change.
  """
  features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_dtype: Optional[Any] = None  # e.g. float32 logits from bfloat16 activations
  lora_rank: int = 0
  lora_scale: float = 1.0
  lora_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    n_in = len(self.in_axes)
    in_shape = x.shape[x.ndim - n_in:]
    kernel_axes = self.in_axes + self.out_axes
    kernel = self.param('kernel', nn.with_logical_partitioning(default_init, kernel_axes),
                        in_shape + tuple(self.features), self.param_dtype)
    out_dtype = self.out_dtype or self.dtype
    y = _contract(x.astype(self.dtype), kernel.astype(self.dtype), n_in, out_dtype)
    if self.lora_rank:
      a_init = nn.with_logical_partitioning(_lora_a_init(n_in), self.in_axes + (None,))
      b_init = nn.with_logical_partitioning(nn.initializers.zeros, (None,) + self.out_axes)
      lora_a = self.param('lora_a', a_init, in_shape + (self.lora_rank,), self.param_dtype)
      lora_b = self.param('lora_b', b_init, (self.lora_rank,) + tuple(self.features),
                          self.param_dtype)
      h = x
      if self.lora_dropout > 0:
        h = nn.Dropout(self.lora_dropout)(h, deterministic=deterministic)
      h = _contract(h.astype(self.dtype), lora_a.astype(self.dtype), n_in)
      delta = _contract(h, lora_b.astype(self.dtype), 1, out_dtype) * self.lora_scale
      y = y + delta.astype(out_dtype)
    return y.astype(out_dtype)


class Embed(nn.Module):
  """Token embedding `embedding [vocab, embed]`; `attend` is the tied LM head."""
  num_embeddings: int
  features: int
  scale_by_sqrt_dim: bool = False  # Gemma
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    init = nn.with_logical_partitioning(default_init, ('vocab', 'embed'))
    self.embedding = self.param('embedding', init, (self.num_embeddings, self.features),
                                self.param_dtype)

  def __call__(self, token_ids: Array) -> Array:
    """token_ids [batch, seq] -> [batch, seq, embed]."""
    x = jnp.take(self.embedding, token_ids, axis=0).astype(self.dtype)
    if self.scale_by_sqrt_dim:
      # In the compute dtype, as transformers does (sqrt(3072) becomes 55.5 in bfloat16).
      x = x * jnp.asarray(math.sqrt(self.features), self.dtype)
    return x

  def attend(self, x: Array) -> Array:
    """x [batch, seq, embed] -> float32 logits [batch, seq, vocab]."""
    embedding = self.embedding.T.astype(self.dtype)
    return _contract(x.astype(self.dtype), embedding, 1, jnp.float32)


class RMSNorm(nn.Module):
  """RMSNorm over the last dim with statistics in float32.

  plus_one=False (Chameleon): w * x_normed (w initialised at 1), the product in the compute dtype.
  plus_one=True (Gemma): x_normed * (1 + w) (w initialised at 0), the product in float32.
  """
  eps: float = 1e-5
  plus_one: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param('scale', nn.with_logical_partitioning(init, ('embed',)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class HeadLayerNorm(nn.Module):
  """Chameleon's QK norm: LayerNorm statistics over head_dim only, then each head's own scale and
  bias (`scale`, `bias` [heads, head_dim]), i.e. transformers' ChameleonLayerNorm."""
  axes: tuple[str, str] = ('heads', 'head_dim')
  eps: float = QK_NORM_EPS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x [batch, seq, heads, head_dim] -> same shape."""
    shape = x.shape[-2:]
    ones = nn.with_logical_partitioning(nn.initializers.ones, self.axes)
    zeros = nn.with_logical_partitioning(nn.initializers.zeros, self.axes)
    scale = self.param('scale', ones, shape, self.param_dtype)
    bias = self.param('bias', zeros, shape, self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = ((x32 - mean) * lax.rsqrt(var + self.eps)).astype(self.dtype)
    return normed * scale.astype(self.dtype) + bias.astype(self.dtype)


def rope_sin_cos(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """positions [batch, seq] -> (sin, cos) [batch, seq, head_dim] float32, in the rotate-half layout
  of transformers' checkpoints (the frequencies repeated over the two halves)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.sin(emb), jnp.cos(emb)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
  """x [batch, seq, heads, head_dim], sin/cos [batch, seq, head_dim] -> x rotated (rotate-half)."""
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def attention_mask(q_segment_ids: Array, q_slots: Array, kv_segment_ids: Array,
                   kv_slots: Array) -> Array:
  """Who attends to whom: a query sees keys at earlier or equal slots of its own (non-zero) segment.

  q_segment_ids [batch, q], q_slots [q], kv_segment_ids [batch, kv], kv_slots [kv] -> bool
  [batch, 1, q, kv]. Slots are indices in the key array (the cache), so causality is by write order.
  """
  causal = kv_slots[None, None, :] <= q_slots[None, :, None]
  same = kv_segment_ids[:, None, :] == q_segment_ids[:, :, None]
  real = (q_segment_ids != 0)[:, :, None]
  return (causal & same & real)[:, None]


def _einsum_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """q [b, kv_heads, group, q, d], k/v [b, kv_heads, kv, d], mask [b, 1, q, kv] -> like q.

  Heads lead (the layout batched matmuls want; docs/benchmarks.md has the numbers).
  """
  logits = jnp.einsum('bkgsd,bktd->bkgst', q, k, preferred_element_type=jnp.float32)
  logits = logits * (q.shape[-1] ** -0.5)
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgst,bktd->bkgsd', probs, v)


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array, impl: str = 'xla',
                          is_causal: bool = False, causal_chunk: int = 0,
                          kv_heads_major: bool = False) -> Array:
  """Grouped-query attention.

  q [batch, q, heads, head_dim], k/v [batch, kv, kv_heads, head_dim] (or, with `kv_heads_major`,
  [batch, kv_heads, kv, head_dim]: the KV cache's layout, which 'xla' reads without a transpose),
  mask bool [batch, 1, q, kv] -> [batch, q, heads, head_dim]. Query head h uses kv head
  h // (heads // kv_heads), as in transformers' repeat_kv. `impl`: 'xla' = einsum with a float32
  softmax; 'cudnn' / 'auto' = jax.nn.dot_product_attention (cuDNN flash attention; 'auto' picks it
  only on GPU in 16-bit).
  `is_causal` promises the mask is (at most) causal with aligned slots (query i sees keys <= i),
  letting cuDNN skip blocks; with it, 'xla' and `causal_chunk > 0` split the queries into blocks
  of `causal_chunk` and block j only reads keys `[0, end of block j)`: the same result with about
  half the attention FLOPs and memory for long rows (docs/benchmarks.md has the timings).
  Fully masked query rows (padding) get a uniform softmax over all keys, never NaN.
  """
  if impl != 'xla':
    if kv_heads_major:
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    implementation = None
    if impl == 'cudnn':
      implementation = 'cudnn'
    elif (impl == 'auto' and jax.default_backend() == 'gpu'
          and q.dtype in (jnp.bfloat16, jnp.float16)):
      implementation = 'cudnn'
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        implementation=implementation)
  if not kv_heads_major:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  batch, q_len, heads, head_dim = q.shape
  kv_heads, kv_len = k.shape[1], k.shape[2]
  q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
  if is_causal and causal_chunk > 0 and q_len == kv_len and q_len > causal_chunk:
    blocks = []
    for start in range(0, q_len, causal_chunk):
      end = min(q_len, start + causal_chunk)
      blocks.append(_einsum_attention(q[:, :, :, start:end], k[:, :, :end], v[:, :, :end],
                                      mask[:, :, start:end, :end]))
    out = jnp.concatenate(blocks, axis=3)
    # Rows that see no key average all values, as the unchunked softmax does.
    seen = jnp.any(mask, axis=-1)[:, :, None, :, None]  # [b, 1, 1, q, 1]
    out = jnp.where(seen, out, jnp.mean(v, axis=2, keepdims=True)[:, :, None])
  else:
    out = _einsum_attention(q, k, v, mask)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)


def _projection(config: TransformerConfig, name: str, x: Array, features, in_axes, out_axes,
                deterministic: bool) -> Array:
  """Applies the named projection (with LoRA if it is one of config.lora_targets)."""
  rank = config.lora_rank if name in config.lora_targets else 0
  return Projection(tuple(features), in_axes, out_axes, dtype=config.dtype,
                    param_dtype=config.param_dtype, lora_rank=rank, lora_scale=config.lora_scale,
                    lora_dropout=config.lora_dropout, name=name)(x, deterministic)


class Attention(nn.Module):
  """Self-attention with optional QK norm, RoPE, GQA and a KV-cache slot update."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, sin: Array, cos: Array, mask: Array,
               cache_kv: Optional[tuple[Array, Array]], cache_index: Optional[Array],
               layer: Any = None, deterministic: bool = True):
    """x [batch, seq, embed]; cache_kv: every layer's keys and values
    ([layers, batch, kv_heads, max_len, head_dim] x 2, or two LayerBuffers) or None; cache_index []
    the slot of x's first token; layer: this layer's index into the cache (int or [] int32; an int
    for LayerBuffers). Writes x's keys and values into its layer's slots in place and returns
    (out [batch, seq, embed], new cache_kv)."""
    c = self.config
    proj = functools.partial(_projection, c, deterministic=deterministic)
    q = proj('q_proj', x, (c.num_heads, c.head_dim), ('embed',), ('heads', 'head_dim'))
    k = proj('k_proj', x, (c.num_kv_heads, c.head_dim), ('embed',), ('kv_heads', 'head_dim'))
    v = proj('v_proj', x, (c.num_kv_heads, c.head_dim), ('embed',), ('kv_heads', 'head_dim'))
    if c.qk_norm:
      norm = functools.partial(HeadLayerNorm, dtype=c.dtype, param_dtype=c.param_dtype)
      q = norm(('heads', 'head_dim'), name='q_norm')(q)
      k = norm(('kv_heads', 'head_dim'), name='k_norm')(k)
    q_axes = ('batch', 'length', 'heads', 'head_dim')
    kv_axes = ('batch', 'length', 'kv_heads', 'head_dim')
    q = nn.with_logical_constraint(apply_rope(q, sin, cos), q_axes)
    k = nn.with_logical_constraint(apply_rope(k, sin, cos), kv_axes)
    v = nn.with_logical_constraint(v, kv_axes)

    new_cache_kv = None
    if cache_kv is not None:
      start = (layer, 0, 0, cache_index, 0)

      def write_and_read(cache, new):
        new = new.transpose(0, 2, 1, 3)[None].astype(cache.dtype)  # [1, b, kv_heads, seq, d]
        if isinstance(cache, LayerBuffers):
          if not isinstance(layer, int):
            raise ValueError('A cache of per-layer buffers (init_cache for scan_layers=False) '
                             'needs an unscanned model; build the cache from the same config.')
          buffer = lax.dynamic_update_slice(cache[layer], new[0], start[1:])
          return cache.set(layer, buffer), buffer.astype(c.dtype)
        cache = lax.dynamic_update_slice(cache, new, start)
        read = lax.dynamic_index_in_dim(cache, layer, 0, keepdims=False)
        return cache, read.astype(c.dtype)

      (k_cache, k), (v_cache, v) = write_and_read(cache_kv[0], k), write_and_read(cache_kv[1], v)
      new_cache_kv = (k_cache, v_cache)

    out = dot_product_attention(q, k, v, mask, c.attention_impl, is_causal=cache_kv is None,
                                causal_chunk=c.attention_chunk,
                                kv_heads_major=cache_kv is not None)
    out = nn.with_logical_constraint(out, q_axes)
    out = proj('o_proj', out, (c.d_model,), ('heads', 'head_dim'), ('embed',))
    return out, new_cache_kv


class MLP(nn.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU for Chameleon, GeGLU (tanh gelu) for Gemma."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    c = self.config
    proj = functools.partial(_projection, c, deterministic=deterministic)
    gate = proj('gate_proj', x, (c.mlp_dim,), ('embed',), ('mlp',))
    up = proj('up_proj', x, (c.mlp_dim,), ('embed',), ('mlp',))
    if c.mlp_activation == 'gelu_tanh':
      gate = jax.nn.gelu(gate, approximate=True)
    else:
      gate = jax.nn.silu(gate)
    h = nn.with_logical_constraint(gate * up, ('batch', 'length', 'mlp'))
    return proj('down_proj', h, (c.d_model,), ('mlp',), ('embed',))
