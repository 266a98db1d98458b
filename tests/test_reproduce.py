"""The reproduction: stage settings per FDP variant, the claims table, and the smoke pipeline end to
end (every stage, a rerun that skips them all)."""

import json
import os
import time

import pytest

from configs import reproduce as preset
from jax_vlm.core.errors import UserError
from jax_vlm.pipeline import reproduce as R
from jax_vlm.pipeline import stages, tables

# The default pipeline: the IDP's second round is on (reproduce.idp_self_training, session 19).
DEFAULT_STAGES = tables.pipeline_stages(self_training=True)

def test_variant_settings_reach_each_stage(tmp_path):
  from jax_vlm.input.datasets import resolve_paths
  config = preset.get_config('smoke')
  config.stage_overrides.train_fdm = (('train.learning_rate', 1e-5),)  # the user's own wins
  rc = resolve_paths(R.reproduction_config(config, seed=3), str(tmp_path))
  assert rc.seed == 3 and tuple(rc.stages) == DEFAULT_STAGES
  for name in DEFAULT_STAGES:
    stages.get(name)  # every stage is registered
  dyn = stages.stage_config(rc, 'train_dynamics')
  assert dyn.train.num_steps == config.reproduce.dynamics_steps
  assert dyn.train.keep_checkpoints == 0
  assert dyn.train.checkpoint_every == config.reproduce.dynamics_steps // 2
  ft = stages.stage_config(rc, 'train_ft')
  assert ft.train.num_steps == config.reproduce.fdp_steps
  assert ft.train.init_from == 'train_dynamics'
  assert ft.train.learning_rate == config.reproduce.fdp_learning_rate
  assert stages.stage_config(rc, 'train_fdm').train.learning_rate == 1e-5
  assert rc.sampler.max_action_tokens <= rc.data.action_max_tokens
  assert tuple(rc.world_eval.fdp_stages) == tuple(tables.VARIANTS)


def _run(seed, ft, fdm, k8_gain):
  """A fake evaluation summary: FT and FDM item scores at k=1, +k8_gain at k=8."""
  def fdp(item):
    subset = {'n': 10, 'fdp': {}, 'reference': {
        'target_codes': {'all': dict(edit_success=1.0, minimal_editing=1.0, exact_match=1.0,
                                     item_score=1.0)},
        'copy_source': {'all': dict(edit_success=0.0, minimal_editing=1.0, exact_match=0.0,
                                    item_score=0.0)}},
        'idp': {'all': dict(canonical_match=0.9, effect_match=0.95, parsed=1.0, BLEU=50.0,
                            ROUGEL=0.8)}}
    for k in (1, 2, 4, 8):
      v = item + (k8_gain if k == 8 else 0.0)
      subset['fdp'][f'k={k}'] = {'all': dict(edit_success=v, minimal_editing=1.0,
                                             item_score=v, exact_match=v, oracle=v)}
    return {'splits': {'test': subset, 'test_compositional': subset}}
  return {
      'seed': seed, 'settings': {'k_list': [1, 2, 4, 8]},
      'fdp': {'train_ft': fdp(ft), 'train_fdm': fdp(fdm), 'train_fdm_no_synth': fdp(ft),
              'train_fdm_no_weight': fdp(fdm)},
      'learning_curve': [dict(step=10, idp_canonical_match=0.5, idp_effect_match=0.5,
                              fdp_exact_match=0.1, fdp_item_score=0.2)],
      'probe': {'random_init': {'fdp': {'swapped': 0.5}, 'idp': {'swapped': 0.5}},
                'trained': {'fdp': {'swapped': 0.9}, 'idp': {'swapped': 0.8}}},
      'this_run': {'wall_seconds': 1.0, 'cpu_seconds': 2.0}, 'stage_seconds': {}}


def test_table_means_spreads_and_verdicts():
  md, js = tables.build_table([_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1)], 'cmd')
  claims = {(c['claim'], c['subset']): c for c in js['claims']}
  fdm_vs_ft = claims[('FDM beats FT (item score, best-of-1)', 'test')]
  assert fdm_vs_ft['mean_a'] == pytest.approx(0.4) and fdm_vs_ft['mean_b'] == pytest.approx(0.5)
  assert fdm_vs_ft['per_seed_a'] == pytest.approx([0.3, 0.5])
  assert fdm_vs_ft['verdict'] == 'reversed'  # -0.1 on both seeds
  verify = claims[('verification helps FDM (best-of-8 vs best-of-1)', 'test_compositional')]
  assert verify['verdict'] == 'holds'
  weighting = claims[('recognition weighting helps (FDM vs FDM w/o weighting)', 'test')]
  assert weighting['verdict'].startswith('degenerate: the two sides are identical')
  assert '| FT | 0.500 ± 0.141 |' in md  # mean ± sample std over the two seeds
  assert 'Command: `cmd`' in md and '| -0.100 [-0.100, -0.100] | reversed |' in md
  assert 'had K been a share' not in md  # runs without a selection curve get no line

  runs = [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1)]
  for r, top in zip(runs, (0.8, 0.6)):
    r['bootstrap'] = {'selection_curve': {'0.1': top, '1.0': 0.3}}
  md, _ = tables.build_table(runs)
  assert ('had K been a share of the IDP-labelled pairs: 10% 0.700 ± 0.141, 100% 0.300 ± 0.000.'
          in md)


def test_table_inconclusive_and_degenerate_claims():
  runs = [_run(0, 0.4, 0.45, 0.1), _run(1, 0.6, 0.55, -0.05), _run(2, 0.5, 0.52, 0.02)]
  for r in runs:
    r['bootstrap'] = {'num_selected': 0}
    r['probe']['trained']['idp']['random_target'] = 0.5
  _, js = tables.build_table(runs)
  claims = {(c['claim'], c['subset']): c for c in js['claims']}
  assert claims[('FDM beats FT (item score, best-of-1)', 'test')]['verdict'] == (
      'degenerate: bootstrap selected no pairs, so FDM trained on the labelled data only')
  assert claims[('verification helps FT (best-of-8 vs best-of-1)', 'test')]['verdict'].startswith(
      'degenerate: the IDP verifier is at chance')
  runs[0]['bootstrap']['num_selected'] = 5
  for r in runs:
    r['probe']['trained']['idp']['random_target'] = 0.9
  _, js = tables.build_table(runs)
  claims = {(c['claim'], c['subset']): c for c in js['claims']}
  fdm_vs_ft = claims[('FDM beats FT (item score, best-of-1)', 'test')]
  assert fdm_vs_ft['verdict'] == 'inconclusive (CI crosses 0)'
  assert fdm_vs_ft['ci_low'] < 0 < fdm_vs_ft['ci_high']
  assert claims[('verification helps FT (best-of-8 vs best-of-1)', 'test')]['verdict'] == (
      'inconclusive (CI crosses 0)')


