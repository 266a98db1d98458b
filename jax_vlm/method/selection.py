"""Stratified top-K selection of IDP-labelled pairs (the paper's bootstrapping filter).

The inverse model labels every unlabelled frame pair and gives each label a likelihood. Taking the
K most likely labels would over-sample the action classes IDP finds easy, so the selection is
stratified: items are sorted by likelihood inside their class and taken in round-robin over the
classes, the best remaining item of each class per round, until K are taken. Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from jax_vlm.core.errors import require

T = TypeVar('T')


def stratified_top_k(
    items: Sequence[T],
    k: int,
    score: Callable[[T], float],
    action_class: Callable[[T], Hashable],
) -> list[T]:
  """Returns up to `k` items: round-robin over classes, best remaining item of each class per round.

  Classes are visited in the order of their best item's score (highest first; ties broken by the
  class's string form) so that the result does not depend on the order of `items`. Within a class,
  equal scores keep their input order. When a class runs out it is skipped; when every class runs
  out, fewer than `k` items come back.
  """
  require(k >= 0, f'The number of items to select must be >= 0, got k={k}.')
  by_class: dict[Hashable, list[tuple[int, T]]] = {}
  for index, item in enumerate(items):
    by_class.setdefault(action_class(item), []).append((index, item))
  queues = {
      c: sorted(members, key=lambda pair: (-score(pair[1]), pair[0]))
      for c, members in by_class.items()
  }
  order = sorted(queues, key=lambda c: (-score(queues[c][0][1]), str(c)))
  selected: list[T] = []
  depth = 0
  while len(selected) < k:
    took_any = False
    for c in order:
      if depth < len(queues[c]):
        selected.append(queues[c][depth][1])
        took_any = True
        if len(selected) == k:
          break
    if not took_any:
      break
    depth += 1
  return selected
