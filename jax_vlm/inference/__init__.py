"""Pure inference steps: the jitted sampler (K candidates from one prefill), the IDP verifier and
its best-of-K selection, multi-step rollouts."""

from jax_vlm.inference.rollout import Rollout, rollout
from jax_vlm.inference.sampler import Guidance, Sampler, SamplingParams
from jax_vlm.inference.verifier import BestOfK, SequenceScorer, Verifier, best_of_k

__all__ = ['BestOfK', 'Guidance', 'Rollout', 'Sampler', 'SamplingParams', 'SequenceScorer',
           'Verifier', 'best_of_k', 'rollout']
