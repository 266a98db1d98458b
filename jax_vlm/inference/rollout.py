"""Multi-step rollouts: the predicted frame (its codes) becomes the next step's source frame.

    frames = rollout(sampler, params, src_codes, [action_1, action_2, ...], key)

Each step samples K candidate next frames (inference/sampler.py) for the current frame and the
step's action and keeps one: the IDP verifier's best when a `Verifier` is given, else candidate 0.
Step t draws from `fold_in(key, t)`. Codes stay codes throughout (no VQGAN decode in the loop).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from jax_vlm.core.errors import require
from jax_vlm.inference.sampler import Guidance, Sampler, SamplingParams
from jax_vlm.inference.verifier import Verifier


@dataclasses.dataclass
class Rollout:
  """frames [steps + 1, n] codes (frames[0] is the start frame); candidates [steps, K, n];
  chosen [steps] candidate indices; verifier_scores [steps, K] (None without a verifier)."""
  frames: np.ndarray
  candidates: np.ndarray
  chosen: np.ndarray
  verifier_scores: np.ndarray | None


def rollout(sampler: Sampler, params: Any, src_codes, actions: Sequence[Any], key,
            num_candidates: int = 1, verifier: Verifier | None = None,
            sampling: SamplingParams = SamplingParams(), guidance: Guidance | None = None
            ) -> Rollout:
  """Rolls `actions` (texts or token id arrays) forward from src_codes [n] (or [h, w])."""
  require(len(actions) > 0, 'The rollout got no actions; pass at least one.')
  if verifier is not None:
    verifier.check_sampler(sampler)
  frame = np.asarray(src_codes).reshape(-1)
  frames, candidates, chosen, scores = [frame], [], [], []
  for t, action in enumerate(actions):
    ids = np.asarray(sampler.vocab.encode_text(action) if isinstance(action, str) else action,
                     np.int32).reshape(-1)
    require(ids.size > 0, f'Rollout action {t} is empty; give every step an action.')
    out = sampler.sample_frames(params, [frame], [ids], jax.random.fold_in(key, t),
                                num_candidates, sampling, guidance)
    cands = out.codes[0]
    best = 0
    if verifier is not None:
      s = verifier.score(frame, cands, ids)
      best = s.best
      scores.append(s.ranking)
    frame = cands[best]
    frames.append(frame)
    candidates.append(cands)
    chosen.append(best)
  return Rollout(np.stack(frames), np.stack(candidates), np.asarray(chosen),
                 np.stack(scores) if scores else None)
