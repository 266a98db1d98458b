"""The reproduction's table: means and spreads over seeds, and a verdict per claim of the paper.

`build_table(runs, command) -> (markdown, JSON)` reads the evaluation summaries that
jax_vlm/pipeline/reproduce.py collects per seed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jax_vlm.pipeline.claims import paired_verdict

# The reproduction's stages, in the order they run.
STAGES = ('build_data', 'train_tokenizer', 'tokenize', 'pretrain', 'augment', 'train_dynamics',
          'bootstrap',
          'train_ft', 'train_fdm', 'train_fdm_no_synth', 'train_fdm_no_weight', 'evaluate')
VARIANTS = {'train_ft': 'FT', 'train_fdm': 'FDM', 'train_fdm_no_synth': 'FDM w/o synthetic',
            'train_fdm_no_weight': 'FDM w/o weighting'}
# The true-label control (reproduce.true_label_control): its stages and variant, in the table only
# where the runs have them.
CONTROL_STAGES = ('bootstrap_true_labels', 'train_fdm_true_labels')
CONTROL_VARIANTS = {'train_fdm_true_labels': 'FDM, true labels (control)'}
# The IDP's second round (reproduce.idp_self_training, on by default; not the paper's recipe): run
# after bootstrap.
SELF_TRAINING_STAGES = ('train_idp_round2', 'bootstrap_round2')
SUBSETS = ('test', 'test_compositional')


def pipeline_stages(true_label_control: bool = False, self_training: bool = False,
                    augment: bool = True) -> tuple[str, ...]:
  """The reproduction's stages in order: `augment` (the labelled triplets' augmented copies,
  data.augment_copies > 0) only with `augment`, the IDP's second round right after bootstrap, the
  true-label control's after the (last) bootstrap and after the last FDP variant."""
  i, j = STAGES.index('bootstrap') + 1, STAGES.index('evaluate')
  after_bootstrap = (SELF_TRAINING_STAGES if self_training else ()) + (
      CONTROL_STAGES[:1] if true_label_control else ())
  last = CONTROL_STAGES[1:] if true_label_control else ()
  out = STAGES[:i] + after_bootstrap + STAGES[i:j] + last + STAGES[j:]
  return out if augment else tuple(s for s in out if s != 'augment')


def pipeline_variants(true_label_control: bool = False) -> dict[str, str]:
  """The FDP variants (stage -> label) the reproduction trains and evaluates."""
  return {**VARIANTS, **(CONTROL_VARIANTS if true_label_control else {})}


def _has_control(runs: Sequence[dict]) -> bool:
  return any(v in (r.get('fdp') or {}) for r in runs for v in CONTROL_VARIANTS)


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


def _num(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.3f}'


def _interval(c: dict) -> str:
  if c['diff'] is None:
    return 'n/a'
  if c['ci_low'] is None:
    return f'{c["diff"]:+.3f}'
  return f'{c["diff"]:+.3f} [{c["ci_low"]:+.3f}, {c["ci_high"]:+.3f}]'


# A verifier whose IDP scores prefer the real target over a random one in at most this share of
# items ranks candidates at chance (0.5 is a coin flip).
VERIFIER_CHANCE_SHARE = 0.55


def _degenerate_bootstrap(runs) -> str:
  selected = [_get(r, 'bootstrap', 'num_selected') for r in runs]
  if selected and all(s is not None and int(s) == 0 for s in selected):
    return 'bootstrap selected no pairs, so FDM trained on the labelled data only'
  return ''


def _degenerate_verifier(runs) -> str:
  shares = [_get(r, 'probe', 'trained', 'idp', 'random_target') for r in runs]
  shares = [float(s) for s in shares if s is not None and not np.isnan(s)]
  if shares and float(np.mean(shares)) <= VERIFIER_CHANCE_SHARE:
    return (f'the IDP verifier is at chance (prefers the real target over a random one in '
            f'{np.mean(shares):.2f} of items)')
  return ''


