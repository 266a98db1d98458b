"""Chameleon's image tokenizer: the taming-transformers VQGAN, in Flax (NHWC).

Frames become grids of codebook indices (`encode`) and grids of indices become frames again
(`decode`); the transformer only ever sees the indices. The module keeps the parameter tree in
the shape of taming's state dict (`encoder/down_0_block_1/norm1/scale` for
`encoder.down.0.block.1.norm1.weight`) so checkpoint conversion is a rename plus a transpose
(jax_vlm/weights/vqgan.py).

Every method can be called on its own:
  `VQGAN(cfg).apply({'params': p}, images, method=VQGAN.encode)`
and a parameter tree that holds only the encoder half (what a transformers Chameleon directory
ships) is enough for `encode`.
"""

import dataclasses
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_vlm.core.errors import UserError

Array = jax.Array

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_NUM_GROUPS = 32  # taming's Normalize(): GroupNorm with 32 groups everywhere.
_NORM_EPS = 1e-6


def _dtype(name: Any, field: str) -> Any:
  if not isinstance(name, str):
    return name
  if name not in _DTYPES:
    raise UserError(f'vqgan.{field}={name!r} is not a dtype we know; use one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Hyper-parameters of the VQGAN, with the field names of configs/base.py:vqgan_config.

  taming's names in brackets: base_channels (ch), channel_multiplier (ch_mult), z_channels,
  embed_dim, num_embeddings (n_embed), out_channels (out_ch).
  """
  resolution: int = 512
  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 128
  channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = ()
  z_channels: int = 256
  embed_dim: int = 256
  num_embeddings: int = 8192
  double_z: bool = False
  # GroupNorm groups (taming: 32). Small tokenizers (the world's) may use fewer channels than 32.
  norm_groups: int = _NUM_GROUPS
  # Encode every f x f patch (f = downsample_factor) on its own, so a code sees only its patch.
  # Not taming's (its codes see their neighbours); for worlds made of independent cells, where
  # a context-free code makes an unchanged cell keep its code when a neighbour changes.
  patch_encoder: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    # Lists from YAML / ConfigDicts become tuples so the config stays hashable.
    object.__setattr__(self, 'channel_multiplier', tuple(int(m) for m in self.channel_multiplier))
    object.__setattr__(self, 'attn_resolutions', tuple(int(r) for r in self.attn_resolutions))
    object.__setattr__(self, 'dtype', _dtype(self.dtype, 'dtype'))
    object.__setattr__(self, 'param_dtype', _dtype(self.param_dtype, 'param_dtype'))
    if self.double_z:
      raise UserError('vqgan.double_z=True is a KL-autoencoder setting that a VQGAN cannot '
                      'use; set vqgan.double_z=False.')
    if not self.channel_multiplier:
      raise UserError('vqgan.channel_multiplier is empty; give one multiplier per resolution '
                      'level, e.g. (1, 1, 2, 2, 4).')
    for m in (1,) + self.channel_multiplier:
      if self.norm_groups < 1 or (self.base_channels * m) % self.norm_groups:
        raise UserError(f'vqgan.base_channels={self.base_channels} times channel multiplier {m} '
                        f'is not a multiple of vqgan.norm_groups={self.norm_groups} (GroupNorm '
                        'groups); change vqgan.base_channels, vqgan.channel_multiplier or '
                        'vqgan.norm_groups.')

  @classmethod
  def from_config(cls, cfg) -> 'VQGANConfig':
    """From the `config.vqgan` ConfigDict (or any mapping with the same keys)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    items = dict(cfg.items()) if hasattr(cfg, 'items') else dict(cfg)
    unknown = sorted(set(items) - fields)
    if unknown:
      raise UserError(f'vqgan config has unknown keys {unknown}; remove them or fix the spelling.')
    return cls(**items)

  @property
  def num_levels(self) -> int:
    return len(self.channel_multiplier)

  @property
  def downsample_factor(self) -> int:
    """Pixels per code along each side (16 for Chameleon: 512x512 -> 32x32 codes)."""
    return 2 ** (self.num_levels - 1)

  def code_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """Shape `(h', w')` of the code grid for an image of `height x width` (default: resolution)."""
    height = self.resolution if height is None else height
    width = height if width is None else width
    return height // self.downsample_factor, width // self.downsample_factor


def _group_norm(config: VQGANConfig, name: str) -> nn.GroupNorm:
  # Exact two-pass variance: the fast E[x^2]-E[x]^2 form drifts from PyTorch on large means.
  return nn.GroupNorm(num_groups=config.norm_groups, epsilon=_NORM_EPS, use_fast_variance=False,
                      dtype=jnp.float32, param_dtype=config.param_dtype, name=name)


def _conv(config: VQGANConfig, features: int, kernel: int, name: str | None, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  if padding is None:
    padding = [(kernel // 2, kernel // 2)] * 2  # PyTorch's symmetric padding=k//2.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=config.dtype, param_dtype=config.param_dtype, name=name)


class ResnetBlock(nn.Module):
  """norm-swish-conv twice plus a (1x1 `nin_shortcut` when channels change) residual."""
  config: VQGANConfig
  out_channels: int

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    h = nn.swish(_group_norm(self.config, 'norm1')(x))
    h = _conv(self.config, self.out_channels, 3, 'conv1')(h)
    h = nn.swish(_group_norm(self.config, 'norm2')(h))
    h = nn.Dropout(self.config.dropout)(h, deterministic=deterministic)
    h = _conv(self.config, self.out_channels, 3, 'conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.config, self.out_channels, 1, 'nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions of the feature map (1x1 conv projections)."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, height, width, c = x.shape
    h = _group_norm(self.config, 'norm')(x)
    q = _conv(self.config, c, 1, 'q')(h).reshape(b, height * width, c)
    k = _conv(self.config, c, 1, 'k')(h).reshape(b, height * width, c)
    v = _conv(self.config, c, 1, 'v')(h).reshape(b, height * width, c)
    logits = jnp.einsum('bqc,bkc->bqk', q, k).astype(jnp.float32) * (c ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('bqk,bkc->bqc', weights, v).reshape(b, height, width, c)
    return x + _conv(self.config, c, 1, 'proj_out')(h)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one zero row/column at the bottom/right (taming's choice)."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.config, x.shape[-1], 3, 'conv', stride=2, padding='VALID')(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.config, x.shape[-1], 3, 'conv')(x)


class MidBlock(nn.Module):
  """res - attention - res at the lowest resolution (taming's `mid`)."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    c = x.shape[-1]
    x = ResnetBlock(self.config, c, name='block_1')(x, deterministic)
    x = AttnBlock(self.config, name='attn_1')(x)
    return ResnetBlock(self.config, c, name='block_2')(x, deterministic)


class Encoder(nn.Module):
  """images `[b, h, w, in_channels]` -> latents `[b, h/f, w/f, z_channels]`."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    b, h, w, _ = x.shape
    f = cfg.downsample_factor
    if cfg.patch_encoder:
      x = einops.rearrange(x, 'b (h p) (w q) c -> (b h w) p q c', p=f, q=f)
    x = _conv(cfg, cfg.base_channels, 3, 'conv_in')(x.astype(cfg.dtype))
    res = cfg.resolution
    for level, mult in enumerate(cfg.channel_multiplier):
      for i in range(cfg.num_res_blocks):
        x = ResnetBlock(cfg, cfg.base_channels * mult, name=f'down_{level}_block_{i}')(
            x, deterministic)
        if res in cfg.attn_resolutions:
          x = AttnBlock(cfg, name=f'down_{level}_attn_{i}')(x)
      if level != cfg.num_levels - 1:
        x = Downsample(cfg, name=f'down_{level}_downsample')(x)
        res //= 2
    x = MidBlock(cfg, name='mid')(x, deterministic)
    x = nn.swish(_group_norm(cfg, 'norm_out')(x))
    x = _conv(cfg, cfg.z_channels, 3, 'conv_out')(x)
    if cfg.patch_encoder:
      x = einops.rearrange(x, '(b h w) 1 1 c -> b h w c', b=b, h=h // f, w=w // f)
    return x


class Decoder(nn.Module):
  """latents `[b, h', w', z_channels]` -> images `[b, h'*f, w'*f, out_channels]` (no tanh)."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, z: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    x = _conv(cfg, cfg.base_channels * cfg.channel_multiplier[-1], 3, 'conv_in')(
        z.astype(cfg.dtype))
    x = MidBlock(cfg, name='mid')(x, deterministic)
    res = cfg.resolution // cfg.downsample_factor
    for level in reversed(range(cfg.num_levels)):
      for i in range(cfg.num_res_blocks + 1):
        x = ResnetBlock(cfg, cfg.base_channels * cfg.channel_multiplier[level],
                        name=f'up_{level}_block_{i}')(x, deterministic)
        if res in cfg.attn_resolutions:
          x = AttnBlock(cfg, name=f'up_{level}_attn_{i}')(x)
      if level != 0:
        x = Upsample(cfg, name=f'up_{level}_upsample')(x)
        res *= 2
    x = nn.swish(_group_norm(cfg, 'norm_out')(x))
    return _conv(cfg, cfg.out_channels, 3, 'conv_out')(x).astype(jnp.float32)


class VectorQuantizer(nn.Module):
  """Nearest-codebook-entry lookup; holds `embedding [num_embeddings, embed_dim]`."""
  config: VQGANConfig

  def setup(self):
    n = self.config.num_embeddings
    # taming's init: U(-1/n, 1/n).
    self.embedding = self.param(
        'embedding', lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -1 / n, 1 / n),
        (n, self.config.embed_dim), self.config.param_dtype)

  def __call__(self, features: Array) -> tuple[Array, Array]:
    """features `[..., embed_dim]` -> (codebook vectors `[..., embed_dim]` f32,
    codes `[...]` int32)."""
    codebook = jnp.asarray(self.embedding, jnp.float32)
    flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
    # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e, as the reference computes it, in full fp32 precision:
    # codes must not flip between implementations.
    distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)
                 - 2 * jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST))
    codes = jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(features.shape[:-1])
    return self.embed(codes), codes

  def embed(self, codes: Array) -> Array:
    return jnp.take(jnp.asarray(self.embedding, jnp.float32), codes, axis=0)


class VQGAN(nn.Module):
  """The taming VQGAN: encoder, quant_conv, codebook, post_quant_conv, decoder.

  Parameters (top level): `encoder`, `quant_conv`, `quantizer/embedding`, `post_quant_conv`,
  `decoder`. Images are NHWC floats in [-1, 1].
  """
  config: VQGANConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.quant_conv = _conv(cfg, cfg.embed_dim, 1, None)
    self.quantizer = VectorQuantizer(cfg)
    self.post_quant_conv = _conv(cfg, cfg.z_channels, 1, None)
    self.decoder = Decoder(cfg)

  def encode(self, images: Array, deterministic: bool = True) -> tuple[Array, Array]:
    """images `[b, h, w, 3]` in [-1, 1] -> (codes `[b, h', w']` int32,
    pre-quantisation features `[b, h', w', embed_dim]` f32, i.e. the output of `quant_conv`)."""
    features = self.quant_conv(self.encoder(images, deterministic)).astype(jnp.float32)
    _, codes = self.quantizer(features)
    return codes, features

  def quantize(self, features: Array) -> tuple[Array, Array]:
    """features `[b, h', w', embed_dim]` -> (codebook vectors `[b, h', w', embed_dim]`,
    codes `[b, h', w']` int32). No straight-through here: see `__call__`."""
    return self.quantizer(features)

  def embed_codes(self, codes: Array) -> Array:
    """codes `[b, h', w']` int -> codebook vectors `[b, h', w', embed_dim]` f32."""
    return self.quantizer.embed(codes)

  def decode_quantized(self, quantized: Array, deterministic: bool = True) -> Array:
    """codebook vectors `[b, h', w', embed_dim]` -> images `[b, h, w, out_channels]` f32."""
    return self.decoder(self.post_quant_conv(quantized.astype(self.config.dtype)), deterministic)

  def decode(self, codes: Array, deterministic: bool = True) -> Array:
    """codes `[b, h', w']` int -> images `[b, h'*f, w'*f, out_channels]` f32 (about [-1, 1])."""
    return self.decode_quantized(self.embed_codes(codes), deterministic)

  def __call__(self, images: Array, deterministic: bool = True):
    """Training pass: images `[b, h, w, 3]` -> (reconstruction `[b, h, w, 3]`,
    features `[b, h', w', embed_dim]`, quantized `[b, h', w', embed_dim]`, codes `[b, h', w']`).

    The decoder sees the straight-through estimate (forward: codebook vectors, backward:
    identity to the encoder); `quantized` is the plain lookup so `vq_losses` can pull the
    codebook towards the features.
    """
    features = self.quant_conv(self.encoder(images, deterministic)).astype(jnp.float32)
    quantized, codes = self.quantizer(features)
    straight_through = features + jax.lax.stop_gradient(quantized - features)
    reconstruction = self.decode_quantized(straight_through, deterministic)
    return reconstruction, features, quantized, codes


def vq_losses(features: Array, quantized: Array, beta: float = 0.25) -> tuple[Array, Array]:
  """(codebook_loss, commitment_loss) of VQ-VAE training, both scalars.

  codebook_loss = mean |sg(features) - quantized|^2 moves the codebook to the features;
  commitment_loss = beta * mean |features - sg(quantized)|^2 keeps the encoder near its codes.
  (taming's "legacy" quantizer put beta on the other term; this is the paper's form.)
  """
  features = features.astype(jnp.float32)
  quantized = quantized.astype(jnp.float32)
  codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(features) - quantized))
  commitment_loss = beta * jnp.mean(jnp.square(features - jax.lax.stop_gradient(quantized)))
  return codebook_loss, commitment_loss