def test_true_label_control_adds_its_stages_variant_and_claims(tmp_path):
  from jax_vlm.input.datasets import resolve_paths
  config = preset.get_config('smoke')
  assert not config.reproduce.true_label_control  # a control, not in the default budget
  config.reproduce.true_label_control = True
  with pytest.raises(UserError, match='add --config.reproduce.idp_self_training=false'):
    R.reproduction_config(config, seed=0)  # it replaces the first round's labels
  config.reproduce.idp_self_training = False
  rc = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  order = list(rc.stages)
  assert order.index('bootstrap') < order.index('bootstrap_true_labels') < order.index(
      'train_fdm_true_labels') < order.index('evaluate')
  assert set(order) == set(R.STAGES) | {'bootstrap_true_labels', 'train_fdm_true_labels'}
  for name in order:
    stages.get(name)
  assert tuple(rc.world_eval.fdp_stages) == (*tables.VARIANTS, 'train_fdm_true_labels')
  ctl = stages.stage_config(rc, 'train_fdm_true_labels')
  assert ctl.train.num_steps == config.reproduce.fdp_steps
  assert ctl.train.init_from == 'train_dynamics'
  # Without the control, the evaluate stage's config is the one earlier runs fingerprinted.
  config.reproduce.true_label_control = False
  plain = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  assert tuple(plain.stages) == R.STAGES
  assert tuple(plain.world_eval.fdp_stages) == tuple(tables.VARIANTS)

  runs = [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1), _run(2, 0.5, 0.35, 0.1)]
  md, js = tables.build_table(runs)
  assert not any(c['claim'].startswith('control') for c in js['claims'])
  assert 'true labels' not in md
  for r, true in zip(runs, (0.55, 0.7, 0.6)):
    r['fdp']['train_fdm_true_labels'] = _run(0, true, true, 0.0)['fdp']['train_ft']
    r['stage_seconds'] = {'bootstrap_true_labels': 1.0}
  md, js = tables.build_table(runs)
  claims = {(c['claim'], c['subset']): c for c in js['claims']}
  cost = claims[("control: the IDP's label errors cost FDM (FDM with true labels vs FDM)", 'test')]
  assert cost['per_seed_a'] == pytest.approx([0.55, 0.7, 0.6]) and cost['verdict'] == 'holds'
  vs_ft = claims[('control: FDM with true labels beats FT', 'test_compositional')]
  assert vs_ft['mean_b'] == pytest.approx(0.5) and vs_ft['verdict'] == 'holds'
  assert '| FDM, true labels (control) | 0.617 ± 0.076 |' in md
  assert '| bootstrap_true_labels |' in md.replace(' | bootstrap | ', ' | ')  # its time column


def test_idp_self_training_adds_its_round_and_feeds_it_on(tmp_path):
  from jax_vlm.input.datasets import resolve_paths
  from jax_vlm.pipeline.fdp_variants import SYNTHETIC, SYNTHETIC_ROUND2
  from jax_vlm.pipeline.world_stages import AUGMENTED
  config = preset.get_config('smoke')
  assert config.reproduce.idp_self_training  # on by default since session 19
  assert preset.get_config().reproduce.idp_self_training
  assert config.reproduce.idp_self_training_from == 'train_dynamics'  # continued, by default
  config.reproduce.idp_self_training_from = 'base'  # first: session 17's round, from the base
  config.reproduce.idp_self_training = False  # the paper's single round
  plain = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  assert tuple(plain.stages) == R.STAGES
  config.reproduce.idp_self_training = True
  config.stage_overrides.train_idp_round2 = (('train.learning_rate', 2e-3),)  # the user's own wins
  rc = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  order = list(rc.stages)
  i = R.STAGES.index('bootstrap') + 1
  assert order == [*R.STAGES[:i], 'train_idp_round2', 'bootstrap_round2', *R.STAGES[i:]]
  assert tuple(order) == DEFAULT_STAGES
  for name in order:
    stages.get(name)
  # The second round trains as train_dynamics does (start, objectives, loss) plus the first
  # round's pairs, for its own number of steps.
  dyn, rnd = (stages.stage_config(rc, n) for n in ('train_dynamics', 'train_idp_round2'))
  augmented = AUGMENTED.format(workdir=tmp_path)
  assert tuple(dyn.data.extra_train) == (augmented,)
  assert tuple(rnd.data.extra_train) == (augmented, SYNTHETIC.format(workdir=tmp_path))
  assert rnd.train.num_steps == config.reproduce.idp_self_training_steps != dyn.train.num_steps
  assert rnd.train.learning_rate == 2e-3
  for key in ('init_from', 'keep_checkpoints'):
    assert rnd.train[key] == dyn.train[key]
  assert rnd.objectives.to_dict() == dyn.objectives.to_dict()
  assert rnd.data.recognition_weights == dyn.data.recognition_weights
  assert stages.stage_config(rc, 'bootstrap_round2').bootstrap.labeller_stage == (
      'train_idp_round2')
  # The variants with synthetic data read the second round's; the others are untouched, so a
  # workdir's train_ft and train_fdm_no_synth are reused as they are.
  round2 = (SYNTHETIC_ROUND2.format(workdir=tmp_path),)
  for name in ('train_fdm', 'train_fdm_no_weight'):
    assert tuple(stages.stage_config(rc, name).data.extra_train) == round2
  for name in ('train_dynamics', 'bootstrap', 'train_ft', 'train_fdm_no_synth'):
    assert stages.fingerprint_config(stages.stage_config(rc, name), name, str(tmp_path)) == (
        stages.fingerprint_config(stages.stage_config(plain, name), name, str(tmp_path)))
  assert rc.world_eval.idp_stage == 'train_idp_round2' and plain.world_eval.idp_stage == (
      'train_dynamics')
  # Continued from train_dynamics' params (the default): fine-tuned as the FDP variants are.
  config.reproduce.idp_self_training_from = 'train_dynamics'
  config.stage_overrides.train_idp_round2 = ()
  warm = stages.stage_config(resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path)),
                             'train_idp_round2')
  assert warm.train.init_from == 'train_dynamics' != dyn.train.init_from
  assert warm.train.learning_rate == config.reproduce.fdp_learning_rate
  assert warm.train.warmup_steps == config.reproduce.fdp_warmup_steps
  assert tuple(warm.data.extra_train) == tuple(rnd.data.extra_train)
  assert warm.objectives.to_dict() == dyn.objectives.to_dict()
  config.reproduce.idp_self_training_from = 'scratch'
  with pytest.raises(UserError, match="idp_self_training_from='scratch' must be 'base' or"):
    R.reproduction_config(config, seed=0)
  config.reproduce.idp_self_training_from = 'base'
  config.reproduce.true_label_control = True
  with pytest.raises(UserError, match='cannot run together'):
    R.reproduction_config(config, seed=0)


