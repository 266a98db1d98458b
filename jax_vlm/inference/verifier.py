"""The IDP verifier: rank K sampled candidate frames by log p(action | source, candidate).

For each candidate the inverse-dynamics model reads `<bos> <boi> src <eoi> <boi> cand <eoi>` and is
teacher-forced on `action <eos>` (sequences.idp_scoring_batch); the score is the sum of those token
log-probabilities (`summed`) and that sum over the number of tokens (`normalized`). The best
candidate is the argmax of the one `verifier.rank_by` names (`best_of_first_k`, also for the
best of a prefix of the K samples). All candidates go through one jitted
forward pass; only the scored tail of each row goes through the LM head.

This is the one best-of-K path: `best_of_k` for one prompt, `Verifier.score_items` +
`best_of_first_k` for an evaluation's items (evaluation/world.py). The verifier model is the jointly
trained model itself or a separate IDP checkpoint: a `Verifier` holds its own module, params and
vocabulary, and `check_same_vocab` refuses a sampler whose vocabulary differs (image codes and
special tokens must mean the same in both).

`sequence_logprobs` (the teacher-forced scorer) is also what the trajectory preference probe
(jax_vlm/method/probe.py) uses, for FDP as well as IDP sequences.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import require
from jax_vlm.inference import sampler as sampler_lib
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens import sequences

Array = jax.Array
RANK_BY = ('mean', 'sum')


@functools.partial(jax.jit, static_argnames=('module', 'window'))
def sequence_logprobs(params: Any, token_ids: Array, segment_ids: Array, target_mask: Array, *,
                      module: DecoderLM, window: int) -> tuple[Array, Array]:
  """Teacher-forced log-likelihood of the masked tokens of left-padded rows.

  token_ids, segment_ids [n, L] int32 (padding: segment 0, on the left); target_mask [n, L]
  float32, aligned with the target token (1 where token t's log p(token_t | tokens_<t) counts),
  zero outside the last `window` positions. Returns (summed log-prob [n], number of scored tokens
  [n]); the LM head only runs on the `window` positions that predict the tail.
  """
  length = token_ids.shape[1]
  positions = jnp.maximum(jnp.cumsum((segment_ids != 0).astype(jnp.int32), axis=1) - 1, 0)
  _, hidden = module.apply({'params': params}, token_ids, positions=positions,
                           segment_ids=segment_ids, return_hidden=True)
  # Position t predicts token t+1: hidden[L-window-1 : L-1] predicts tokens [L-window : L].
  tail = hidden[:, length - window - 1:length - 1]
  logits = module.apply({'params': params}, tail, method=DecoderLM.logits_from_hidden)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = token_ids[:, length - window:]
  token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  mask = target_mask[:, length - window:]
  return jnp.sum(token_logp * mask, axis=1), jnp.sum(mask, axis=1)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class SequenceScorer:
  """Batched teacher-forced scoring of token sequences with one model.

  Rows are left-padded to a common length (the smallest of `length_buckets` that fits, else the
  longest row) and the scored window is rounded up to a multiple of 8, so repeated calls reuse
  compiled programs. batch_size rows per forward pass (the last batch is padded with copies).
  min_window: score at least this many tail positions (e.g. the longest action + <eos>), so
  actions of different lengths share one compiled program.
  """

  def __init__(self, module: DecoderLM, params: Any, pad_id: int, batch_size: int = 16,
               length_buckets: Sequence[int] = (), min_window: int = 0):
    require(batch_size >= 1, f'verifier.batch_size must be >= 1, got {batch_size}.')
    self.module = module
    self.params = params
    self.pad_id = int(pad_id)
    self.batch_size = int(batch_size)
    self.length_buckets = tuple(length_buckets)
    self.min_window = int(min_window)

  def score(self, token_ids: Sequence[np.ndarray], target_masks: Sequence[np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Rows token_ids[i] [L_i], target_masks[i] [L_i] -> (summed log-prob [n], token count [n])."""
    n = len(token_ids)
    if n == 0:
      return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
    longest = max(int(np.asarray(t).size) for t in token_ids)
    length = sequences.choose_seq_len([longest], max((longest,) + self.length_buckets),
                                      self.length_buckets)
    window = 0
    for t, m in zip(token_ids, target_masks):
      m = np.asarray(m).reshape(-1)
      first = int(np.argmax(m > 0)) if np.any(m > 0) else m.size
      window = max(window, m.size - first)
    window = max(1, min(_round_up(max(window, self.min_window), 8), length - 1))
    ids = np.full((n, length), self.pad_id, np.int32)
    seg = np.zeros((n, length), np.int32)
    mask = np.zeros((n, length), np.float32)
    for r, (t, m) in enumerate(zip(token_ids, target_masks)):
      t = np.asarray(t, np.int32).reshape(-1)
      ids[r, length - t.size:] = t
      seg[r, length - t.size:] = 1
      mask[r, length - t.size:] = np.asarray(m, np.float32).reshape(-1)
    mask[:, 0] = 0.0  # the first token is never predicted
    sums, counts = [], []
    bs = self.batch_size
    for start in range(0, n, bs):
      sl = slice(start, min(start + bs, n))
      rows = sl.stop - sl.start
      s, c = sequence_logprobs(self.params, pad_rows(ids[sl], bs), pad_rows(seg[sl], bs),
                               pad_rows(mask[sl], bs),
                               module=self.module, window=window)
      sums.append(np.asarray(s)[:rows])
      counts.append(np.asarray(c)[:rows])
    return np.concatenate(sums), np.concatenate(counts)


@dataclasses.dataclass
class VerifierScores:
  """summed, normalized [K] log-likelihoods of the action per candidate; best: index of the
  argmax of the one `rank_by` names; ranked_by: 'sum' or 'mean'."""
  summed: np.ndarray
  normalized: np.ndarray
  best: int
  ranked_by: str

  @property
  def ranking(self) -> np.ndarray:
    return self.normalized if self.ranked_by == 'mean' else self.summed


def vocab_signature(vocab) -> tuple:
  """What must agree between sampler and verifier vocabularies."""
  return (int(vocab.vocab_size), int(vocab.bos_id), int(vocab.eos_id), int(vocab.boi_id),
          int(vocab.eoi_id), int(vocab.pad_id), tuple(np.asarray(vocab.image_token_ids()).tolist()))


def check_same_vocab(sampler_vocab, verifier_vocab) -> None:
  """Raises UserError when the two vocabularies map image codes or special tokens differently."""
  require(vocab_signature(sampler_vocab) == vocab_signature(verifier_vocab),
          "The verifier's vocabulary differs from the sampler's (image token ids or special "
          'tokens); use an IDP model trained with the same tokenizer and vocab settings.')


class Verifier:
  """Scores candidate frames with an IDP model (module + params + vocab)."""

  def __init__(self, module: DecoderLM, params: Any, vocab, rank_by: str = 'mean',
               batch_size: int = 16, length_buckets: Sequence[int] = (), min_window: int = 0):
    require(rank_by in RANK_BY,
            f'verifier.rank_by={rank_by!r} is unknown; use one of {", ".join(RANK_BY)}.')
    self.vocab = vocab
    self.rank_by = rank_by
    self.scorer = SequenceScorer(module, params, vocab.pad_id, batch_size, length_buckets,
                                 min_window)

  @classmethod
  def from_config(cls, verifier_cfg, module: DecoderLM, params: Any, vocab) -> 'Verifier':
    return cls(module, params, vocab, str(verifier_cfg.rank_by), int(verifier_cfg.batch_size))

  def check_sampler(self, sampler) -> None:
    """Refuses a sampler whose vocabulary differs from this verifier's."""
    check_same_vocab(sampler.vocab, self.vocab)

  def score(self, src_codes, candidate_codes, action_ids) -> VerifierScores:
    """src_codes [n], candidate_codes [K, n], action_ids [a] -> scores of the K candidates."""
    ids, masks = sequences.idp_scoring_batch(src_codes, candidate_codes, action_ids, self.vocab)
    summed, counts = self.scorer.score(list(ids), list(masks))
    normalized = summed / np.maximum(counts, 1.0)
    ranking = normalized if self.rank_by == 'mean' else summed
    return VerifierScores(summed, normalized, int(np.argmax(ranking)), self.rank_by)

  def score_items(self, src_codes: Sequence[np.ndarray], candidates: np.ndarray,
                  action_ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of many items' candidates: src_codes[i] [n], candidates [N, K, n], action_ids[i]
    [a_i] -> (summed, normalized) [N, K]. Each distinct (item, candidate) is scored once, all
    items in shared forward passes of at most `batch_size` rows."""
    index: dict[tuple[int, bytes], int] = {}
    rows, masks = [], []
    for i, (src, action) in enumerate(zip(src_codes, action_ids)):
      for cand in candidates[i]:
        key = (i, cand.tobytes())
        if key not in index:
          index[key] = len(rows)
          ids, mask = sequences.idp_scoring_sequence(src, cand, action, self.vocab)
          rows.append(ids)
          masks.append(mask)
    sums, counts = self.scorer.score(rows, masks)
    means = sums / np.maximum(counts, 1.0)
    where = np.asarray([[index[(i, c.tobytes())] for c in candidates[i]]
                        for i in range(len(src_codes))], np.int64).reshape(candidates.shape[:2])
    return sums[where], means[where]


def best_of_first_k(ranking: np.ndarray, k: int) -> int:
  """Index of the verifier's best among the first k candidates (ranking [K]; ties: lowest)."""
  ranking = np.asarray(ranking, np.float64)
  require(1 <= k <= ranking.size, f'best-of-{k} needs at least {k} candidates, got '
          f'{ranking.size}.')
  return int(np.argmax(ranking[:k]))


@dataclasses.dataclass
class BestOfK:
  """candidates [K, n] codes, scores (VerifierScores), best_codes [n]."""
  candidates: np.ndarray
  scores: VerifierScores
  best_codes: np.ndarray


def best_of_k(sampler, sampler_params, verifier: Verifier, src_codes, action_ids, key,
              num_candidates: int, sampling=None, guidance=None) -> BestOfK:
  """Samples K next frames for (src_codes [n], action_ids [a]) and keeps the verifier's best."""
  verifier.check_sampler(sampler)
  sampling = sampling or sampler_lib.SamplingParams()
  out = sampler.sample_frames(sampler_params, [np.asarray(src_codes).reshape(-1)], [action_ids],
                              key, num_candidates, sampling, guidance)
  candidates = out.codes[0]
  scores = verifier.score(src_codes, candidates, action_ids)
  return BestOfK(candidates, scores, candidates[best_of_first_k(scores.ranking, len(candidates))])
