"""Verdicts on the paper's claims from paired per-seed differences.

A claim compares two numbers that every seed measures (e.g. FDM's and FT's item score). The
verdict rests on the per-seed differences a - b: their mean with a 95% Student t interval. It is
'holds' when the interval lies above 0, 'reversed' when it lies below, and 'inconclusive (CI
crosses 0)' otherwise. Cases where the comparison measures nothing are named instead of judged:
fewer than two seeds, two variants that are the same model, or a claim-specific reason the caller
passes (no bootstrap pairs selected, a verifier at chance).
"""

from __future__ import annotations

import math
from typing import Sequence

# Two-sided 95% Student t critical values by degrees of freedom (numpy has no t quantile).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
        17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000,
        120: 1.980}


def t_critical_95(df: int) -> float:
  """Two-sided 95% critical value of Student's t with `df` degrees of freedom."""
  if df < 1:
    raise ValueError(f'degrees of freedom must be >= 1, not {df}')
  if df in _T95:
    return _T95[df]
  larger = [d for d in _T95 if d > df]
  return _T95[min(larger)] if larger else 1.960


def paired_verdict(a: Sequence[float | None], b: Sequence[float | None],
                   degenerate: str = '') -> dict:
  """The paired comparison of per-seed values `a[i]` vs `b[i]` (same seed i).

  Returns dict(n, mean_a, mean_b, diff, ci_low, ci_high, verdict). Seeds where either value is
  missing are left out. `degenerate` (a reason) replaces the verdict with 'degenerate: reason'.
  """
  pairs = [(float(x), float(y)) for x, y in zip(a, b)
           if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
  out = dict(n=len(pairs), mean_a=None, mean_b=None, diff=None, ci_low=None, ci_high=None)
  if pairs:
    diffs = [x - y for x, y in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    out.update(mean_a=sum(x for x, _ in pairs) / n, mean_b=sum(y for _, y in pairs) / n,
               diff=mean)
    if n > 1:
      sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
      half = t_critical_95(n - 1) * sd / math.sqrt(n)
      out.update(ci_low=mean - half, ci_high=mean + half)
  if degenerate:
    out['verdict'] = f'degenerate: {degenerate}'
  elif not pairs:
    out['verdict'] = 'n/a (not measured)'
  elif all(abs(x - y) < 1e-12 for x, y in pairs):
    out['verdict'] = 'degenerate: the two sides are identical on every seed'
  elif out['ci_low'] is None:
    out['verdict'] = 'inconclusive (one seed: no interval)'
  elif out['ci_low'] > 0:
    out['verdict'] = 'holds'
  elif out['ci_high'] < 0:
    out['verdict'] = 'reversed'
  else:
    out['verdict'] = 'inconclusive (CI crosses 0)'
  return out