def test_augmentation_adds_its_stage_and_feeds_train_dynamics_only(tmp_path):
  from jax_vlm.input.datasets import resolve_paths
  from jax_vlm.pipeline.fdp_variants import SYNTHETIC
  from jax_vlm.pipeline.world_stages import AUGMENTED
  config = preset.get_config('smoke')
  assert config.data.augment_copies > 0 and preset.get_config().data.augment_copies == 10
  config.data.augment_copies = 0  # off: the pipeline as it was before session 18
  plain = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  assert 'augment' not in plain.stages
  config.data.augment_copies = 3
  rc = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  order = list(rc.stages)
  assert order == list(DEFAULT_STAGES)
  assert list(plain.stages) == [n for n in DEFAULT_STAGES if n != 'augment']
  augmented = AUGMENTED.format(workdir=tmp_path)
  assert tuple(stages.stage_config(rc, 'train_dynamics').data.extra_train) == (augmented,)
  assert stages.stage_config(rc, 'augment').data.augment_copies == 3
  # The FDP variants fine-tune on what they did (labelled, plus synthetic for FDM), from a
  # train_dynamics that changed: their fingerprints change with it, the shared stages' do not.
  for name in R.STAGES:
    got = stages.stage_config(rc, name).data.extra_train
    if name != 'train_dynamics':
      assert augmented not in tuple(got), name
    same = (stages.fingerprint_config(stages.stage_config(rc, name), name, str(tmp_path))
            == stages.fingerprint_config(stages.stage_config(plain, name), name, str(tmp_path)))
    assert same == (name in R.SHARED_STAGES), name
  # The IDP's second round trains as train_dynamics does: on the augmented triplets too.
  config.reproduce.idp_self_training = True
  rc = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  assert tuple(stages.stage_config(rc, 'train_idp_round2').data.extra_train) == (
      augmented, SYNTHETIC.format(workdir=tmp_path))
  config.data.augment_transforms = ('mirror', 'rotate')  # refused before any stage runs
  with pytest.raises(UserError, match=r"augment_transforms=\('mirror', 'rotate'\) must name"):
    R.reproduction_config(config, seed=0)
  config.data.augment_copies = -1
  with pytest.raises(UserError, match='augment_copies=-1'):
    R.reproduction_config(config, seed=0)


def test_labelled_size_settings_reach_only_the_seed_stages(tmp_path):
  from jax_vlm.input.datasets import resolve_paths
  config = preset.get_config('smoke')
  full = resolve_paths(R.reproduction_config(config, seed=0), str(tmp_path))
  small = resolve_paths(R.reproduction_config(config, seed=0, train_examples=50), str(tmp_path))
  for name in DEFAULT_STAGES:
    got = stages.stage_config(small, name).data.train_examples
    assert got == (0 if name in R.SHARED_STAGES else 50), name
    same = (stages.fingerprint_config(stages.stage_config(small, name), name, str(tmp_path))
            == stages.fingerprint_config(stages.stage_config(full, name), name, str(tmp_path)))
    assert same == (name in R.SHARED_STAGES), name  # the shared data stages are reused as they are
  # A key at its default stays out of the fingerprint (earlier runs' markers still match).
  dyn = stages.fingerprint_config(stages.stage_config(full, 'train_dynamics'), 'train_dynamics',
                                  str(tmp_path))
  assert 'train_examples' not in dyn['data']


def test_pretraining_checkpoints_and_weighs_text_output(tmp_path):
  from jax_vlm.pipeline import world_stages
  config = preset.get_config()
  pre = world_stages.pretraining_config(config)
  # A stopped 2,400-step pretraining resumes from a checkpoint at most 400 steps back.
  assert config.pretrain.num_steps > world_stages.PRETRAIN_CHECKPOINT_EVERY
  assert pre.train.checkpoint_every == world_stages.PRETRAIN_CHECKPOINT_EVERY
  # Captions weigh 2:1 against text-to-image by default (the base then reads shapes).
  assert (pre.objectives.idp_loss_weight, pre.objectives.fdp_loss_weight) == (2.0, 1.0)
  config.pretrain.text_loss_weight = 1.0
  assert world_stages.pretraining_config(config).objectives.idp_loss_weight == 1.0

  def covered(weight):
    c = preset.get_config()
    c.pretrain.text_loss_weight = weight
    return stages.fingerprint_config(stages.stage_config(c, 'pretrain'), 'pretrain', str(tmp_path))
  # At 1.0 (the weight before the key existed) the key leaves the fingerprint as it was, so the
  # 1:1 bases made earlier still match a run that asks for 1.0.
  assert 'text_loss_weight' not in covered(1.0)['pretrain']
  assert covered(2.0)['pretrain']['text_loss_weight'] == 2.0
  # A base made before the second phase existed (no such keys) matches a run that asks for none.
  c = preset.get_config()
  c.pretrain.continue_steps, c.pretrain.continue_documents = 0, ()
  assert not {'continue_steps', 'continue_documents'} & set(
      stages.fingerprint_config(stages.stage_config(c, 'pretrain'), 'pretrain',
                                str(tmp_path))['pretrain'])
  # `region` strips with any changed cell (session 11's runs) keep their bases' fingerprints.
  c.pretrain.region_changed_cells = 1
  assert 'region_changed_cells' not in stages.fingerprint_config(
      stages.stage_config(c, 'pretrain'), 'pretrain', str(tmp_path))['pretrain']
  # By default it has one: three eighths of its documents `difference`, a quarter `region` with
  # every strip cell changed (in the fingerprint, as 3 is not the value before the key existed).
  assert covered(2.0)['pretrain']['continue_steps'] == 3000
  assert covered(2.0)['pretrain']['continue_documents'].count('difference') == 3
  assert covered(2.0)['pretrain']['continue_documents'].count('region') == 2
  assert covered(2.0)['pretrain']['region_changed_cells'] == 3
  c.pretrain.continue_steps, c.pretrain.continue_documents = 30, ('difference',)
  more = stages.fingerprint_config(stages.stage_config(c, 'pretrain'), 'pretrain', str(tmp_path))
  assert (more['pretrain']['continue_steps'], more['pretrain']['continue_documents']) == (
      30, ['difference'])
  cont = world_stages.pretraining_config(c, 30, init_from='/base')
  assert (cont.train.num_steps, cont.train.init_from, cont.train.checkpoint_every) == (
      30, '/base', 30)


