"""Checkpoint formats of the models: transformers directories <-> (DecoderLM, params) in `hf`,
Chameleon's taming VQGAN checkpoint -> Flax VQGAN params in `vqgan`."""

from jax_vlm.weights.hf import from_pretrained, save_pretrained

__all__ = ['from_pretrained', 'save_pretrained']
