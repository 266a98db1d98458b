"""Stratified top-K selection against a hand-worked example with uneven classes."""

import pytest

from jax_vlm.core.errors import UserError
from jax_vlm.method.selection import stratified_top_k


def _items():
  # (name, class, log-likelihood): class 'move' has 4 items, 'add' 2, 'swap' 1.
  return [
      ('m1', 'move', -0.1), ('m2', 'move', -0.2), ('m3', 'move', -0.3), ('m4', 'move', -0.9),
      ('a1', 'add', -0.5), ('a2', 'add', -0.4),
      ('s1', 'swap', -2.0),
  ]


def _select(items, k):
  picked = stratified_top_k(items, k, score=lambda x: x[2], action_class=lambda x: x[1])
  return [name for name, _, _ in picked]


def test_round_robin_by_class_best_first():
  # Class order by best item: move (-0.1), add (-0.4), swap (-2.0).
  # Round 1: m1, a2, s1. Round 2: m2, a1. Round 3: m3. Round 4: m4.
  assert _select(_items(), 7) == ['m1', 'a2', 's1', 'm2', 'a1', 'm3', 'm4']
  assert _select(_items(), 4) == ['m1', 'a2', 's1', 'm2']
  # Plain top-4 by score would be m1, m2, m3, a2: the stratified one keeps the rare class.
  assert 's1' in _select(_items(), 3)


def test_fewer_items_than_k_and_order_invariance():
  assert len(_select(_items(), 100)) == 7
  assert _select(list(reversed(_items())), 5) == _select(_items(), 5)
  assert _select(_items(), 0) == []


def test_negative_k_is_a_clear_error():
  with pytest.raises(UserError, match='k=-1'):
    _select(_items(), -1)
