"""One command for the embedded world's whole pipeline and the table of the paper's claims on it.

  python -m jax_vlm.reproduce --config configs/action_world.py[:smoke] --workdir DIR [--seeds 0,1,2]

Per seed (config.seed; the world, its tokenizer and the tokenized data are built once, by the first
seed, and shared) the stages run under DIR/seed_<s>/:
  build_data, train_tokenizer, tokenize   the world, its VQGAN, the token ids (shared)
  train_dynamics    IDP + FDP jointly on the labelled data; checkpoints for the learning curves;
                    the IDP model (bootstrap labeller and verifier)
  bootstrap         IDP labels the unlabelled pairs; stratified top-K -> synthetic triplets
  train_ft          FT: FDP on labelled only, standard loss
  train_fdm         FDM: labelled + synthetic, recognition-weighted loss
  train_fdm_no_synth, train_fdm_no_weight   the two ablations of FDM
  evaluate          best-of-K (K = 1, 2, 4, 8) of every variant with the IDP verifier on test and
                    test_compositional, IDP, learning curves, the preference probe
Stages with a DONE marker are skipped, so a killed run continues where it stopped. The table
(markdown) is printed and saved as DIR/reproduction.md and DIR/reproduction.json (with wall and CPU
time per seed and per stage).

Settings: `config.reproduce` (REPRODUCE_DEFAULTS; a config may leave it out) sets the training steps
of the dynamics and FDP stages and how FDP variants start; they become stage_overrides, and a
config's own stage_overrides win over them.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from jax_vlm.errors import UserError, require

STAGES = ('build_data', 'train_tokenizer', 'tokenize', 'train_dynamics', 'bootstrap', 'train_ft',
          'train_fdm', 'train_fdm_no_synth', 'train_fdm_no_weight', 'evaluate')
SHARED_STAGES = ('build_data', 'train_tokenizer', 'tokenize')
VARIANTS = {'train_ft': 'FT', 'train_fdm': 'FDM', 'train_fdm_no_synth': 'FDM w/o synthetic',
            'train_fdm_no_weight': 'FDM w/o weighting'}
SUBSETS = ('test', 'test_compositional')

REPRODUCE_DEFAULTS = dict(
    dynamics_steps=0,  # train_dynamics steps (0 = train.num_steps)
    fdp_steps=0,  # steps of each FDP variant (0 = train.num_steps)
    fdp_init='train_dynamics',  # FDP variants start from this stage's params ('' = random init)
    fdp_learning_rate=0.0,  # 0 = train.learning_rate
    fdp_warmup_steps=-1,  # -1 = train.warmup_steps
    curve_points=5,  # checkpoints of train_dynamics evaluated for the learning curves
    eval_items=0,  # test items per subset (0 = all)
)


def reproduce_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.reproduce on top of REPRODUCE_DEFAULTS; a config without the section (e.g.
  configs/action_world.py) gets configs/reproduce.py's settings for its world size."""
  from jax_vlm.pipeline import stages
  given = config.get('reproduce', None)
  if given is None and 'world' in config:
    from configs import reproduce as preset
    given = preset.reproduce_section(str(config.world.size))
  return stages.section_with_defaults(REPRODUCE_DEFAULTS, given, 'reproduce')