def test_keys_pretraining_sets_itself_leave_its_fingerprint(tmp_path):
  from jax_vlm.pipeline import world_stages
  keys = [k for k, readers in stages.NOT_READ_BY.items() if 'pretrain' in readers and '.' in k]
  assert 'train.learning_rate' in keys and 'data.length_buckets' in keys

  def covered(c):
    return stages.fingerprint_config(stages.stage_config(c, 'pretrain'), 'pretrain', str(tmp_path))
  base = preset.get_config()
  for key in keys:  # pretraining_config overwrites each, so the stage never reads the run's value
    section, name = key.split('.')
    c = preset.get_config()
    value = c[section][name]
    c[section][name] = ('/elsewhere' if isinstance(value, str) else
                        not value if isinstance(value, bool) else
                        tuple(value) + (99,) if isinstance(value, tuple) else value * 2 + 1)
    for args in ((), (7, '/base')):
      assert (world_stages.pretraining_config(c, *args).to_dict()
              == world_stages.pretraining_config(base, *args).to_dict()), key
    assert covered(c) == covered(base), key
  c = preset.get_config()
  c.train.b2 = 0.5  # a trainer key pretraining does read
  assert covered(c) != covered(base)
  dyn = stages.fingerprint_config(stages.stage_config(base, 'train_dynamics'), 'train_dynamics',
                                  str(tmp_path))
  assert 'learning_rate' in dyn['train']  # the stages after pretraining still cover it


def test_labelled_size_curve_runs_each_size_and_draws_it(tmp_path, monkeypatch):
  calls = []

  def fake_run_seed(config, workdir, seed, rerun=(), train_examples=0):
    calls.append((os.path.relpath(workdir, tmp_path), seed, train_examples))
    n = train_examples or 200
    run = _run(seed, 0.3, 0.3 + n / 1000 + seed / 100, 0.0)
    run.update(num_labelled=n, bootstrap={'num_selected': 10, 'label_accuracy': n / 400})
    return run

  monkeypatch.setattr(R, 'run_seed', fake_run_seed)
  config = preset.get_config('smoke')
  config.reproduce.labelled_sizes = (100, 50)
  config.reproduce.jobs = 1  # in this process, where run_seed is the fake
  md, js = R.reproduce(config, str(tmp_path), [0, 1], 'cmd')
  assert calls == [('seed_0', 0, 0), ('seed_1', 1, 0),
                   ('labelled_50/seed_0', 0, 50), ('labelled_50/seed_1', 1, 50),
                   ('labelled_100/seed_0', 0, 100), ('labelled_100/seed_1', 1, 100)]
  for n in (50, 100):  # the shared stages are links to the first seed's
    assert os.path.islink(tmp_path / f'labelled_{n}' / 'seed_1' / 'pretrain')
  curve = js['labelled_curve']
  assert [p['num_labelled'] for p in curve] == [50, 100, 200]  # the full set is the last point
  assert [p['diff'] for p in curve] == pytest.approx([0.055, 0.105, 0.205])
  # seed 1 gains 0.01 more: a t interval of +-0.064 over two seeds
  assert [p['verdict'] for p in curve] == ['inconclusive (CI crosses 0)', 'holds', 'holds']
  assert curve[0]['per_seed_fdm'] == pytest.approx([0.35, 0.36])
  assert '| 50 | 0.300 ± 0.000 | 0.355 ± 0.007 | +0.055 [' in md
  assert 'Where bootstrapping pays' in md
  with open(tmp_path / 'reproduction.html') as f:
    html = f.read()
  assert 'FDM - FT per labelled-set size' in html and 'labelled set shrinks' in html
  config.reproduce.labelled_sizes = (0,)
  calls.clear()
  with pytest.raises(UserError, match='labelled_sizes'):
    R.reproduce(config, str(tmp_path), [0], 'cmd')
  assert not calls  # refused before any stage ran


def test_worker_count_and_cores():
  config = preset.get_config('smoke')
  cores = sorted(os.sched_getaffinity(0))
  assert config.reproduce.jobs == 0  # one per core when there are several runs
  assert R.num_workers(config, 1) == 1  # one run: in this process, threaded over every core
  assert R.num_workers(config, 50) == len(cores)
  config.reproduce.jobs = 3
  assert R.num_workers(config, 2) == 2 and R.num_workers(config, 5) == 3
  config.reproduce.jobs = -1
  with pytest.raises(UserError, match='reproduce.jobs=-1 must be 0'):
    R.num_workers(config, 5)
  for workers in (1, 2, 3):
    sets = R._core_sets(workers)
    assert len(sets) == workers and set().union(*sets) == set(cores)
    if workers <= len(cores):  # each core to one worker
      assert sum(map(len, sets)) == len(cores)


def test_workers_rerun_the_shared_stages_once(tmp_path, monkeypatch):
  shared_calls, worker_jobs = [], []
  monkeypatch.setattr(R.stages, 'run_stages', lambda cfg, workdir, names=None, rerun=(), **kw:
                      shared_calls.append((os.path.relpath(workdir, tmp_path), list(names),
                                           list(rerun))) or True)

  def fake_workers(jobs, workers):
    worker_jobs.extend((os.path.relpath(j['workdir'], tmp_path), j['rerun']) for j in jobs)
    return [_run(j['seed'], 0.3, 0.3, 0.0) for j in jobs]

  monkeypatch.setattr(R, '_run_in_workers', fake_workers)
  config = preset.get_config('smoke')
  config.reproduce.jobs = 2
  R.reproduce(config, str(tmp_path), [0, 1], 'cmd', rerun=['pretrain', 'train_ft'])
  assert shared_calls == [('seed_0', list(R.SHARED_STAGES), ['pretrain'])]  # here, once
  assert worker_jobs == [('seed_0', ['train_ft']), ('seed_1', ['train_ft'])]


