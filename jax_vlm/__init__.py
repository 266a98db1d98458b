"""jax_vlm: unified (early-fusion) vision-language models in JAX/Flax for world dynamics.

The folders, in the order imports go (each imports only from those above it):
  core        errors, the plug-in registry, config sections
  models      pure Linen modules: DecoderLM, VQGAN
  weights     transformers / Chameleon checkpoints <-> Flax params
  tokens      vocabulary, the IDP / FDP token layout, image processing
  input       record sets -> training batches
  inference   sampler, verifier (best-of-K), rollouts
  training    train step, optimiser, sharding, checkpoints, Trainer, tokenizer training
  method      IDP bootstrapping, selection, preference probe
  evaluation  benchmarks (action world, AURORA-BENCH), metrics, judge, reports
  pipeline    stage runner, world stages, FDP variants, the reproduction
  tools       aot, convert, export, prepare

The names a user needs:
  module, params = jax_vlm.from_pretrained(path)      # a transformers checkpoint directory
  jax_vlm.save_pretrained(module, params, path)       # and back
  jax_vlm.Sampler, jax_vlm.Verifier, jax_vlm.UnifiedVocab, jax_vlm.DecoderLM, ...
"""

from jax_vlm.inference import Sampler, SamplingParams, Verifier
from jax_vlm.models import VQGAN, DecoderLM, TransformerConfig
from jax_vlm.tokens import UnifiedVocab
from jax_vlm.weights import from_pretrained, save_pretrained

__version__ = '0.1.0'

__all__ = ['VQGAN', 'DecoderLM', 'Sampler', 'SamplingParams', 'TransformerConfig', 'UnifiedVocab',
           'Verifier', 'from_pretrained', 'save_pretrained']