def _claims(runs: Sequence[dict], k1: int, kmax: int) -> list[dict]:
  """Every claim of the paper the reproduction measures, with its paired verdict."""
  def per_seed(fn):
    return [fn(r) for r in runs]

  def item(variant, k, subset):
    return per_seed(lambda r: _fdp(r, variant, subset, k, 'item_score'))

  no_pairs, chance = _degenerate_bootstrap(runs), _degenerate_verifier(runs)
  common = _common_steps(runs)  # every seed's mean over the same checkpoints
  specs = [('IDP is learned faster than FDP (mean over checkpoints: IDP canonical accuracy vs '
            'FDP exact match)', 'test',
            per_seed(lambda r: _curve_auc(r, 'idp_canonical_match', common)),
            per_seed(lambda r: _curve_auc(r, 'fdp_exact_match', common)), '')]
  for subset in SUBSETS:
    specs += [
        ('FDM beats FT (item score, best-of-1)', subset, item('train_fdm', k1, subset),
         item('train_ft', k1, subset), no_pairs),
        ('IDP-labelled synthetic data helps (FDM vs FDM w/o synthetic)', subset,
         item('train_fdm', k1, subset), item('train_fdm_no_synth', k1, subset), no_pairs),
        ('recognition weighting helps (FDM vs FDM w/o weighting)', subset,
         item('train_fdm', k1, subset), item('train_fdm_no_weight', k1, subset), ''),
        (f'verification helps FT (best-of-{kmax} vs best-of-{k1})', subset,
         item('train_ft', kmax, subset), item('train_ft', k1, subset), chance),
        (f'verification helps FDM (best-of-{kmax} vs best-of-{k1})', subset,
         item('train_fdm', kmax, subset), item('train_fdm', k1, subset), chance),
    ]
    if _has_control(runs):
      specs += [
          ('control: the IDP\'s label errors cost FDM (FDM with true labels vs FDM)', subset,
           item('train_fdm_true_labels', k1, subset), item('train_fdm', k1, subset), no_pairs),
          ('control: FDM with true labels beats FT', subset,
           item('train_fdm_true_labels', k1, subset), item('train_ft', k1, subset), no_pairs),
      ]
  for task in ('fdp', 'idp'):
    specs.append((f'training makes the model prefer real transitions ({task.upper()} probe, mean '
                  'share over 4 negatives, trained vs random init)', 'test',
                  per_seed(lambda r, t=task: _probe_mean(r, 'trained', t)),
                  per_seed(lambda r, t=task: _probe_mean(r, 'random_init', t)), ''))
  claims = []
  for claim, subset, a, b, degenerate in specs:
    claims.append(dict(claim=claim, subset=subset, per_seed_a=a, per_seed_b=b,
                       **paired_verdict(a, b, degenerate)))
  return claims


def curve_rows(runs: Sequence[dict]) -> tuple[list[int], dict, dict]:
  """(steps, IDP and FDP per-seed value rows by key) of the train_dynamics learning curves,
  over every step some seed has (a seed without that step gives None there: e.g. a checkpoint
  a preempted run saved off the schedule), matched by step, never by position."""
  steps = sorted({row['step'] for r in runs for row in r.get('learning_curve') or []})

  def rows(key):
    out = []
    for r in runs:
      by_step = {row['step']: row.get(key) for row in r.get('learning_curve') or []}
      out.append([by_step.get(s) for s in steps])
    return out
  return (steps, {k: rows(k) for k in ('idp_effect_match', 'idp_canonical_match')},
          {k: rows(k) for k in ('fdp_exact_match', 'fdp_item_score')})


def _first_stage_rows(run: dict) -> list[dict]:
  """The run's learning-curve rows of its first stage (`train_dynamics`): a stage that continues
  the curve (the IDP's second round, `stage` on its rows) is left out of what compares IDP with
  FDP over the same joint training."""
  rows = run.get('learning_curve') or []
  first = rows[0].get('stage') if rows else None
  return [row for row in rows if row.get('stage') == first]


