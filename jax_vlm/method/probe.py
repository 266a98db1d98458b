"""Trajectory preference probe (the paper's Section 2): does the model prefer real transitions?

For each reference triplet (src, action, tgt) and each of four negatives
  random_action   the action of another triplet          (src, action', tgt)
  random_target   the target frame of another triplet    (src, action, tgt')
  copied_source   the source copied as the target        (src, action, src)
  swapped         source and target exchanged            (tgt, action, src)
the probe asks whether the model gives the reference the higher likelihood, under
  FDP: log p(tgt | src, action)   (target codes and <eoi>, teacher-forced)
  IDP: log p(action | src, tgt)   (action tokens and <eos>, teacher-forced)
and reports the share of items where it does (strictly higher; ties count as not preferred).
"Another triplet" is drawn with a seeded generator and must differ (a different action text, a
different target); items with no such partner are left out of that negative's share.

The scoring functions are arguments, so the share computation is testable on its own;
`model_scorers` builds them from a model with jax_vlm.inference.verifier.SequenceScorer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from jax_vlm.core.errors import require
from jax_vlm.inference.verifier import SequenceScorer
from jax_vlm.tokens import sequences

NEGATIVES = ('random_action', 'random_target', 'copied_source', 'swapped')
ScoreFn = Callable[[Sequence['Triplet']], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Triplet:
  """src_codes [n], action_ids [a], tgt_codes [n] (codes, not token ids)."""
  src_codes: np.ndarray
  action_ids: np.ndarray
  tgt_codes: np.ndarray


def _partner(i: int, n: int, rng: np.random.Generator, differs: Callable[[int], bool]) -> int:
  """Another index j != i with differs(j), tried in a random order; -1 when there is none."""
  for j in rng.permutation(n):
    if j != i and differs(int(j)):
      return int(j)
  return -1


def negatives(triplets: Sequence[Triplet], seed: int = 0) -> dict[str, list[tuple[int, Triplet]]]:
  """For each negative kind, (reference index, negative triplet) pairs (deterministic per seed)."""
  rng = np.random.default_rng(seed)
  n = len(triplets)
  out: dict[str, list[tuple[int, Triplet]]] = {k: [] for k in NEGATIVES}
  for i, t in enumerate(triplets):
    j = _partner(i, n, rng, lambda j: not np.array_equal(triplets[j].action_ids, t.action_ids))
    if j >= 0:
      out['random_action'].append((i, Triplet(t.src_codes, triplets[j].action_ids, t.tgt_codes)))
    j = _partner(i, n, rng, lambda j: not np.array_equal(triplets[j].tgt_codes, t.tgt_codes))
    if j >= 0:
      out['random_target'].append((i, Triplet(t.src_codes, t.action_ids, triplets[j].tgt_codes)))
    out['copied_source'].append((i, Triplet(t.src_codes, t.action_ids, t.src_codes)))
    out['swapped'].append((i, Triplet(t.tgt_codes, t.action_ids, t.src_codes)))
  return out


def preference_shares(triplets: Sequence[Triplet], fdp_score: ScoreFn, idp_score: ScoreFn,
                      seed: int = 0) -> dict[str, Any]:
  """{'fdp': {negative: share}, 'idp': {negative: share}, 'counts': {negative: items}}.

  fdp_score / idp_score map a list of triplets to their log-likelihoods [n] (see module docs).
  """
  require(len(triplets) >= 2, f'The preference probe needs at least 2 triplets, got '
          f'{len(triplets)}; pass more reference triplets.')
  negs = negatives(triplets, seed)
  result: dict[str, Any] = {'fdp': {}, 'idp': {}, 'counts': {}}
  for name, score in (('fdp', fdp_score), ('idp', idp_score)):
    ref = np.asarray(score(list(triplets)), np.float64)
    for kind in NEGATIVES:
      items = negs[kind]
      result['counts'][kind] = len(items)
      if not items:
        result[name][kind] = float('nan')
        continue
      neg = np.asarray(score([t for _, t in items]), np.float64)
      idx = np.asarray([i for i, _ in items])
      result[name][kind] = float(np.mean(ref[idx] > neg))
  return result


def fdp_sequence(t: Triplet, vocab) -> tuple[np.ndarray, np.ndarray]:
  """Teacher-forced FDP row: token_ids [L], mask [L] on the target codes and <eoi>."""
  seq = sequences.build_fdp({sequences.SRC_CODES: t.src_codes, sequences.TGT_CODES: t.tgt_codes,
                             sequences.ACTION_IDS: t.action_ids}, vocab,
                            max_action_tokens=max(1, int(np.asarray(t.action_ids).size)),
                            use_recognition_weights=False)
  return seq.token_ids, (seq.loss_weights > 0).astype(np.float32)


def model_scorers(scorer: SequenceScorer, vocab, normalize: bool = False
                  ) -> tuple[ScoreFn, ScoreFn]:
  """(fdp_score, idp_score) from a model; normalize divides by the number of scored tokens."""
  def run(rows):
    sums, counts = scorer.score([r[0] for r in rows], [r[1] for r in rows])
    return sums / np.maximum(counts, 1.0) if normalize else sums

  def fdp_score(items):
    return run([fdp_sequence(t, vocab) for t in items])

  def idp_score(items):
    return run([sequences.idp_scoring_sequence(t.src_codes, t.tgt_codes, t.action_ids, vocab)
                for t in items])
  return fdp_score, idp_score


def run_probe(module, params, vocab, triplets: Sequence[Triplet], seed: int = 0,
              normalize: bool = False, batch_size: int = 16) -> dict[str, Any]:
  """The probe with a model: shares for FDP and IDP over the four negatives."""
  fdp_score, idp_score = model_scorers(SequenceScorer(module, params, vocab.pad_id, batch_size),
                                       vocab, normalize)
  return preference_shares(triplets, fdp_score, idp_score, seed)
