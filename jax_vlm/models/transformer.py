"""`DecoderLM`: the decoder-only transformer of Chameleon/Anole and Gemma/Liquid, with a KV cache.

    module = DecoderLM(config)                       # config: TransformerConfig
    logits = module.apply({'params': p}, token_ids)  # [batch, seq] -> [batch, seq, vocab] float32

Layers are one `DecoderLayer` applied `num_layers` times, either with `nn.scan` (`scan_layers`;
params stacked on a leading `layers` axis under `params['layers']`) or as `layers_0`, `layers_1`,
..., each wrapped in `nn.remat` under `remat_policy`. Parameter names follow transformers' keys
(`embed_tokens`, `layers.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, `norm`, `lm_head`).

Packing and padding: `segment_ids [batch, seq]` (0 = padding, 1, 2, ... = examples) restrict
attention to earlier tokens of the same segment; `positions` default to `arange(seq)` per row (give
them explicitly for packed rows, where each example restarts at 0).

KV cache (for samplers; everything has a fixed shape, so it lives in `lax.while_loop` state):

    KVCache.k, .v       [layers, batch, kv_heads, max_len, head_dim]   keys after RoPE, values
                        (scan_layers=False: `LayerBuffers`, one [batch, ...] buffer per layer,
                        which each layer's attention reads in place instead of a copied slice)
    KVCache.segment_ids [batch, max_len] int32   segment of each written slot, 0 = empty / padding
    KVCache.next_position [batch] int32          RoPE position the row's next real token gets
    KVCache.index       [] int32                 next slot to write (the same for all rows)

A call with `cache=` writes its `seq` tokens into slots `index .. index+seq-1` of every row and
returns `(logits, new_cache)`; each query attends to earlier-or-equal slots with its own segment id.
Typical use:

    cache = init_cache(config, batch, max_len)
    logits, cache = module.apply(v, prompt_ids, segment_ids=prompt_segments, cache=cache)  # prefill
    for _ in range(n):
      logits, cache = module.apply(v, next_ids[:, None], cache=cache)  # one token a step

Prompts may be left- or right-padded (segment 0 on the padding): padded slots are never attended.
With `cache=` and `positions=None`, positions continue each row's own count of real tokens
(`next_position + cumsum(segment_ids != 0) - 1`), so a row's first real token is at position 0
whatever its padding, and decode steps (`segment_ids` default 1) continue at `next_position`;
pass `positions` to override. The caller keeps `index + seq <= max_len` (dynamic_update_slice
would clamp silently). `repeat_cache(cache, k)` tiles rows (row i -> rows i*k .. i*k+k-1) so K
candidates share one prefill (best-of-K). `cache_logical_axes()` names the cache axes for sharding.
"""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_vlm.models.config import TransformerConfig, remat_policy_fn
from jax_vlm.models.layers import (
  MLP,
  Attention,
  Embed,
  LayerBuffers,
  Projection,
  RMSNorm,
  _contract,
  attention_mask,
  rope_sin_cos,
)

Array = jax.Array


@flax.struct.dataclass
class KVCache:
  """Fixed-size key/value cache; see the module docstring for the layout."""
  k: Array | LayerBuffers  # [layers, batch, kv_heads, max_len, head_dim]
  v: Array | LayerBuffers  # [layers, batch, kv_heads, max_len, head_dim]
  segment_ids: Array  # [batch, max_len] int32, 0 = empty slot or padding
  next_position: Array  # [batch] int32
  index: Array  # [] int32

  @property
  def max_len(self) -> int:
    return self.segment_ids.shape[1]

  @property
  def batch(self) -> int:
    return self.segment_ids.shape[0]