def reproduction_config(config: ml_collections.ConfigDict, seed: int | None = None
                        ) -> ml_collections.ConfigDict:
  """The config with the reproduction's stages, stage_overrides and world_eval settings."""
  r = reproduce_settings(config)
  out = ml_collections.ConfigDict(config.to_dict())
  if seed is not None:
    out.seed = int(seed)
  out.stages = STAGES
  # Labels longer than the data's actions cannot be right, and would not fit a cache sized for
  # the data (sampler.cache_len 0 = data.max_seq_len).
  if int(out.sampler.max_action_tokens) > int(out.data.action_max_tokens):
    out.sampler.max_action_tokens = int(out.data.action_max_tokens)
  t = out.train
  dyn_steps = int(r.dynamics_steps) or int(t.num_steps)
  fdp_steps = int(r.fdp_steps) or int(t.num_steps)
  points = max(int(r.curve_points), 1)
  overrides: dict[str, dict[str, Any]] = {
      'train_dynamics': {'train.num_steps': dyn_steps,
                         'train.checkpoint_every': max(dyn_steps // points, 1),
                         'train.keep_checkpoints': 0},  # 0 keeps them all (the curves read them)
  }
  for name in VARIANTS:
    overrides[name] = {
        'train.num_steps': fdp_steps, 'train.checkpoint_every': fdp_steps,
        'train.init_from': str(r.fdp_init),
        'train.learning_rate': float(r.fdp_learning_rate) or float(t.learning_rate),
        'train.warmup_steps': (int(r.fdp_warmup_steps) if int(r.fdp_warmup_steps) >= 0
                               else int(t.warmup_steps))}
  given = out.get('stage_overrides', None)
  given = given.to_dict() if given else {}
  for name, values in given.items():
    overrides.setdefault(name, {}).update(dict(values))
  # (key, value) pairs, not dicts: a ConfigDict refuses dotted keys when it is copied
  # (to_dict -> ConfigDict), and stages.stage_config reads either through dict(...).
  out.stage_overrides = ml_collections.ConfigDict(
      {name: tuple(sorted(values.items())) for name, values in overrides.items()})
  if 'world_eval' not in out:
    from configs import reproduce as preset
    out.world_eval = preset.world_eval_section(str(out.world.size))
  out.world_eval.fdp_stages = tuple(VARIANTS)
  out.world_eval.idp_stage = 'train_dynamics'
  out.world_eval.curve_stage = 'train_dynamics'
  if int(r.eval_items):
    out.world_eval.max_items = int(r.eval_items)
  return out


# ------------------------------------------------------------------------------------------------
# Running.


def _cpu_seconds() -> float:
  u = resource.getrusage(resource.RUSAGE_SELF)
  return u.ru_utime + u.ru_stime


def _stage_seconds(workdir: str) -> dict[str, float]:
  out = {}
  for name in STAGES:
    path = os.path.join(workdir, name, 'DONE')
    if os.path.isfile(path):
      with open(path) as f:
        try:
          out[name] = float(json.load(f).get('seconds', 0.0))
        except (ValueError, AttributeError):
          out[name] = 0.0
  return out


def _share_stages(seed_dir: str, first_dir: str) -> None:
  """Links the first seed's data stages into another seed's workdir (built once, shared)."""
  os.makedirs(seed_dir, exist_ok=True)
  for name in SHARED_STAGES:
    link = os.path.join(seed_dir, name)
    if not os.path.lexists(link):
      os.symlink(os.path.relpath(os.path.join(first_dir, name), seed_dir), link)


def run_seed(config: ml_collections.ConfigDict, workdir: str, seed: int) -> dict:
  """Runs (or continues) one seed's pipeline in `workdir`; returns its evaluation summary."""
  from jax_vlm.input.datasets import resolve_paths
  from jax_vlm.pipeline import stages
  from jax_vlm.training.trainer import validate_config
  cfg = resolve_paths(reproduction_config(config, seed), workdir)
  validate_config(cfg)
  wall, cpu = time.perf_counter(), _cpu_seconds()
  done = stages.run_stages(cfg, workdir)
  if not done:
    raise UserError(f'The pipeline in {workdir} stopped early (preempted); rerun the same '
                    'command to continue it.')
  with open(os.path.join(workdir, 'evaluate', 'metrics.json')) as f:
    summary = json.load(f)
  bootstrap = os.path.join(workdir, 'bootstrap', 'stats.json')
  if os.path.isfile(bootstrap):
    with open(bootstrap) as f:
      summary['bootstrap'] = json.load(f)
  summary['seed'] = int(seed)
  summary['this_run'] = dict(wall_seconds=round(time.perf_counter() - wall, 1),
                             cpu_seconds=round(_cpu_seconds() - cpu, 1))
  summary['stage_seconds'] = _stage_seconds(workdir)
  return summary


# ------------------------------------------------------------------------------------------------
# The table.


def _stat(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  vals = [float(v) for v in values if v is not None and not np.isnan(v)]
  if not vals:
    return None, None
  return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _fmt(values: Sequence[float | None], digits: int = 3) -> str:
  mean, spread = _stat(values)
  if mean is None:
    return 'n/a'
  return f'{mean:.{digits}f}' + (f' ± {spread:.{digits}f}' if spread is not None else '')


def _get(d: Any, *path, default=None):
  for p in path:
    if not isinstance(d, dict) or p not in d:
      return default
    d = d[p]
  return d


def _fdp(run: dict, variant: str, subset: str, k: int, metric: str):
  return _get(run, 'fdp', variant, 'splits', subset, 'fdp', f'k={k}', 'all', metric)


def _mean_over(runs, fn) -> float | None:
  return _stat([fn(r) for r in runs])[0]


def _verdict(a: float | None, b: float | None, claim: str) -> str:
  if a is None or b is None:
    return 'n/a'
  if a > b:
    return f'yes ({claim})'
  if a == b:
    return 'no (tie)'
  return 'NO (reversed)'


def _curve_auc(run: dict, key: str) -> float | None:
  rows = run.get('learning_curve') or []
  return float(np.mean([r[key] for r in rows])) if rows else None


def _probe_mean(run: dict, which: str, task: str) -> float | None:
  shares = _get(run, 'probe', which, task)
  if not shares:
    return None
  vals = [v for v in shares.values() if v is not None and not np.isnan(v)]
  return float(np.mean(vals)) if vals else None


def build_table(runs: Sequence[dict], command: str = '') -> tuple[str, dict]:
  """(markdown, JSON) of the reproduction over one or more seeds (mean ± sample std)."""
  k_list = sorted(int(k) for k in _get(runs[0], 'settings', 'k_list', default=[1, 2, 4, 8]))
  k1, kmax = k_list[0], k_list[-1]
  seeds = [r['seed'] for r in runs]
  md = ['# Reproduction on the embedded action world', '']
  if command:
    md += [f'Command: `{command}`', '']
  md += [f'Seeds: {", ".join(map(str, seeds))} (mean ± sample std over seeds where more than one). '
         'Scores are exact: generated frames are decoded by the world\'s VQGAN and parsed; item '
         'score = min(edit success, minimal editing).', '']
  claims = []

  # Claims summary.
  for subset in SUBSETS:
    def item(variant, k, subset=subset):
      return _mean_over(runs, lambda r: _fdp(r, variant, subset, k, 'item_score'))
    claims += [
        dict(claim='FDM beats FT (item score, best-of-1)', subset=subset,
             a=item('train_fdm', k1), b=item('train_ft', k1)),
        dict(claim='IDP-labelled synthetic data helps (FDM vs FDM w/o synthetic)', subset=subset,
             a=item('train_fdm', k1), b=item('train_fdm_no_synth', k1)),
        dict(claim='recognition weighting helps (FDM vs FDM w/o weighting)', subset=subset,
             a=item('train_fdm', k1), b=item('train_fdm_no_weight', k1)),
        dict(claim=f'verification helps FT (best-of-{kmax} vs best-of-{k1})', subset=subset,
             a=item('train_ft', kmax), b=item('train_ft', k1)),
        dict(claim=f'verification helps FDM (best-of-{kmax} vs best-of-{k1})', subset=subset,
             a=item('train_fdm', kmax), b=item('train_fdm', k1)),
    ]
  claims.insert(0, dict(
      claim='IDP is learned faster than FDP (mean over checkpoints: IDP canonical accuracy vs '
            'FDP exact match)', subset='test',
      a=_mean_over(runs, lambda r: _curve_auc(r, 'idp_canonical_match')),
      b=_mean_over(runs, lambda r: _curve_auc(r, 'fdp_exact_match'))))
  for task in ('fdp', 'idp'):
    claims.append(dict(
        claim=f'training makes the model prefer real transitions ({task.upper()} probe, mean '
              'share over 4 negatives, trained vs random init)', subset='test',
        a=_mean_over(runs, lambda r, t=task: _probe_mean(r, 'trained', t)),
        b=_mean_over(runs, lambda r, t=task: _probe_mean(r, 'random_init', t))))
  md += ['## Claims', '', '| claim | subset | this | vs | holds? |', '|---|---|---|---|---|']
  for c in claims:
    fa = 'n/a' if c['a'] is None else f'{c["a"]:.3f}'
    fb = 'n/a' if c['b'] is None else f'{c["b"]:.3f}'
    c['holds'] = _verdict(c['a'], c['b'], 'higher')
    md.append(f'| {c["claim"]} | {c["subset"]} | {fa} | {fb} | {c["holds"]} |')
  md.append('')

  # FDP variants with best-of-K.
  for subset in SUBSETS:
    md += [f'## FDP on `{subset}` (best-of-K with the IDP verifier)', '']
    head = (['variant', f'success@{k1}', f'minimal@{k1}', f'exact@{k1}']
            + [f'item@{k}' for k in k_list] + [f'exact@{kmax}', f'oracle item@{kmax}'])
    md += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for variant, label in VARIANTS.items():
      cells = [label,
               _fmt([_fdp(r, variant, subset, k1, 'edit_success') for r in runs]),
               _fmt([_fdp(r, variant, subset, k1, 'minimal_editing') for r in runs]),
               _fmt([_fdp(r, variant, subset, k1, 'exact_match') for r in runs])]
      cells += [_fmt([_fdp(r, variant, subset, k, 'item_score') for r in runs]) for k in k_list]
      cells += [_fmt([_fdp(r, variant, subset, kmax, 'exact_match') for r in runs]),
                _fmt([_fdp(r, variant, subset, kmax, 'oracle') for r in runs])]
      md.append('| ' + ' | '.join(cells) + ' |')
    first = next(iter(VARIANTS))
    for ref in ('target_codes', 'copy_source'):
      vals = {m: [_get(r, 'fdp', first, 'splits', subset, 'reference', ref, 'all', m)
                  for r in runs] for m in ('edit_success', 'minimal_editing', 'exact_match',
                                           'item_score')}
      cells = [f'reference: {ref}', _fmt(vals['edit_success']), _fmt(vals['minimal_editing']),
               _fmt(vals['exact_match'])] + [_fmt(vals['item_score'])] * len(k_list) + [
                   _fmt(vals['exact_match']), '']
      md.append('| ' + ' | '.join(cells) + ' |')
    n = _get(runs[0], 'fdp', first, 'splits', subset, 'n')
    md += ['', f'{n} items. oracle: the best item score among the {kmax} candidates (a perfect '
           'verifier). reference target_codes: the true next frame\'s own codes (the tokenizer\'s '
           'ceiling); copy_source: the unchanged source.', '']

  # IDP.
  md += ['## IDP (greedy action text, `train_dynamics` model)', '',
         '| subset | canonical match | effect match | parsed | BLEU | ROUGE-L |',
         '|---|---|---|---|---|---|']
  first = next(iter(VARIANTS))
  for subset in SUBSETS:
    vals = lambda m, subset=subset: [_get(r, 'fdp', first, 'splits', subset, 'idp', 'all', m)  # noqa: E731
                                     for r in runs]
    md.append(f'| {subset} | {_fmt(vals("canonical_match"))} | {_fmt(vals("effect_match"))} | '
              f'{_fmt(vals("parsed"))} | {_fmt(vals("BLEU"), 1)} | {_fmt(vals("ROUGEL"))} |')
  md.append('')

  # Learning curves.
  md += ['## IDP vs FDP learning speed (joint training on the labelled data, held-out `test`)', '',
         '| step | IDP canonical match | IDP effect match | FDP exact (1 sample) '
         '| FDP item score |',
         '|---|---|---|---|---|']
  steps = [row['step'] for row in runs[0].get('learning_curve') or []]
  for i, step in enumerate(steps):
    col = lambda key, i=i: [(r.get('learning_curve') or [{}] * (i + 1))[i].get(key)  # noqa: E731
                            if len(r.get('learning_curve') or []) > i else None for r in runs]
    md.append(f'| {step} | {_fmt(col("idp_canonical_match"))} | {_fmt(col("idp_effect_match"))} '
              f'| {_fmt(col("fdp_exact_match"))} | {_fmt(col("fdp_item_score"))} |')
  md.append('')

  # Probe.
  md += ['## Trajectory preference probe (share of items where the real transition scores higher)',
         '', 'random init = the same architecture with freshly initialised weights (no training); '
         'trained = the `train_dynamics` model (IDP + FDP). Length-normalised log-likelihoods.', '',
         '| model | task | ' + ' | '.join(('random_action', 'random_target', 'copied_source',
                                             'swapped')) + ' |', '|---|---|---|---|---|---|']
  for which in ('random_init', 'trained'):
    for task in ('fdp', 'idp'):
      cells = [_fmt([_get(r, 'probe', which, task, neg) for r in runs])
               for neg in ('random_action', 'random_target', 'copied_source', 'swapped')]
      md.append(f'| {which} | {task.upper()} | ' + ' | '.join(cells) + ' |')
  md.append('')

  # Bootstrap and time.
  md += ['## Bootstrap and time', '']
  acc = _fmt([_get(r, 'bootstrap', 'label_accuracy') for r in runs])
  sel = _fmt([_get(r, 'bootstrap', 'selected_label_accuracy') for r in runs])
  nsel = _fmt([_get(r, 'bootstrap', 'num_selected') for r in runs], 0)
  nall = _fmt([_get(r, 'bootstrap', 'num_labelled') for r in runs], 0)
  md += [f'IDP labels of the unlabelled pairs: accuracy {acc} on all {nall}; the {nsel} selected '
         f'(stratified top-K) are {sel} correct.', '']
  md += ['| seed | wall s (this command) | CPU s | ' + ' | '.join(STAGES) + ' |',
         '|' + '---|' * (3 + len(STAGES))]
  for r in runs:
    st = r.get('stage_seconds', {})
    md.append(f'| {r["seed"]} | {r["this_run"]["wall_seconds"]} | {r["this_run"]["cpu_seconds"]} | '
              + ' | '.join(str(st.get(s, '')) for s in STAGES) + ' |')
  md += ['', 'Stage seconds come from each stage\'s DONE marker (the run that finished it); a '
         'continued run\'s wall time counts only what it ran. Shared stages run once, in the first '
         'seed.', '']
  return '\n'.join(md), {'claims': claims, 'runs': list(runs), 'command': command}


def reproduce(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
              command: str = '') -> tuple[str, dict]:
  """Runs every seed and writes DIR/reproduction.md + .json; returns (markdown, JSON)."""
  require(len(seeds) > 0, 'No seeds given; pass --seeds 0 (or 0,1,2).')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  start, cpu = time.perf_counter(), _cpu_seconds()
  first = os.path.join(workdir, f'seed_{seeds[0]}')
  runs = []
  for seed in seeds:
    seed_dir = os.path.join(workdir, f'seed_{seed}')
    if seed != seeds[0]:
      _share_stages(seed_dir, first)
    print(f'reproduce: seed {seed} in {seed_dir}', flush=True)
    runs.append(run_seed(config, seed_dir, seed))
  md, js = build_table(runs, command)
  wall = time.perf_counter() - start
  md += (f'\nTotal wall time of this command: {wall:.0f} s ({wall / 60:.1f} min), CPU time '
         f'{_cpu_seconds() - cpu:.0f} s, {os.cpu_count()} CPUs visible.\n')
  js.update(wall_seconds=round(wall, 1), cpu_seconds=round(_cpu_seconds() - cpu, 1),
            cpus=os.cpu_count(), seeds=list(seeds))
  with open(os.path.join(workdir, 'reproduction.md'), 'w') as f:
    f.write(md)
  with open(os.path.join(workdir, 'reproduction.json'), 'w') as f:
    json.dump(js, f, indent=1, default=float)
  return md, js


def main(argv: Sequence[str] | None = None) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  fl = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file('config', None, 'configs/action_world.py[:smoke]',
                                                flag_values=fl)
  flags.DEFINE_string('workdir', None, 'Output folder (one sub-folder per seed).', flag_values=fl)
  flags.DEFINE_list('seeds', ['0'], 'Seeds to run, e.g. 0,1,2.', flag_values=fl)
  argv = list(sys.argv if argv is None else argv)
  try:
    fl(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    print(f'error: the flags could not be parsed ({str(e).splitlines()[0]}); check the config '
          'path and --config.key=value names.', file=sys.stderr)
    return 1
  del app
  try:
    config = config_flag.value
    if config is None:
      raise UserError('No config given; pass --config configs/action_world.py.')
    if not fl.workdir:
      raise UserError('No workdir given; pass --workdir DIR for the outputs.')
    try:
      seeds = [int(s) for s in fl.seeds]
    except ValueError as e:
      raise UserError(f'--seeds={",".join(fl.seeds)} must be integers like 0,1,2.') from e
    command = 'python -m jax_vlm.reproduce ' + ' '.join(argv[1:])
    md, _ = reproduce(config, fl.workdir, seeds, command)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(md)
  return 0


if __name__ == '__main__':
  from jax_vlm.pipeline import stages
  stages.project_logging()
  sys.exit(main())
