"""Frames and text as token ids: the unified vocabulary, the token layout of IDP / FDP examples (the
only place that knows it), and the image pre/post-processing around the VQGAN."""

from jax_vlm.tokens import image_processing, sequences
from jax_vlm.tokens.vocab import UnifiedVocab

__all__ = ['UnifiedVocab', 'image_processing', 'sequences']