def test_smoke_reproduction_end_to_end(tmp_path, monkeypatch):
  """The README's smoke command verbatim, as a child process (one CPU device, XLA optimising as
  in real runs), then a rerun."""
  import subprocess
  import sys
  workdir = str(tmp_path / 'run')
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the tests' 8 devices and unoptimised code slow the pipeline down
  env.pop('PJRT_NPROC', None)  # and conftest's threads for them (measured: 475 s, 455 without)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_vlm.reproduce', '--config', 'configs/reproduce.py:smoke',
       '--workdir', workdir],
      cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  md = proc.stdout
  seed_dir = os.path.join(workdir, 'seed_0')
  for name in DEFAULT_STAGES:
    assert os.path.isfile(os.path.join(seed_dir, name, 'DONE')), name
  # The labelled triplets' augmented copies (smoke: two each), read by train_dynamics only.
  with open(os.path.join(seed_dir, 'augment', 'metrics.json')) as f:
    aug = json.load(f)
  assert aug['copies'] == 2 and 0 < aug['examples'] <= 2 * aug['labelled']
  for name in ('train_dynamics', 'train_idp_round2', 'train_ft', 'train_fdm'):
    with open(os.path.join(seed_dir, name, 'config.json')) as f:
      extra = json.load(f)['data']['extra_train']
    assert ('{workdir}/augment/labelled' in extra) == (name != 'train_ft' and
                                                       name != 'train_fdm'), name
  # The IDP's second round (default): it trains as train_dynamics does, on the augmented copies
  # too, plus the first round's pairs; FDM reads its labels and evaluate uses it as the IDP.
  with open(os.path.join(seed_dir, 'train_idp_round2', 'config.json')) as f:
    rnd = json.load(f)
  assert rnd['data']['extra_train'] == ['{workdir}/augment/labelled',
                                        '{workdir}/bootstrap/synthetic']
  assert rnd['train']['num_steps'] == preset.get_config('smoke').reproduce.idp_self_training_steps
  assert rnd['train']['init_from'] == 'train_dynamics'  # continued from the first round
  with open(os.path.join(seed_dir, 'train_fdm', 'config.json')) as f:
    assert json.load(f)['data']['extra_train'] == ['{workdir}/bootstrap_round2/synthetic']
  assert '## IDP (greedy action text, `train_idp_round2` model)' in md
  assert "The first round's (`bootstrap`, by `train_dynamics`)" in md
  assert '| train_idp_round2 | bootstrap_round2 |' in md  # their time columns
  assert '| pretrain | augment | train_dynamics |' in md  # its time column
  with open(os.path.join(seed_dir, 'pretrain', 'metrics.json')) as f:
    pre = json.load(f)  # the default base has its second phase, read on its own kinds too
  assert pre['continue_steps'] > 0 and 'difference' in pre['held_out_reading']
  for variant in tables.VARIANTS:
    out = os.path.join(seed_dir, 'evaluate', variant)
    with open(os.path.join(out, 'metrics.json')) as f:
      m = json.load(f)
    for subset in tables.SUBSETS:
      for k in (1, 2, 4, 8):
        s = m['splits'][subset]['fdp'][f'k={k}']['all']
        assert 0.0 <= s['item_score'] <= s['oracle'] <= 1.0
      assert m['splits'][subset]['n'] == 8
    with open(os.path.join(out, 'items.jsonl')) as f:
      items = [json.loads(line) for line in f]
    assert len(items) == 16 and all(len(it['candidates']) == 8 for it in items)
    assert os.path.getsize(os.path.join(out, 'report.html')) > 1000
  with open(os.path.join(workdir, 'reproduction.json')) as f:
    js = json.load(f)
  run = js['runs'][0]
  assert run['probe']['items'] == 8
  # The curves run on through the continued second round: train_dynamics' 2 checkpoints, then
  # train_idp_round2's, their steps counted on from train_dynamics' last.
  smoke_r = preset.get_config('smoke').reproduce
  per_round = smoke_r.idp_self_training_steps // smoke_r.curve_points
  assert [(p['stage'], p['step'], p['stage_step']) for p in run['learning_curve']] == [
      ('train_dynamics', 10, 10), ('train_dynamics', 20, 20),
      ('train_idp_round2', 20 + per_round, per_round), ('train_idp_round2', 30, 10)]
  assert f'| {20 + per_round} (train_idp_round2) |' in md
  # Every stage's cost: wall and CPU seconds and the XLA programs it compiled.
  assert set(run['stage_cpu_seconds']) == set(DEFAULT_STAGES) == set(run['stage_compiles'])
  assert run['stage_compiles']['train_dynamics'] >= 1 and run['stage_compiles']['build_data'] == 0
  # ... and the seconds those compiles took (none without a compile).
  assert set(run['stage_compile_seconds']) == set(DEFAULT_STAGES)
  assert run['stage_compile_seconds']['train_dynamics'] > 0
  assert run['stage_compile_seconds']['build_data'] == 0
  with open(os.path.join(seed_dir, 'pretrain', 'metrics.json')) as f:
    reading = json.load(f)['held_out_reading']
  smoke = preset.get_config('smoke').pretrain  # both phases' kinds are read
  assert set(reading) == set(smoke.documents) | set(smoke.continue_documents)
  assert all(0 <= v[k] <= 1 for v in reading.values()
             for k in ('document_accuracy', 'token_accuracy'))
  # The report says which base the seeds started from: its phases and its held-out reading.
  assert run['base']['held_out_reading'] == reading
  assert (f'Pretraining (`pretrain` stage): {smoke.num_steps} steps on '
          f'{", ".join(smoke.documents)}; then {smoke.continue_steps} steps on ') in md
  kind, v = next(iter(reading.items()))
  assert f'| {kind} | {v["token_accuracy"]:.3f} | {v["document_accuracy"]:.3f} |' in md
  for label in tables.VARIANTS.values():
    assert f'| {label} |' in md
  with open(os.path.join(workdir, 'reproduction.md')) as f:
    assert f.read().strip() in md  # printed, after the stages' own progress lines
  # A rerun (here in-process) skips every stage and rebuilds the same claims.
  start = time.perf_counter()
  _, js2 = R.reproduce(preset.get_config('smoke'), workdir, [0], 'rerun')
  assert time.perf_counter() - start < 30
  assert js2['claims'] == js['claims']

  # Several seeds run in worker processes, one per core (reproduce.jobs): seed 0 is done, seed 1
  # runs its own stages on the shared ones, seed 2 fails (a done stage that ran with another
  # config). The failure is one sentence naming the seed, after seed 1 has finished.
  os.makedirs(os.path.join(workdir, 'seed_2', 'train_dynamics'))
  with open(os.path.join(workdir, 'seed_2', 'train_dynamics', 'DONE'), 'w') as f:
    json.dump({'fingerprint': 'another'}, f)
  config = preset.get_config('smoke')
  config.reproduce.jobs = 2
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # the workers run as the command's would
  monkeypatch.delenv('PJRT_NPROC', raising=False)
  with pytest.raises(UserError, match=r'1 of 3 seed runs failed \(seed 2: Stage train_dynamics '
                     r'.* is done but ran with a different config'):
    R.reproduce(config, workdir, [0, 1, 2], 'workers')
  for name in DEFAULT_STAGES:
    assert os.path.isfile(os.path.join(workdir, 'seed_1', name, 'DONE')), name
  with open(os.path.join(workdir, 'seed_1', R.LOG_FILE)) as f:
    assert 'Stage train_dynamics: running' in f.read()  # the worker's own log
  _, js3 = R.reproduce(config, workdir, [0, 1], 'workers')  # both done: read back, not rerun
  assert [r['seed'] for r in js3['runs']] == [0, 1]
  assert js3['runs'][0]['stage_cpu_seconds'] == run['stage_cpu_seconds']
  assert js3['runs'][1]['stage_cpu_seconds']['train_dynamics'] > 0
  assert js3['cpu_seconds'] > 0  # the workers' CPU time is counted
  # XLA programs are kept in WORKDIR/compile_cache (reproduce.compile_cache), which the command
  # filled and seed 1's worker read; the setting ends with the call (the tests' own stays unset).
  assert len(os.listdir(os.path.join(workdir, R.COMPILE_CACHE))) > 0
  assert 'JAX_COMPILATION_CACHE_DIR' not in os.environ
  import jax
  assert not jax.config.jax_compilation_cache_dir

  with open(os.path.join(seed_dir, 'bootstrap_round2', 'stats.json')) as f:
    assert run['bootstrap'] == json.load(f)  # FDM's labels: the second round's
  with open(os.path.join(seed_dir, 'bootstrap', 'stats.json')) as f:
    assert run['bootstrap_round1'] == json.load(f)
  assert run['settings']['idp_stage'] == 'train_idp_round2'

  # The paper's single round (reproduce.idp_self_training=false) on seed 0's stages: a new
  # workdir that shares them up to bootstrap and the variants without synthetic data.
  st = str(tmp_path / 'single_round')
  os.makedirs(os.path.join(st, 'seed_0'))
  reused = (*R.SHARED_STAGES, 'augment', 'train_dynamics', 'bootstrap', 'train_ft',
            'train_fdm_no_synth')
  for name in reused:
    os.symlink(os.path.join(seed_dir, name), os.path.join(st, 'seed_0', name))
  config = preset.get_config('smoke')
  config.reproduce.idp_self_training = False
  md4, js4 = R.reproduce(config, st, [0], 'single round')
  run4, st0 = js4['runs'][0], os.path.join(st, 'seed_0')
  for name in reused:  # skipped: their markers are seed 0's
    assert run4['stage_cpu_seconds'][name] == run['stage_cpu_seconds'][name], name
  assert set(run4['stage_cpu_seconds']) == set(R.STAGES)
  with open(os.path.join(st0, 'train_fdm', 'config.json')) as f:  # FDP_VARIANTS' own pairs
    assert json.load(f)['data']['extra_train'] == []  # (the stage adds bootstrap/synthetic)
  assert run4['bootstrap'] == run['bootstrap_round1'] and 'bootstrap_round1' not in run4
  assert run4['settings']['idp_stage'] == 'train_dynamics'
  assert [p['stage'] for p in run4['learning_curve']] == ['train_dynamics'] * 2
  assert '## IDP (greedy action text, `train_dynamics` model)' in md4
  assert 'train_idp_round2' not in md4


