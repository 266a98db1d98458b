"""Two reproductions of the embedded world, paired per seed: what changed from A to B?

  python experiments/compare_runs.py A/reproduction.json B/reproduction.json
  python experiments/compare_runs.py --subset validation A/validation.json B/validation.json

A and B are two `python -m jax_vlm.reproduce` workdirs' reproduction.json (for example the default
base and a base with another pretraining mix). For each quantity below it pairs the seeds both
have and prints A's and B's means and the paired difference B - A with its 95% t interval and a
verdict (jax_vlm.pipeline.claims.paired_verdict). Same seeds on two bases share the world, the
labelled set and every seed-dependent draw, so the pairing removes those from the comparison; the
bases' own build variance is NOT removed (each workdir has one base). `--subset` picks the split
the FDP and IDP rows read (default `test`; `validation` reads experiments/validation_scores.py's
files, the split choices are made on).
"""
import argparse
import json
import sys

from jax_vlm.pipeline.claims import paired_verdict
from jax_vlm.pipeline.tables import _fdp, _get

SUBSETS = ('test', 'test_compositional', 'validation')


def quantities(subset: str = 'test') -> list:
  """(name, run -> value) for the rows compared; FDP and IDP rows read `subset`."""
  t = subset
  fdp = lambda v, k=1: (lambda r: _fdp(r, v, t, k, 'item_score'))  # noqa: E731
  idp = lambda sub: (lambda r: _get(r, 'fdp', 'train_ft', 'splits', sub, 'idp', 'all',  # noqa: E731
                                    'effect_match'))
  rows = [(f'IDP effect match, {t}', idp(t))]
  if t == 'test':
    rows.append(('IDP effect match, test_compositional', idp('test_compositional')))
  rows += [
      ('bootstrap labels correct (all)', lambda r: _get(r, 'bootstrap', 'label_accuracy')),
      ('bootstrap labels correct (selected)',
       lambda r: _get(r, 'bootstrap', 'selected_label_accuracy')),
      ('FT item@1', fdp('train_ft')),
      ('FDM item@1', fdp('train_fdm')),
      ('FDM - FT item@1', lambda r: _minus(fdp('train_fdm')(r), fdp('train_ft')(r))),
      ('FDM w/o synthetic item@1', fdp('train_fdm_no_synth')),
      ('FDM w/o weighting item@1', fdp('train_fdm_no_weight')),
      # The true-label control (reproduce.true_label_control): n/a where a run lacks it.
      ('FDM, true labels item@1', fdp('train_fdm_true_labels')),
      ('FT item@8 (IDP verifier)', fdp('train_ft', 8)),
      ('FDM item@8 (IDP verifier)', fdp('train_fdm', 8)),
  ]
  return rows


def _minus(a, b):
  return None if a is None or b is None else a - b


def _runs(path: str) -> dict[int, dict]:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    sys.exit(f'compare_runs: cannot read {path} ({e}); give two reproductions\' '
             'reproduction.json files.')
  # `runs` holds the full labelled set's runs only (labelled-size curves go to `labelled_curve`).
  return {int(r['seed']): r for r in data.get('runs', [])}


def compare(a_path: str, b_path: str, subset: str = 'test') -> tuple[list[int], list[dict]]:
  a, b = _runs(a_path), _runs(b_path)
  seeds = sorted(set(a) & set(b))
  rows = []
  for name, get in quantities(subset):
    # paired_verdict(x, y) is x - y: B first
    v = paired_verdict([get(b[s]) for s in seeds], [get(a[s]) for s in seeds])
    rows.append(dict(quantity=name, a=v['mean_b'], b=v['mean_a'], diff=v['diff'],
                     ci_low=v['ci_low'], ci_high=v['ci_high'], verdict=v['verdict']))
  return seeds, rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('a')
  p.add_argument('b')
  p.add_argument('--subset', default='test', choices=SUBSETS,
                 help='the split the FDP and IDP rows read (validation: validation_scores.py)')
  args = p.parse_args(argv)
  seeds, rows = compare(args.a, args.b, args.subset)
  if not seeds:
    sys.exit('compare_runs: the two reproductions share no seed; run the same --seeds in both.')
  num = lambda x: 'n/a' if x is None else f'{x:.3f}'  # noqa: E731
  sign = lambda x: 'n/a' if x is None else f'{x:+.3f}'  # noqa: E731
  print(f'seeds {",".join(map(str, seeds))}: A = {args.a}, B = {args.b}')
  print('| quantity | A | B | B - A [95% CI] | verdict |')
  print('|---|---|---|---|---|')
  for r in rows:
    ci = (f' [{sign(r["ci_low"])}, {sign(r["ci_high"])}]' if r['ci_low'] is not None else '')
    print(f'| {r["quantity"]} | {num(r["a"])} | {num(r["b"])} | '
          f'{sign(r["diff"])}{ci} | {r["verdict"]} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