def init_cache(config: TransformerConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows of up to `max_len` tokens (dtype defaults to config.dtype):
  stacked keys and values for a scanned model, per-layer `LayerBuffers` for an unscanned one."""
  # Heads before slots: attention reads a layer's [batch, kv_heads, max_len, head_dim] as is.
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)
  dtype = dtype or config.dtype
  if config.scan_layers:
    k = jnp.zeros((config.num_layers,) + shape, dtype)
    v = jnp.zeros((config.num_layers,) + shape, dtype)
  else:
    k = LayerBuffers(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    v = LayerBuffers(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(k=k, v=v,
                 segment_ids=jnp.zeros((batch, max_len), jnp.int32),
                 next_position=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))


def repeat_cache(cache: KVCache, k: int) -> KVCache:
  """Tiles every row k times: row i becomes rows i*k .. i*k+k-1 (best-of-K from one prefill)."""
  def tile(kv):
    if isinstance(kv, LayerBuffers):
      return kv.map(lambda a: jnp.repeat(a, k, axis=0))
    return jnp.repeat(kv, k, axis=1)
  return KVCache(k=tile(cache.k), v=tile(cache.v),
                 segment_ids=jnp.repeat(cache.segment_ids, k, axis=0),
                 next_position=jnp.repeat(cache.next_position, k, axis=0), index=cache.index)


def cache_logical_axes(config: TransformerConfig | None = None) -> KVCache:
  """Logical axis names of each cache field (a KVCache of tuples), for building shardings; pass
  the model config to match `init_cache(config, ...)` (per-layer buffers when unscanned)."""
  kv = ('layers', 'batch', 'kv_heads', 'length', 'head_dim')
  k = v = kv
  if config is not None and not config.scan_layers:
    k = v = LayerBuffers((kv[1:],) * config.num_layers)
  return KVCache(k=k, v=v, segment_ids=('batch', 'length'), next_position=('batch',), index=())


class DecoderLayer(nn.Module):
  """One block: pre-norm attention and MLP residuals, or swin_norm's norm-after-branch variant."""
  config: TransformerConfig
  index: int | None = None  # this layer's place when unscanned (static, unlike the carry's count)

  @nn.compact
  def __call__(self, carry, sin, cos, mask, cache_index, deterministic=True):
    """carry = (x [batch, seq, embed], cache_kv or None, layer) -> (carry, None), the form
    nn.scan wants: the whole stacked cache rides in the carry and each layer writes its own slots
    in place (scanning the cache as per-layer inputs/outputs would copy all of it every step).
    `layer` is this layer's index ([] int32 under scan, else an int; advanced here). See
    Attention for the rest."""
    x, cache_kv, layer = carry
    # Under remat the carry's count is traced; per-layer cache buffers need a Python int.
    here = layer if self.index is None else self.index
    c = self.config
    norm = lambda name: RMSNorm(c.norm_eps, c.norm_plus_one, c.dtype, c.param_dtype, name=name)
    attn = Attention(c, name='self_attn')
    mlp = MLP(c, name='mlp')
    if c.swin_norm:
      # Chameleon's swin_norm: normalise each branch's output before adding it to the residual.
      h, cache_kv = attn(x, sin, cos, mask, cache_kv, cache_index, here, deterministic)
      x = x + norm('input_layernorm')(h)
      x = x + norm('post_attention_layernorm')(mlp(x, deterministic))
    else:
      h = norm('input_layernorm')(x)
      h, cache_kv = attn(h, sin, cos, mask, cache_kv, cache_index, here, deterministic)
      x = x + h
      x = x + mlp(norm('post_attention_layernorm')(x), deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, cache_kv, layer + 1), None


class DecoderLM(nn.Module):
  """Decoder-only transformer over a unified text + image-token vocabulary.

  `hf_source`: the transformers directory the weights were read from (weights.hf.from_pretrained),
  so save_pretrained keeps that checkpoint's config.json extras and non-LM tensors. Provenance, not
  architecture: it takes no part in equality or hashing, so one architecture compiles once.
  """
  config: TransformerConfig
  hf_source: str = dataclasses.field(default='', compare=False)

  def setup(self):
    c = self.config
    self.embed_tokens = Embed(c.vocab_size, c.d_model, c.scale_embeddings, c.dtype, c.param_dtype)
    layer_cls = DecoderLayer
    if c.remat_policy != 'none':
      # static_argnums counts self as 0: `deterministic` is argument 6.
      layer_cls = nn.remat(layer_cls, policy=remat_policy_fn(c.remat_policy),
                           prevent_cse=not c.scan_layers, static_argnums=(6,))
    if c.scan_layers:
      self.layers = nn.scan(
          layer_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          # (sin, cos, mask, cache_index, deterministic); the cache travels in the carry.
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=c.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})(c)
    else:
      # named layers_0, layers_1, ...
      self.layers = [layer_cls(c, index=i) for i in range(c.num_layers)]
    self.norm = RMSNorm(c.norm_eps, c.norm_plus_one, c.dtype, c.param_dtype)
    if not c.tie_embeddings:
      self.lm_head = Projection((c.vocab_size,), ('embed',), ('vocab',), dtype=c.dtype,
                                param_dtype=c.param_dtype, out_dtype=jnp.float32)

  def __call__(self, token_ids, positions=None, segment_ids=None, cache=None, deterministic=True,
               return_hidden=False):
    """token_ids [batch, seq] int32 -> logits [batch, seq, vocab] float32.

    positions [batch, seq] int32 (default arange, or the cache's per-row continuation);
    segment_ids [batch, seq] int32 (0 = padding; default all ones); cache: a KVCache to write the
    tokens into. Returns logits, then hidden [batch, seq, embed] (after the final norm) if
    return_hidden, then the new cache if a cache was given: `logits`, `(logits, hidden)`,
    `(logits, cache)` or `(logits, hidden, cache)`.
    """
    c = self.config
    batch, seq = token_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((batch, seq), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    if cache is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
      slots = jnp.arange(seq, dtype=jnp.int32)
      mask = attention_mask(segment_ids, slots, segment_ids, slots)
      cache_kv, index = None, None
    else:
      index = cache.index
      real = (segment_ids != 0).astype(jnp.int32)
      if positions is None:
        positions = jnp.maximum(cache.next_position[:, None] + jnp.cumsum(real, axis=1) - 1, 0)
      kv_segment_ids = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index))
      mask = attention_mask(segment_ids, index + jnp.arange(seq, dtype=jnp.int32), kv_segment_ids,
                            jnp.arange(cache.max_len, dtype=jnp.int32))
      cache_kv = (cache.k, cache.v)
    sin, cos = rope_sin_cos(positions, c.head_dim, c.rope_theta)

    x = nn.with_logical_constraint(self.embed_tokens(token_ids), ('batch', 'length', 'embed'))
    if c.scan_layers:
      carry = (x, cache_kv, jnp.zeros((), jnp.int32))
      carry, _ = self.layers(carry, sin, cos, mask, index, deterministic)
    else:
      carry = (x, cache_kv, 0)
      for layer in self.layers:
        carry, _ = layer(carry, sin, cos, mask, index, deterministic)
    x, new_kv, _ = carry
    hidden = self.norm(x)
    logits = self.logits_from_hidden(hidden)

    outputs = (logits,)
    if return_hidden:
      outputs += (hidden,)
    if cache is not None:
      outputs += (KVCache(k=new_kv[0], v=new_kv[1], segment_ids=kv_segment_ids,
                          next_position=cache.next_position + real.sum(axis=1),
                          index=index + seq),)
    return outputs[0] if len(outputs) == 1 else outputs

  def head_kernel(self, vocab_ids):
    """The LM head's columns for `vocab_ids` [n] as an [embed, n] kernel (the tied embedding's
    rows, transposed, when tied), for `logits_from_hidden(hidden, kernel)`. Image decoding reads
    only the image tokens' columns (inference.sampler): 8,192 of Chameleon's 65,536."""
    if self.config.tie_embeddings:
      return jnp.take(self.embed_tokens.embedding, vocab_ids, axis=0).T
    return jnp.take(self.lm_head.variables['params']['kernel'], vocab_ids, axis=1)

  def logits_from_hidden(self, hidden, kernel=None):
    """hidden [batch, seq, embed] (after the final norm) -> float32 logits [batch, seq, vocab];
    `module.apply(v, hidden, method=DecoderLM.logits_from_hidden)` for chunked losses. kernel: an
    [embed, n] head from `head_kernel` instead of the whole one (logits [batch, seq, n])."""
    if kernel is not None:
      c = self.config
      logits = _contract(hidden.astype(c.dtype), kernel.astype(c.dtype), 1, jnp.float32)
    elif self.config.tie_embeddings:
      logits = self.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
