"""bench/bench_train.py's paired rounds: alternating order, medians, the spread it prints."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))

import bench_train  # noqa: E402


def test_paired_rounds_alternate_and_take_medians():
  calls = []
  jax_speeds, torch_speeds = iter([30.0, 10.0, 20.0]), iter([10.0, 10.0, 40.0])

  def run(side, speeds):
    def f():
      calls.append(side)
      return {'tokens_per_s': next(speeds)}
    return f
  out = bench_train.paired_rounds({'tokens_per_s': 12.0}, {'tokens_per_s': 6.0}, 4,
                                  run('jax', jax_speeds), run('torch', torch_speeds))
  # Round 2 runs torch first, round 3 jax first, round 4 torch first.
  assert calls == ['torch', 'jax', 'jax', 'torch', 'torch', 'jax']
  assert [q for _, _, q in out['rounds']] == [2.0, 3.0, 1.0, 0.5]
  assert out['jax_over_torch'] == 1.0  # the lower median of [0.5, 1, 2, 3]
  assert out['jax']['tokens_per_s'] == 12.0 and out['torch']['tokens_per_s'] == 10.0
  assert bench_train._spread(out) == ' (median of 4 rounds: 0.50-3.00)'


def test_one_round_is_the_given_pair():
  out = bench_train.paired_rounds({'tokens_per_s': 3.0}, {'tokens_per_s': 2.0}, 1, None, None)
  assert out == {'jax': {'tokens_per_s': 3.0}, 'torch': {'tokens_per_s': 2.0},
                 'jax_over_torch': 1.5}
  assert bench_train._spread(out) == ''
