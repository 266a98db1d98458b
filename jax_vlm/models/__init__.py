"""Layer 1: pure Flax Linen modules (no I/O, no globals, no config parsing), logical axes on every
parameter. A new model family is a new file here plus a config preset."""

from jax_vlm.models import lora
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM, KVCache, init_cache
from jax_vlm.models.vqgan import VQGAN, VQGANConfig

__all__ = ['VQGAN', 'DecoderLM', 'KVCache', 'TransformerConfig', 'VQGANConfig', 'init_cache',
           'lora']