def test_compare_runs_pairs_two_reproductions_by_seed(tmp_path, capsys):
  compare_runs = load_experiment('compare_runs')
  a, b = tmp_path / 'a.json', tmp_path / 'b.json'
  a.write_text(json.dumps({'runs': [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1),
                                    _run(2, 0.5, 0.5, 0.1)]}))
  b.write_text(json.dumps({'runs': [_run(0, 0.5, 0.3, 0.1), _run(1, 0.7, 0.5, 0.1)]}))
  seeds, rows = compare_runs.compare(str(a), str(b))
  assert seeds == [0, 1]  # seed 2 is only in A
  rows = {r['quantity']: r for r in rows}
  ft = rows['FT item@1']
  assert (ft['a'], ft['b'], ft['diff']) == pytest.approx((0.5, 0.6, 0.1))  # B - A
  assert ft['verdict'] == 'holds'
  assert rows['FDM - FT item@1']['diff'] == pytest.approx(-0.1)
  assert rows['FDM item@1']['verdict'].startswith('degenerate: the two sides are identical')
  assert compare_runs.main([str(a), str(b)]) == 0
  out = capsys.readouterr().out
  assert '| FT item@1 | 0.500 | 0.600 | +0.100 [+0.100, +0.100] | holds |' in out
  b.write_text(json.dumps({'runs': [_run(5, 0.5, 0.3, 0.1)]}))
  with pytest.raises(SystemExit, match='share no seed'):
    compare_runs.main([str(a), str(b)])