def continued_steps(runs: Sequence[dict]) -> dict[int, str]:
  """{step: stage} of the learning-curve steps a continuing stage made (see _first_stage_rows)."""
  out = {}
  for r in runs:
    first = _first_stage_rows(r)
    out.update({row['step']: row['stage'] for row in r.get('learning_curve') or []
                if row not in first})
  return out


def _common_steps(runs: Sequence[dict]) -> set[int]:
  """The first-stage learning-curve steps every run has (the scheduled checkpoints)."""
  sets = [{row['step'] for row in _first_stage_rows(r)} for r in runs]
  return set.intersection(*sets) if sets else set()


def _curve_auc(run: dict, key: str, steps: set[int] | None = None) -> float | None:
  """The mean of `key` over the run's first-stage checkpoints (only those at `steps` when
  given)."""
  rows = [r for r in _first_stage_rows(run) if steps is None or r['step'] in steps]
  return float(np.mean([r[key] for r in rows])) if rows else None


def _probe_mean(run: dict, which: str, task: str) -> float | None:
  shares = _get(run, 'probe', which, task)
  if not shares:
    return None
  vals = [v for v in shares.values() if v is not None and not np.isnan(v)]
  return float(np.mean(vals)) if vals else None


def labelled_curve(points: Sequence[tuple[int, Sequence[dict]]]) -> tuple[str, list[dict]]:
  """(markdown, rows) of FT vs FDM per labelled-set size; `points`: (size, that size's runs).

  Each row: the paired FDM - FT item score (best-of-1) on `test` over the seeds with its verdict,
  the per-seed values, and what drives FDM's data at that size (IDP effect match, bootstrap label
  accuracy)."""
  md = ['## Where bootstrapping pays: FT vs FDM as the labelled set shrinks', '',
        'The unlabelled pairs and the pretrained base stay the same; only the labelled set '
        'shrinks (its first N examples). Item score, best-of-1, on `test`; FDM - FT paired per '
        'seed, with its 95% t interval.', '',
        '| labelled | FT | FDM | FDM - FT [95% CI] | verdict | IDP effect match | '
        'bootstrap labels correct |', '|---|---|---|---|---|---|---|']
  rows = []
  first = next(iter(VARIANTS))
  for size, runs in sorted(points, key=lambda p: p[0]):
    k1 = min(int(k) for k in _get(runs[0], 'settings', 'k_list', default=[1]))
    ft = [_fdp(r, 'train_ft', 'test', k1, 'item_score') for r in runs]
    fdm = [_fdp(r, 'train_fdm', 'test', k1, 'item_score') for r in runs]
    c = paired_verdict(fdm, ft, _degenerate_bootstrap(runs))
    idp = [_get(r, 'fdp', first, 'splits', 'test', 'idp', 'all', 'effect_match') for r in runs]
    boot = [_get(r, 'bootstrap', 'label_accuracy') for r in runs]
    rows.append(dict(num_labelled=int(size), seeds=[r['seed'] for r in runs], per_seed_ft=ft,
                     per_seed_fdm=fdm, idp_effect_match=idp, bootstrap_label_accuracy=boot, **c))
    md.append(f'| {size} | {_fmt(ft)} | {_fmt(fdm)} | {_interval(c)} | {c["verdict"]} | '
              f'{_fmt(idp)} | {_fmt(boot)} |')
  md.append('')
  return '\n'.join(md), rows


