"""Scores a finished reproduction's seeds on the world's `validation` split, where choices are made.

  python experiments/validation_scores.py WORKDIR [--seeds 0,1] [--max_items 0]
  python experiments/compare_runs.py --subset validation A/validation.json B/validation.json

The issue's rule: choices (a pretraining mix, a floor, a step count) are tuned on a split built
like `test`, never on the reported `test` items. For each seed folder of WORKDIR (a `python -m
jax_vlm.reproduce` workdir whose seeds have run their evaluate stage) this evaluates every FDP
variant the evaluate stage evaluated, and the IDP, on `validation` with the evaluate stage's own
settings (same sampler, verifier, K list, seed), into `seed_S/evaluate_validation/`; a part whose
params and settings are unchanged is read back, not recomputed. It writes WORKDIR/validation.json
with the same per-seed layout as reproduction.json's `runs` (plus each seed's bootstrap stats: the
labels FDM trained on, and with reproduce.idp_self_training the first round's), so compare_runs.py
pairs two of them seed by seed. A world built before the validation split existed needs
`--rerun_stages=build_data,tokenize` first (the error says so).
"""
import argparse
import json
import os
import sys
import time

import ml_collections

from jax_vlm.core.errors import UserError
from jax_vlm.core.files import write_json
from jax_vlm.evaluation import world as world_eval
from jax_vlm.pipeline import reproduce

OUT = 'evaluate_validation'


def seed_dirs(workdir: str, seeds: str = '') -> list[tuple[int, str]]:
  """[(seed, folder)] of WORKDIR's seed_S folders that have an evaluate stage (or `seeds`)."""
  wanted = {int(s) for s in seeds.split(',') if s.strip()} if seeds else None
  out = []
  for name in sorted(os.listdir(workdir)):
    if not name.startswith('seed_') or not name[5:].isdigit():
      continue
    seed = int(name[5:])
    path = os.path.join(workdir, name)
    if (wanted is None or seed in wanted) and os.path.isfile(
        os.path.join(path, 'evaluate', 'config.json')):
      out.append((seed, path))
  return out


def score_seed(seed_dir: str, max_items: int = 0) -> dict:
  """One seed's run record on `validation`: seed, fdp (per variant), bootstrap."""
  with open(os.path.join(seed_dir, 'evaluate', 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  w = config.world_eval
  w.splits, w.max_items = ('validation',), int(max_items)
  w.curve_items, w.probe_items = 0, 0  # the curve and the probe stay on their test items
  summary = world_eval.run_evaluations(config, seed_dir, os.path.join(seed_dir, OUT))
  run = dict(seed=int(config.seed), fdp=summary['fdp'])
  # The second round's IDP is the evaluate stage's when the run had one (idp_self_training).
  run.update(reproduce.bootstrap_stats(seed_dir, w.get('idp_stage') == 'train_idp_round2'))
  return run


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('workdir')
  p.add_argument('--seeds', default='', help='comma-separated seeds (default: every evaluated one)')
  p.add_argument('--max_items', type=int, default=0, help='validation items per seed (0 = all)')
  args = p.parse_args(argv)
  if not os.path.isdir(args.workdir):
    sys.exit(f'validation_scores: {args.workdir} is not a folder; give a reproduction workdir.')
  seeds = seed_dirs(args.workdir, args.seeds)
  if not seeds:
    sys.exit(f'validation_scores: no seed_S folder in {args.workdir} has run its evaluate stage; '
             'run the reproduction first.')
  runs = []
  for seed, path in seeds:
    start = time.perf_counter()
    try:
      run = score_seed(path, args.max_items)
    except UserError as e:
      sys.exit(f'validation_scores: {e}')
    runs.append(run)
    split = next(iter(run['fdp'].values()))['splits']['validation']
    item1 = ', '.join(
        f'{v} item@1 {m["splits"]["validation"]["fdp"]["k=1"]["all"]["item_score"]:.3f}'
        for v, m in run['fdp'].items())
    print(f'seed {seed}: IDP effect match {split["idp"]["all"]["effect_match"]:.3f} on '
          f'{split["n"]} validation items; {item1} ({time.perf_counter() - start:.0f} s)',
          flush=True)
  out = os.path.join(args.workdir, 'validation.json')
  write_json(out, dict(split='validation', runs=runs))
  print(f'-> {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
