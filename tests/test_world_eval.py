"""World evaluation: exact scoring of hand-made predictions, best-of-K selection, summaries, and
which parts of the evaluate stage are computed again."""

import json
import os

import numpy as np
import pytest

from data.action_world import (
  ACTION_TYPES,
  DEFAULT_CONFIG,
  Scene,
  WorldObject,
  apply_action,
  random_scene,
  sample_action,
)
from jax_vlm.evaluation import world as W


def _triplet(kind, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(100):
    src = random_scene(rng, DEFAULT_CONFIG)
    action = sample_action(src, kind, rng, DEFAULT_CONFIG)
    if action is not None:
      return src, action.canonical, apply_action(src, action, DEFAULT_CONFIG)
  raise AssertionError(f'no {kind} action found')


@pytest.mark.parametrize('kind', ACTION_TYPES)
def test_perfect_and_copied_predictions(kind):
  src, canonical, tgt = _triplet(kind, seed=ACTION_TYPES.index(kind))
  perfect, copied = W.score_candidates(src, canonical, tgt, [tgt, src], DEFAULT_CONFIG)
  assert perfect == dict(edit_success=1.0, minimal_editing=1.0, item_score=1.0, exact_match=1.0)
  assert copied['edit_success'] == 0.0 and copied['minimal_editing'] == 1.0
  assert copied['item_score'] == 0.0 and copied['exact_match'] == 0.0


def test_right_edit_with_collateral_damage():
  src = Scene((WorldObject(0, 0, 'square', 'red'), WorldObject(2, 2, 'circle', 'blue'),
               WorldObject(4, 4, 'cross', 'green')))
  tgt = apply_action(src, 'remove(red square)', DEFAULT_CONFIG)
  # Removed the right object but also the green cross: success, minimal editing 23/24.
  damaged = Scene((WorldObject(2, 2, 'circle', 'blue'),))
  [s] = W.score_candidates(src, 'remove(red square)', tgt, [damaged], DEFAULT_CONFIG)
  assert s['edit_success'] == 1.0
  assert s['minimal_editing'] == pytest.approx(23 / 24)
  assert s['item_score'] == pytest.approx(23 / 24) and s['exact_match'] == 0.0


def test_best_of_first_k_is_the_verifier_argmax_of_the_prefix():
  ranking = np.array([-3.0, -1.0, -2.0, -0.5, -9.0, -0.1, -4.0, -5.0])
  assert [W.best_of_first_k(ranking, k) for k in (1, 2, 4, 8)] == [0, 1, 3, 5]
  scores = [dict(edit_success=float(i % 2), minimal_editing=1.0, item_score=float(i % 2),
                 exact_match=float(i == 5)) for i in range(8)]
  chosen = W.select(scores, ranking, (1, 2, 4, 8))
  assert [chosen[k]['chosen'] for k in (1, 2, 4, 8)] == [0, 1, 3, 5]
  assert chosen[1]['item_score'] == 0.0 and chosen[8]['exact_match'] == 1.0
  # oracle: the best item score among the first k, whatever the verifier picked
  assert [chosen[k]['oracle'] for k in (1, 2, 4, 8)] == [0.0, 1.0, 1.0, 1.0]
  with pytest.raises(Exception):
    W.best_of_first_k(ranking[:2], 4)


def test_summarize_per_type():
  rows = [dict(action_type='move', a=1.0), dict(action_type='move', a=0.0),
          dict(action_type='add', a=1.0)]
  s = W.summarize(rows, ('a',))
  assert s['n'] == 3 and s['all']['a'] == pytest.approx(2 / 3)
  assert s['per_type']['move'] == dict(a=0.5, n=2) and s['per_type']['add'] == dict(a=1.0, n=1)


class _FakeModels:
  """Stands in for WorldModels: fixed candidates and verifier scores; codes are scene indices."""

  def __init__(self, scenes, candidates, verifier):
    self.world = DEFAULT_CONFIG
    self._scene_of = scenes
    self._candidates = candidates
    self._verifier = verifier

  def sample_candidates(self, params, items, key, k, sampling, batch_size):
    return self._candidates[:, :k]

  def verifier_scores(self, idp_params, items, candidates, batch_size):
    return self._verifier * 2.0, self._verifier

  def scenes(self, codes):
    return [self._scene_of[int(c[0])] for c in codes]


def test_fdp_evaluation_picks_the_verifier_best_and_scores_it():
  src, canonical, tgt = _triplet('move', seed=3)
  scenes = [src, tgt]  # code 0 reads as the copied source, code 1 as the true target
  items = [dict(example_id=f'test-{i}', split='test', action='x', canonical=canonical,
                action_type='move', src_scene=src, tgt_scene=tgt) for i in range(2)]
  # item 0: the target is candidate 2 and the verifier likes it best; item 1: the verifier prefers
  # a copied source (candidate 1) over the target (candidate 3).
  candidates = np.array([[[0], [0], [1], [0]], [[0], [0], [0], [1]]], np.int32)
  verifier = np.array([[-5.0, -4.0, -1.0, -3.0], [-5.0, -0.5, -4.0, -1.0]])
  models = _FakeModels(scenes, candidates, verifier)
  summary, records, _ = W.fdp_evaluation(models, None, 'idp', items, (1, 2, 4), None, None)
  assert [r['chosen'] for r in records] == [{'1': 0, '2': 1, '4': 2}, {'1': 0, '2': 1, '4': 1}]
  assert summary['k=1']['all']['item_score'] == 0.0
  assert summary['k=4']['all']['exact_match'] == 0.5  # item 0 right, item 1 fooled
  assert summary['k=4']['all']['oracle'] == 1.0  # both had the target among 4
  assert summary['k=4']['per_type']['move']['n'] == 2
  # rank by the summed score gives the same choices here (sum = 2 * mean)
  summary_sum, _, _ = W.fdp_evaluation(models, None, 'idp', items, (1, 2, 4), None, None,
                                       rank_by='sum')
  assert summary_sum == summary
  # without a verifier candidate 0 always wins
  no_verifier, recs, _ = W.fdp_evaluation(models, None, None, items, (1, 4), None, None)
  assert all(r['chosen']['4'] == 0 for r in recs)


def test_settings_reject_unknown_keys():
  import ml_collections
  config = ml_collections.ConfigDict({'world_eval': {'k_list': (8, 1), 'max_itemz': 3}})
  with pytest.raises(Exception, match='max_itemz'):
    W.settings(config)
  config = ml_collections.ConfigDict({'world_eval': {'k_list': (8, 1, 2)}})
  assert W.settings(config).k_list == (1, 2, 8)


def test_evaluation_parts_are_redone_only_when_their_params_or_settings_change(tmp_path,
                                                                                monkeypatch):
  """run_evaluations reuses a part's output while the params and settings it was computed from
  are unchanged, and computes it again after its stage is retrained (rerun_stages)."""
  from configs import reproduce as preset
  calls = []

  def fake_eval(config, workdir, fdp_params, idp_params, splits, k_list, out_dir, *a, **k):
    calls.append(os.path.basename(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, W.METRICS_FILE), 'w') as f:
      json.dump({'k_list': list(k_list), 'from': fdp_params}, f)

  monkeypatch.setattr(W, 'WorldModels', lambda config: None)
  monkeypatch.setattr(W, '_stage_params', lambda workdir, stage: open(
      os.path.join(workdir, stage, 'params', 'w')).read())
  monkeypatch.setattr(W, 'evaluate_world', fake_eval)
  monkeypatch.setattr(W, 'load_items', lambda *a, **k: [])
  monkeypatch.setattr(W, 'learning_curve', lambda *a, **k: calls.append('curve') or [])
  monkeypatch.setattr(W, 'probe', lambda *a, **k: calls.append('probe') or {})
  monkeypatch.setattr(W, 'random_init_params', lambda *a, **k: None)
  config = preset.get_config('smoke')
  config.world_eval.update(fdp_stages=('train_ft', 'train_fdm'), idp_stage='train_dynamics',
                           curve_stage='train_dynamics')
  work = str(tmp_path)
  for stage, text in (('train_ft', 'ft-1'), ('train_fdm', 'fdm-1'), ('train_dynamics', 'dyn')):
    os.makedirs(os.path.join(work, stage, 'params'))
    with open(os.path.join(work, stage, 'params', 'w'), 'w') as f:
      f.write(text)
  os.makedirs(os.path.join(work, 'train_dynamics', 'checkpoints', '10'))
  out = os.path.join(work, 'evaluate')

  summary = W.run_evaluations(config, work, out)
  assert calls == ['train_ft', 'train_fdm', 'curve', 'probe', 'probe']  # random init, trained
  assert summary['fdp']['train_fdm']['from'] == 'fdm-1'
  calls.clear()
  W.run_evaluations(config, work, out)
  assert calls == []  # nothing changed: every part read back
  with open(os.path.join(work, 'train_fdm', 'params', 'w'), 'w') as f:
    f.write('fdm-2')  # train_fdm retrained
  summary = W.run_evaluations(config, work, out)
  assert calls == ['train_fdm'] and summary['fdp']['train_fdm']['from'] == 'fdm-2'
  calls.clear()
  with open(os.path.join(work, 'train_dynamics', 'params', 'w'), 'w') as f:
    f.write('dyn-2')  # a new verifier: every FDP part and the probe; the curve reads checkpoints
  W.run_evaluations(config, work, out)
  assert calls == ['train_ft', 'train_fdm', 'probe', 'probe']
  calls.clear()
  config.world_eval.k_list = (1, 2)
  summary = W.run_evaluations(config, work, out)
  assert calls == ['train_ft', 'train_fdm'] and summary['fdp']['train_ft']['k_list'] == [1, 2]
  # A part written before sources were recorded is taken as it is.
  calls.clear()
  os.remove(os.path.join(out, 'train_ft', 'metrics.source.json'))
  with open(os.path.join(work, 'train_ft', 'params', 'w'), 'w') as f:
    f.write('ft-2')
  W.run_evaluations(config, work, out)
  assert calls == []
  # A stage that continues the curve (the IDP's second round): its checkpoints are part of what
  # the curve was computed from, so a new one of them computes the curve again.
  config.world_eval.curve_next_stage = 'train_idp_round2'
  for step in ('5', '10'):
    os.makedirs(os.path.join(work, 'train_idp_round2', 'checkpoints', step))
    with open(os.path.join(work, 'train_idp_round2', 'checkpoints', step, 'w'), 'w') as f:
      f.write(step)
    W.run_evaluations(config, work, out)
    assert calls == ['curve']
    calls.clear()
  W.run_evaluations(config, work, out)
  assert calls == []


def test_eval_py_verifies_with_the_idp_the_workdir_ended_with(tmp_path, monkeypatch):
  """eval.py on a world workdir: the FDP is the newest variant and the verifier the IDP's second
  round when it ran, unless the config names them."""
  from configs import reproduce as preset
  seen = []

  def fake_eval(config, workdir, fdp_params, idp_params, splits, k_list, out_dir, *a, **k):
    seen.append((fdp_params, idp_params))
    fdp = {f'k={k}': {'all': {'item_score': 0.5, 'exact_match': 0.25}} for k in k_list}
    return {'splits': {s: {'fdp': fdp} for s in splits}}

  monkeypatch.setattr(W, 'evaluate_world', fake_eval)
  monkeypatch.setattr(W, '_stage_params', lambda workdir, stage: stage)
  work = str(tmp_path)
  config = preset.get_config('smoke')
  for stage in ('train_dynamics', 'train_fdm'):
    os.makedirs(os.path.join(work, stage, 'params'))
  assert W.run(config, work)['all']['idp_stage'] == 'train_dynamics'  # the paper's one round
  os.makedirs(os.path.join(work, 'train_idp_round2', 'params'))
  out = W.run(config, work)['all']
  assert (out['fdp_stage'], out['idp_stage']) == ('train_fdm', 'train_idp_round2')
  assert seen[-1] == ('train_fdm', 'train_idp_round2')
  config.world_eval.idp_stage = 'train_dynamics'  # named: used as it is
  assert W.run(config, work)['all']['idp_stage'] == 'train_dynamics'
  assert seen[-1] == ('train_fdm', 'train_dynamics')


def test_idp_errors_sorts_each_miss_by_what_went_wrong():
  """experiments/idp_errors.py: right (by effect), right type with wrong details, or another
  type, as shares of each true action type."""
  from data.action_world import describe
  from tests.test_reproduce import load_experiment
  idp_errors = load_experiment('idp_errors')
  src = Scene((WorldObject(0, 0, 'circle', 'red'), WorldObject(2, 2, 'square', 'blue')))
  moved = apply_action(src, 'move(red circle, right)')
  items = [dict(src_scene=src, tgt_scene=moved, canonical='move(red circle, right)',
                action_type='move')] * 3 + [
      dict(src_scene=src, tgt_scene=apply_action(src, 'remove(red circle)'),
           canonical='remove(red circle)', action_type='remove')]
  rng = np.random.default_rng(0)
  texts = [describe('move(red circle, right)', rng),  # right
           describe('move(red circle, down)', rng),  # right type, wrong direction
           describe('remove(blue square)', rng),  # another type
           'nothing at all']  # unparsed

  class Models:
    world = DEFAULT_CONFIG

    def greedy_actions(self, params, given, batch_size):
      assert given == items
      return texts
  table = idp_errors.error_table(Models(), None, items)
  assert table['move']['n'] == 3
  assert table['move']['ok'] == table['move']['same_type'] == table['move']['as_remove'] == (
      pytest.approx(1 / 3, abs=1e-3))
  assert table['remove'] == dict(n=1, as_unparsed=1.0,
                                 examples=["remove(red circle) -> 'nothing at all'"])
  assert table['move']['examples'] == ['move(red circle, right) -> move(red circle, down)',
                                       'move(red circle, right) -> remove(blue square)']
  # --difference: the base's difference text against the true one, whole and by its two halves.
  texts = ['the red circle at row 1 column 1 to the red circle at row 1 column 2',  # right
           'the red circle at row 1 column 1 to the red circle at row 2 column 1',  # after wrong
           'the red circle at row 1 column 3 to',  # before wrong, after missing
           'the red circle at row 1 column 1 to']  # right (a removal)
  table = idp_errors.difference_table(texts, items)
  assert table['move'] == dict(n=3, whole=pytest.approx(1 / 3, abs=1e-3),
                               first_frame_only=pytest.approx(2 / 3, abs=1e-3),
                               second_frame_only=pytest.approx(1 / 3, abs=1e-3))
  assert table['remove'] == dict(n=1, whole=1.0, first_frame_only=1.0, second_frame_only=1.0)
