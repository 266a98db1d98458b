"""Paired verdicts on per-seed differences: holds, reversed, inconclusive, degenerate."""

import math

import pytest

from jax_vlm.pipeline.claims import paired_verdict, t_critical_95


def test_t_interval_matches_hand_computation():
  a, b = [0.55, 0.6, 0.65], [0.4, 0.4, 0.4]
  v = paired_verdict(a, b)
  diffs = [0.15, 0.2, 0.25]
  sd = math.sqrt(sum((d - 0.2) ** 2 for d in diffs) / 2)
  half = 4.303 * sd / math.sqrt(3)
  assert v['n'] == 3 and v['diff'] == pytest.approx(0.2)
  assert v['ci_low'] == pytest.approx(0.2 - half) and v['ci_high'] == pytest.approx(0.2 + half)
  assert v['verdict'] == 'holds'


@pytest.mark.parametrize('a, b, verdict', [
    ([0.1, 0.2, 0.15], [0.3, 0.35, 0.33], 'reversed'),
    ([0.5, 0.3, 0.42], [0.4, 0.4, 0.4], 'inconclusive (CI crosses 0)'),
    ([0.4, 0.5], [0.4, 0.5], 'degenerate: the two sides are identical on every seed'),
    ([0.5], [0.4], 'inconclusive (one seed: no interval)'),
    ([None, None], [0.1, 0.2], 'n/a (not measured)'),
])
def test_verdicts(a, b, verdict):
  assert paired_verdict(a, b)['verdict'] == verdict


def test_a_named_degenerate_case_is_not_judged():
  v = paired_verdict([0.9, 0.8, 0.9], [0.1, 0.1, 0.2], degenerate='no pairs selected')
  assert v['verdict'] == 'degenerate: no pairs selected' and v['diff'] == pytest.approx(0.7333333)


def test_seeds_missing_a_side_are_left_out():
  v = paired_verdict([0.5, None, 0.6, float('nan')], [0.4, 0.1, 0.4, 0.3])
  assert v['n'] == 2 and v['diff'] == pytest.approx(0.15)


def test_t_critical_values():
  assert t_critical_95(4) == pytest.approx(2.776)
  assert t_critical_95(22) == pytest.approx(2.060)  # the next tabulated df above (conservative)
  assert t_critical_95(1000) == pytest.approx(1.960)
  with pytest.raises(ValueError):
    t_critical_95(0)