def load_experiment(name):
  """A script of experiments/ as a module (they are not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(__file__), '..', 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _on_validation(run, shift):
  """The fake run with its test numbers moved to `validation` and shifted by `shift`."""
  run = json.loads(json.dumps(run))
  for variant in run['fdp'].values():
    sub = variant['splits'].pop('test')
    variant['splits'].pop('test_compositional')
    for k in sub['fdp'].values():
      k['all']['item_score'] += shift
    sub['idp']['all']['effect_match'] += shift
    variant['splits']['validation'] = sub
  return run


def test_validation_scores_score_each_seed_on_validation_and_pair_with_compare_runs(
    tmp_path, monkeypatch, capsys):
  """validation_scores.py evaluates every evaluated seed on `validation` with the evaluate stage's
  own settings and writes runs compare_runs.py --subset validation pairs by seed."""
  from configs import reproduce as preset
  from jax_vlm.evaluation import world as W
  scores, compare_runs = load_experiment('validation_scores'), load_experiment('compare_runs')
  seen = []

  def fake_run_evaluations(config, workdir, out_dir):
    seen.append((os.path.basename(workdir), tuple(config.world_eval.splits),
                 config.world_eval.max_items, config.world_eval.curve_items,
                 config.world_eval.probe_items, config.sampler.temperature,
                 os.path.basename(out_dir)))
    run = _on_validation(_run(int(config.seed), 0.3, 0.2, 0.1), 0.01 * int(config.seed))
    return {'fdp': run['fdp']}

  monkeypatch.setattr(W, 'run_evaluations', fake_run_evaluations)
  config = preset.get_config('smoke')
  config.sampler.temperature = 0.7  # the evaluate stage's own settings are kept
  for seed in (0, 1):
    config.seed = seed
    os.makedirs(tmp_path / f'seed_{seed}' / 'evaluate')
    (tmp_path / f'seed_{seed}' / 'evaluate' / 'config.json').write_text(config.to_json())
  os.makedirs(tmp_path / 'seed_2' / 'train_dynamics')  # not evaluated yet: left out
  os.makedirs(tmp_path / 'seed_0' / 'bootstrap')
  (tmp_path / 'seed_0' / 'bootstrap' / 'stats.json').write_text(json.dumps(
      {'label_accuracy': 0.5}))
  # A seed of a run with the IDP's second round: FDM's labels are the second round's.
  config.seed = 3
  evaluated = json.loads(config.to_json())
  evaluated['world_eval']['idp_stage'] = 'train_idp_round2'
  for stage, acc in (('evaluate', None), ('bootstrap', 0.5), ('bootstrap_round2', 0.6)):
    os.makedirs(tmp_path / 'seed_3' / stage)
    (tmp_path / 'seed_3' / stage / ('stats.json' if acc else 'config.json')).write_text(
        json.dumps({'label_accuracy': acc} if acc else evaluated))
  assert scores.main([str(tmp_path)]) == 0
  assert seen == [('seed_0', ('validation',), 0, 0, 0, 0.7, 'evaluate_validation'),
                  ('seed_1', ('validation',), 0, 0, 0, 0.7, 'evaluate_validation'),
                  ('seed_3', ('validation',), 0, 0, 0, 0.7, 'evaluate_validation')]
  out = capsys.readouterr().out
  assert 'seed 1: IDP effect match 0.960 on 10 validation items; train_ft item@1 0.310' in out
  data = json.loads((tmp_path / 'validation.json').read_text())
  assert [r['seed'] for r in data['runs']] == [0, 1, 3]
  assert data['runs'][0]['bootstrap'] == {'label_accuracy': 0.5}
  assert 'bootstrap' not in data['runs'][1]
  assert data['runs'][2]['bootstrap'] == {'label_accuracy': 0.6}
  assert data['runs'][2]['bootstrap_round1'] == {'label_accuracy': 0.5}
  # Paired with another workdir's validation.json, B - A per seed, on the validation rows.
  other = tmp_path / 'other.json'
  other.write_text(json.dumps({'runs': [_on_validation(_run(s, 0.2, 0.2, 0.1), 0.0)
                                        for s in (0, 1)]}))
  seeds, rows = compare_runs.compare(str(other), str(tmp_path / 'validation.json'), 'validation')
  rows = {r['quantity']: r for r in rows}
  assert seeds == [0, 1] and 'IDP effect match, test' not in rows
  assert rows['IDP effect match, validation']['diff'] == pytest.approx(0.005)
  assert rows['FT item@1']['diff'] == pytest.approx(0.105)
  assert rows['FT item@1']['verdict'] == 'holds'
  assert compare_runs.compare(str(other), str(tmp_path / 'validation.json'))[1][0]['a'] is None
  with pytest.raises(SystemExit, match='no seed_S folder in .* has run its evaluate stage'):
    scores.main([str(tmp_path / 'seed_2')])
  with pytest.raises(SystemExit, match='is not a folder'):
    scores.main([str(tmp_path / 'missing')])


def test_table_names_the_base_the_seeds_started_from():
  runs = [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1)]
  md, _ = tables.build_table(runs)
  assert '## The pretrained base' not in md  # summaries without one (older runs): no section
  runs[1]['base'] = dict(documents=['caption', 'text_to_image'], steps=10, continue_steps=5,
                         continue_documents=['caption', 'difference', 'difference', 'region'],
                         held_out_reading={'region': dict(token_accuracy=0.9461,
                                                          document_accuracy=0.031)})
  md, _ = tables.build_table(runs)
  assert ('Pretraining (`pretrain` stage): 10 steps on caption, text_to_image; then 5 steps on '
          'caption, difference x2, region (region strips with at least 1 changed cells of 3).'
          ) in md
  runs[1]['base']['region_changed_cells'] = 3
  assert 'region (region strips with at least 3 changed cells of 3).' in tables.build_table(runs)[0]
  assert '| region | 0.946 | 0.031 |' in md
  runs[1]['base']['continue_cycles'] = 2  # the second phase run twice (pretrain.continue_cycles)
  assert ('then 5 steps (2 cycles, each a warm restart from the last) on caption, difference x2'
          in tables.build_table(runs)[0])
  assert 'The first phase was trained' not in md  # no restart: no line
  weak, good = ({'caption': dict(token_accuracy=0.83, document_accuracy=0.0)},
                {'caption': dict(token_accuracy=0.99, document_accuracy=0.68)})
  runs[1]['base'].update(first_phase_restarts=1, first_phase_readings=[weak, good])
  assert ('The first phase was trained 2 times (`pretrain.restarts`): its held-out documents '
          'entirely right were caption 0.000; then caption 0.680. The base goes on from the last.'
          in tables.build_table(runs)[0])
  # A first phase stopped at pretrain.check_step says where it was read.
  runs[1]['base']['first_phase_checked_at'] = [4, 10]
  assert ('were caption 0.000 (at step 4 of 10); then caption 0.680. The base'
          in tables.build_table(runs)[0])


def test_base_summary_reads_the_rule_a_base_ran_with(tmp_path):
  assert R.base_summary(str(tmp_path)) == {}  # no base: no section
  pre = tmp_path / 'pretrain'
  pre.mkdir()
  metrics = dict(documents=['caption'], steps=10, continue_steps=5, seconds=3.0,
                 continue_documents=['caption', 'region'], continue_cycles=2,
                 held_out_reading={}, first_phase_restarts=0, first_phase_readings=[{}])
  (pre / 'metrics.json').write_text(json.dumps(metrics))
  assert R.base_summary(str(tmp_path)) == {k: v for k, v in metrics.items() if k != 'seconds'}
  # Metrics written before the key existed: the config the stage ran with says which rule it used.
  (pre / stages.CONFIG_FILE).write_text(json.dumps({'pretrain': {'region_changed_cells': 3}}))
  assert R.base_summary(str(tmp_path))['region_changed_cells'] == 3
  (pre / 'metrics.json').write_text(json.dumps(dict(metrics, region_changed_cells=2)))
  assert R.base_summary(str(tmp_path))['region_changed_cells'] == 2  # its own metrics win


def test_learning_curves_line_up_by_step():
  """A seed with an extra checkpoint (one a preempted run saved at step 1) lines up with the
  others by step, and the claim averages every seed over the same checkpoints."""
  runs = [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1)]
  point = lambda step, idp, fdp: dict(step=step, idp_canonical_match=idp,  # noqa: E731
                                      idp_effect_match=idp, fdp_exact_match=fdp,
                                      fdp_item_score=fdp)
  runs[0]['learning_curve'] = [point(1, 0.0, 0.0), point(10, 0.5, 0.1), point(20, 0.7, 0.3)]
  runs[1]['learning_curve'] = [point(10, 0.6, 0.2), point(20, 0.8, 0.2)]
  md, js = tables.build_table(runs)
  assert '| 1 (1 of 2 seeds) | 0.000 | 0.000 | 0.000 | 0.000 |' in md
  assert '| 10 | 0.550 ± 0.071 | 0.550 ± 0.071 | 0.150 ± 0.071 | 0.150 ± 0.071 |' in md
  steps, idp, _ = tables.curve_rows(runs)
  assert steps == [1, 10, 20] and idp['idp_effect_match'][1] == [None, 0.6, 0.8]
  faster = next(c for c in js['claims'] if c['claim'].startswith('IDP is learned faster'))
  assert faster['per_seed_a'] == pytest.approx([0.6, 0.7])  # seed 0: steps 10 and 20 only
  assert faster['per_seed_b'] == pytest.approx([0.2, 0.2])


def test_a_continued_round_extends_the_curves_but_not_the_learning_speed_claim(tmp_path):
  """Rows of a stage that continues the curve (the IDP's second round) are drawn and tabled,
  marked with their stage; "IDP is learned faster than FDP" compares the first stage's only."""
  runs = [_run(0, 0.4, 0.3, 0.1), _run(1, 0.6, 0.5, 0.1)]
  point = lambda stage, step, idp, fdp: dict(  # noqa: E731
      stage=stage, step=step, idp_canonical_match=idp, idp_effect_match=idp,
      fdp_exact_match=fdp, fdp_item_score=fdp)
  for r, late in zip(runs, (0.9, 0.7)):
    r['learning_curve'] = [point('train_dynamics', 10, 0.5, 0.1),
                           point('train_dynamics', 20, 0.7, 0.3),
                           point('train_idp_round2', 25, late, 0.0)]
  for r, eff in zip(runs, (0.75, 0.85)):
    r['bootstrap'] = dict(r.get('bootstrap', {}), label_effect_match=eff,
                          selected_label_effect_match=0.9)
  md, js = tables.build_table(runs)
  assert ('the withheld action): 0.800 ± 0.071 on all, 0.900 ± 0.000 selected.') in md
  assert tables.continued_steps(runs) == {25: 'train_idp_round2'}
  assert '| 25 (train_idp_round2) | 0.800 ± 0.141 |' in md
  assert '| 20 | 0.700 ± 0.000 |' in md
  assert 'Steps marked `train_idp_round2` continue from the last checkpoint' in md
  faster = next(c for c in js['claims'] if c['claim'].startswith('IDP is learned faster'))
  assert faster['per_seed_a'] == pytest.approx([0.6, 0.6])
  assert faster['per_seed_b'] == pytest.approx([0.2, 0.2])
  steps, idp, _ = tables.curve_rows(runs)
  assert steps == [10, 20, 25] and idp['idp_effect_match'][0] == [0.5, 0.7, 0.9]
  page = R.write_reproduction_report(str(tmp_path / 'r.html'), runs, js)
  with open(page) as f:
    assert 'IDP vs FDP on held-out test while the model trains' in f.read()


def test_world_rows_fit_the_training_length_buckets(tmp_path):
  """The default world's longest IDP and FDP rows, built by the pipeline's own sequence builder
  with the world's tokenizer, fit the smallest bucket in plain phrasing and the largest in any
  phrasing, so train_dynamics' batches are one shape (configs/action_world.py,
  data.length_buckets)."""
  import dataclasses

  import numpy as np

  from data.action_world import actions as A
  from data.action_world.tokenizer import write_tokenizer
  from data.action_world.world import WorldConfig, random_scene
  from jax_vlm.tokens import sequences as seqs
  from jax_vlm.tokens.vocab import UnifiedVocab
  config = preset.get_config()
  buckets = sorted(config.data.length_buckets)
  assert config.world.phrasings == 'plain'
  world = dataclasses.replace(WorldConfig.preset('default'), phrasings='plain')
  varied = dataclasses.replace(world, phrasings='varied')
  config.vocab.tokenizer_dir = write_tokenizer(str(tmp_path / 'tokenizer'), varied)
  vocab = UnifiedVocab.from_config(config.vocab)
  codes = np.zeros(world.num_cells, np.int32)

  def longest(texts):  # (words, tokens of the longest IDP or FDP row) over the action texts
    text = max(texts, key=lambda t: len(t.split()))
    example = {'src_codes': codes, 'tgt_codes': codes, 'action': text,
               'recognition_weights': np.ones(world.num_cells, np.float32)}
    rows = [seqs.build(example, task, vocab, int(config.data.action_max_tokens))
            for task in (seqs.IDP, seqs.FDP)]
    assert not any(r.action_truncated for r in rows)
    return len(text.split()), max(len(r) for r in rows)

  rng = np.random.default_rng(0)
  plain, varied_texts = [], []
  for _ in range(200):
    src = random_scene(rng, world)
    for kind in A.ACTION_TYPES:
      a = A.sample_action(src, kind, rng, world)
      if a is not None:
        plain.append(A.describe(a, rng, world))
        varied_texts += A.all_phrasings(a, varied)
  (plain_words, plain_row), (any_words, any_row) = longest(plain), longest(varied_texts)
  assert (plain_words, any_words) == (11, 15)
  assert plain_row <= buckets[0] < plain_row + 8  # the bucket plain rows train at
  assert any_row <= buckets[-1] <= config.data.max_seq_len
  assert any_words <= config.data.action_max_tokens