def _base_section(runs: Sequence[dict]) -> list[str]:
  """What the seeds started from: the pretrain stage's phases and how its base reads held-out
  scenes (the first run that carries it: every seed shares one base)."""
  base = next((r['base'] for r in runs if r.get('base')), None)
  if not base:
    return []
  phases = [f'{base.get("steps", 0)} steps on {", ".join(base.get("documents", []))}']
  if base.get('continue_steps'):
    kinds = base.get('continue_documents', [])
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    cycles = int(base.get('continue_cycles') or 1)
    again = f' ({cycles} cycles, each a warm restart from the last)' if cycles > 1 else ''
    phases.append(f'then {base["continue_steps"]} steps{again} on ' + ', '.join(
        f'{k} x{n}' if n > 1 else k for k, n in counts.items()))
  if 'region' in [*base.get('documents', []), *base.get('continue_documents', [])]:
    phases[-1] += (f' (region strips with at least {base.get("region_changed_cells", 1)} '
                   'changed cells of 3)')
  md = ['## The pretrained base (built once, shared by every seed)', '',
        'Pretraining (`pretrain` stage): ' + '; '.join(phases) + '.', '']
  readings = base.get('first_phase_readings') or []
  if base.get('first_phase_restarts'):
    # The step each attempt was read at (pretrain.check_step); older bases: at the end.
    total = base.get('steps')
    steps = base.get('first_phase_checked_at') or [total] * len(readings)
    tries = '; then '.join(', '.join(f'{k} {_num(v.get("document_accuracy"))}'
                                     for k, v in r.items())
                           + (f' (at step {s} of {total})' if s != total else '')
                           for r, s in zip(readings, steps))
    md += [f'The first phase was trained {len(readings)} times (`pretrain.restarts`): its '
           f'held-out documents entirely right were {tries}. The base goes on from the last.', '']
  reading = base.get('held_out_reading') or {}
  if reading:
    md += ['| held-out document kind | token accuracy | whole documents right |', '|---|---|---|']
    md += [f'| {k} | {_num(v.get("token_accuracy"))} | {_num(v.get("document_accuracy"))} |'
           for k, v in reading.items()]
    md += ['', 'Teacher-forced, on fresh scenes pretraining never saw.', '']
  return md


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
  claims = _claims(runs, k1, kmax)
  md += ['## Claims', '',
         'Each claim is a paired difference per seed (this - vs), with its mean and 95% t '
         'interval over seeds: **holds** when the interval lies above 0, **reversed** below 0, '
         '**inconclusive** when it crosses 0; degenerate comparisons are named, not judged.', '',
         '| claim | subset | this | vs | difference [95% CI] | verdict |',
         '|---|---|---|---|---|---|']
  for c in claims:
    md.append(f'| {c["claim"]} | {c["subset"]} | {_num(c["mean_a"])} | {_num(c["mean_b"])} | '
              f'{_interval(c)} | {c["verdict"]} |')
  md.append('')

  md += _base_section(runs)

  # FDP variants with best-of-K.
  for subset in SUBSETS:
    md += [f'## FDP on `{subset}` (best-of-K with the IDP verifier)', '']
    head = (['variant', f'success@{k1}', f'minimal@{k1}', f'exact@{k1}']
            + [f'item@{k}' for k in k_list] + [f'exact@{kmax}', f'oracle item@{kmax}'])
    md += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for variant, label in pipeline_variants(_has_control(runs)).items():
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
  idp_stage = _get(runs[0], 'settings', 'idp_stage', default='train_dynamics')
  md += [f'## IDP (greedy action text, `{idp_stage}` model)', '',
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
  md += ['## IDP vs FDP learning speed (joint training on the labelled data, held-out `test`)', '']
  later = continued_steps(runs)
  if later:
    md += [f'Steps marked `{", ".join(sorted(set(later.values())))}` continue from the last '
           'checkpoint before them: the IDP\'s second round, trained on the labelled triplets, '
           'their augmented copies and the first round\'s selected pairs with its IDP labels. The '
           'claim "IDP is learned faster than FDP" compares the first stage\'s steps only.', '']
  md += ['| step | IDP canonical match | IDP effect match | FDP exact (1 sample) '
         '| FDP item score |',
         '|---|---|---|---|---|']
  steps, idp_rows, fdp_rows = curve_rows(runs)
  by_key = {**idp_rows, **fdp_rows}
  for i, step in enumerate(steps):
    col = lambda key, i=i: [row[i] for row in by_key[key]]  # noqa: E731
    seeds_here = sum(v is not None for v in col('idp_effect_match'))
    label = f'{step}' + (f' ({later[step]})' if step in later else '')
    if seeds_here != len(runs):
      label += f' ({seeds_here} of {len(runs)} seeds)'
    md.append(f'| {label} | {_fmt(col("idp_canonical_match"))} | {_fmt(col("idp_effect_match"))} '
              f'| {_fmt(col("fdp_exact_match"))} | {_fmt(col("fdp_item_score"))} |')
  md.append('')

  # Probe.
  md += ['## Trajectory preference probe (share of items where the real transition scores higher)',
         '', 'random init = the same architecture with freshly initialised weights (no training); '
         f'trained = the `{idp_stage}` model (IDP + FDP). Length-normalised log-likelihoods.', '',
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
  effect = [_get(r, 'bootstrap', 'label_effect_match') for r in runs]
  if any(v is not None for v in effect):
    md[-2] += (' By effect (the label\'s action applied to the source gives the target, so the '
               'triplet is a right one for FDP even where it names the change another way than '
               f'the withheld action): {_fmt(effect)} on all, '
               f'{_fmt([_get(r, "bootstrap", "selected_label_effect_match") for r in runs])} '
               'selected.')
  if any(_get(r, 'bootstrap_round1') for r in runs):  # reproduce.idp_self_training
    md += ['These are the second round\'s labels (`bootstrap_round2`, by `train_idp_round2`), '
           'which FDM trained on. The first round\'s (`bootstrap`, by `train_dynamics`): '
           f'accuracy {_fmt([_get(r, "bootstrap_round1", "label_accuracy") for r in runs])}; '
           'selected '
           f'{_fmt([_get(r, "bootstrap_round1", "selected_label_accuracy") for r in runs])} '
           'correct.', '']
  shares = sorted({f for r in runs for f in (_get(r, 'bootstrap', 'selection_curve') or {})},
                  key=float)
  if shares:
    md += ['Selected labels correct, had K been a share of the IDP-labelled pairs: ' + ', '.join(
        f'{float(f):.0%} {_fmt([_get(r, "bootstrap", "selection_curve", f) for r in runs])}'
        for f in shares) + '.', '']
  ran = lambda names: any(s in r.get('stage_seconds', {}) for r in runs for s in names)  # noqa: E731
  stages = pipeline_stages(ran(CONTROL_STAGES), ran(SELF_TRAINING_STAGES), ran(('augment',)))
  md += ['| seed | wall s (this command) | CPU s | ' + ' | '.join(stages) + ' |',
         '|' + '---|' * (3 + len(stages))]
  for r in runs:
    st = r.get('stage_seconds', {})
    cpu = r.get('stage_cpu_seconds', {})
    comp = r.get('stage_compiles', {})
    comp_s = r.get('stage_compile_seconds', {})

    def cell(s):
      if s not in st:
        return ''
      extra = f' / {cpu[s]:g} CPU' if s in cpu else ''
      extra += f' / {comp[s]:g} compiles' if s in comp else ''
      extra += f' ({comp_s[s]:g} s)' if comp_s.get(s) else ''
      return f'{st[s]:g}{extra}'

    md.append(f'| {r["seed"]} | {r["this_run"]["wall_seconds"]} | {r["this_run"]["cpu_seconds"]} | '
              + ' | '.join(cell(s) for s in stages) + ' |')
  md += ['', 'Per stage: wall seconds / CPU seconds / XLA programs compiled or read from the '
         'compile cache (the seconds that took), from each stage\'s DONE marker (the run that '
         'finished it); a continued run\'s wall time counts only what it ran. Shared stages run '
         'once, in the first seed.', '']
  return '\n'.join(md), {'claims': claims, 'runs': list(runs), 'command': command}
