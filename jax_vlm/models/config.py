"""`TransformerConfig`: the static description of a decoder-only transformer.

One frozen (hashable) dataclass, so a module can hold it as a Linen attribute and `jax.jit` can
treat it as static. configs/base.py's model section is built from the field defaults; `dtype` and
`param_dtype` are strings there and numpy/jnp dtypes here. What differs between the two families
(MLP activation, embedding scale, norm style, QK norm) is derived from `family`, so a preset only
names the family and the sizes.

  chameleon  Chameleon / Anole (transformers' ChameleonModel): SwiGLU, RMSNorm `w * x`, per-head QK
             LayerNorm, optional swin_norm, untied LM head.
  gemma      Gemma / Liquid (transformers' GemmaForCausalLM): GeGLU (tanh gelu), RMSNorm
             `(1 + w) * x`, embeddings scaled by sqrt(d_model), tied LM head.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.errors import UserError, require

FAMILIES = ('chameleon', 'gemma')
ATTENTION_IMPLS = ('xla', 'cudnn', 'auto')
REMAT_POLICIES = ('none', 'nothing_saveable', 'dots', 'dots_no_batch', 'everything_saveable')
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')


def to_dtype(name: Any) -> jnp.dtype:
  """'bfloat16' / 'float32' / a dtype -> a numpy dtype (hashable, accepted by jnp)."""
  try:
    return jnp.dtype(name)
  except TypeError:
    raise UserError(
        f'dtype {name!r} is not a dtype name; use e.g. "bfloat16" or "float32".') from None


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes and switches of a `DecoderLM`, and the one place their defaults are written."""
  family: str = 'chameleon'  # 'chameleon' (Chameleon/Anole) or 'gemma' (Liquid)
  vocab_size: int = 65536
  d_model: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  mlp_dim: int = 11008
  max_positions: int = 4096
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  qk_norm: bool = True  # Chameleon's per-head QK LayerNorm
  swin_norm: bool = False  # Chameleon-30B style post-norm inside the residual branch
  tie_embeddings: bool = False
  dtype: Any = jnp.dtype('bfloat16')  # compute dtype
  param_dtype: Any = jnp.dtype('float32')
  scan_layers: bool = True
  remat_policy: str = 'nothing_saveable'  # one of REMAT_POLICIES
  # 'xla' (einsum) | 'cudnn' | 'auto' (jax.nn.dot_product_attention)
  attention_impl: str = 'xla'
  # 'xla' causal attention in query blocks of this many tokens, each reading only the keys it can
  # see (about half the FLOPs on long rows); 0 = one block.
  attention_chunk: int = 512
  # LoRA adapters live inside the projection layers; rank 0 means none.
  lora_rank: int = 0
  lora_alpha: float = 32.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    # Normalise dtypes and sequences so equal configs hash equal.
    object.__setattr__(self, 'dtype', to_dtype(self.dtype))
    object.__setattr__(self, 'param_dtype', to_dtype(self.param_dtype))
    object.__setattr__(self, 'lora_targets', tuple(self.lora_targets))
    self.validate()

  def validate(self) -> None:
    require(self.family in FAMILIES,
            f'model.family {self.family!r} is not supported; use one of {", ".join(FAMILIES)}.')
    require(self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
            f'model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads '
            f'({self.num_kv_heads}).')
    require(self.head_dim % 2 == 0, f'model.head_dim ({self.head_dim}) must be even for RoPE.')
    require(self.attention_impl in ATTENTION_IMPLS,
            f'model.attention_impl {self.attention_impl!r} is not supported; use one of '
            f'{", ".join(ATTENTION_IMPLS)}.')
    require(self.attention_chunk >= 0,
            f'model.attention_chunk ({self.attention_chunk}) must be >= 0 (0 = no chunking).')
    require(self.remat_policy in REMAT_POLICIES,
            f'model.remat_policy {self.remat_policy!r} is not supported; use one of '
            f'{", ".join(REMAT_POLICIES)}.')
    unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
    require(not unknown, f'model.lora_targets has unknown projections {unknown}; use names from '
            f'{", ".join(LORA_TARGETS)}.')
    require(self.lora_rank >= 0, f'model.lora_rank ({self.lora_rank}) must be >= 0.')

  # --- what the family decides ---------------------------------------------------------------
  @property
  def mlp_activation(self) -> str:
    """'silu' (SwiGLU, Chameleon) or 'gelu_tanh' (GeGLU, Gemma)."""
    return 'gelu_tanh' if self.family == 'gemma' else 'silu'

  @property
  def scale_embeddings(self) -> bool:
    """Gemma multiplies token embeddings by sqrt(d_model)."""
    return self.family == 'gemma'

  @property
  def norm_plus_one(self) -> bool:
    """Gemma's RMSNorm scales by (1 + w) with w initialised at 0; Chameleon's by w."""
    return self.family == 'gemma'

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  # --- construction --------------------------------------------------------------------------
  @classmethod
  def defaults(cls) -> dict[str, Any]:
    """The field defaults as config values (dtypes as names): configs/base.py's model section."""
    out = {}
    for f in dataclasses.fields(cls):
      value = f.default
      out[f.name] = value.name if isinstance(value, np.dtype) else value
    return out

  @classmethod
  def from_config(cls, model_config, **overrides) -> 'TransformerConfig':
    """From `config.model` (a ConfigDict or a dict), ignoring keys that are not fields."""
    items = dict(model_config.items() if hasattr(model_config, 'items') else model_config)
    items.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in items.items() if k in names})

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)

  # --- sizes for MFU -------------------------------------------------------------------------
  def param_count(self, include_embedding: bool = True) -> int:
    """Number of parameters (without LoRA adapters)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    norms = 2 * self.d_model + (2 * (self.num_heads + self.num_kv_heads) * self.head_dim
                                if self.qk_norm else 0)
    n = self.num_layers * (attn + mlp + norms) + self.d_model
    if include_embedding:
      n += self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return n

  def flops_per_token(self, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token, PaLM-style: 2N matmul FLOPs forward (N = matmul parameters incl. the
    LM head, not the embedding lookup) plus 4 * layers * seq_len * heads * head_dim for QK^T and
    AV (no causal discount); training is 3x the forward pass (6N + 12 L T H D)."""
    matmul_params = self.num_layers * (
        self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        + 3 * self.d_model * self.mlp_dim) + self.d_model * self.vocab_size
    forward = 2.0 * matmul_params + 4.0 * self.num_layers * seq_len * self.num_heads * self.head_dim
    return 3.0 * forward if training else forward


def remat_policy_fn(name: str):
  """The jax.checkpoint policy for `remat_policy` (None for 'none': no rematerialisation)."""
  policies = {
      'none': None,
      'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
      'dots': jax.checkpoint_policies.checkpoint_dots,
      'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      'everything_saveable': jax.checkpoint_policies.everything_saveable,
  }
  return policies[name]


def from_config(model_config, **overrides) -> TransformerConfig:
  """`TransformerConfig.from_config(config.model)`."""
  return TransformerConfig.from_config(model_config, **overrides)
