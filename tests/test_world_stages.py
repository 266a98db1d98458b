"""Tests of the action world's data stages (build_data, train_tokenizer, tokenize), open_split and
resolve_paths, on a tiny world and a tiny VQGAN."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import action_world
from data import records
from data.action_world import Scene, WorldConfig, load_split, render
from data.action_world import actions as A
from jax_vlm.core.errors import UserError
from jax_vlm.input import datasets
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.pipeline import stages, world_stages
from jax_vlm.tokens.image_processing import frames_to_pixels
from jax_vlm.tokens.sequences import recognition_weights
from jax_vlm.training import checkpointing
from jax_vlm.weights import vqgan_files

# 3x3 cells: 24x24 frames, 9 codes a frame (fast to compile and run).
TINY = WorldConfig(rows=3, cols=3, colors=('red', 'green', 'blue'), shapes=('square', 'cross'),
                   min_objects=1, max_objects=3, held_out_colors=2, held_out_shapes=1,
                   num_labelled=12, num_unlabelled=16, num_test=6, num_test_compositional=6,
                   num_validation=6, rollout_length=4)
VQ = dict(resolution=24, base_channels=8, channel_multiplier=(1, 1, 1, 1), num_res_blocks=0,
          z_channels=32, embed_dim=8, num_embeddings=16, norm_groups=2, patch_encoder=True)


def _config():
  config = action_world.get_config('smoke')
  config.vqgan.update(**VQ)
  t = config.vq_train
  t.update(num_steps=3, batch_size=4, ae_warmup_steps=1, eval_every=0, test_frames=8,
           progress_bar=False, min_accuracy=0.0)
  config.tokenize.batch_size = 16
  return config


def test_config_and_stage_registration():
  config = action_world.get_config('default')
  assert {'build_data', 'train_tokenizer', 'tokenize'} <= set(stages.registered())
  for name in config.stages:
    if name != 'train_dynamics':
      stages.get(name)
  assert config.model.vocab_size >= 86 + config.vqgan.num_embeddings
  assert config.vqgan.resolution == 40 and 2 ** (len(config.vqgan.channel_multiplier) - 1) == 8
  assert config.vocab.num_image_codes == config.vqgan.num_embeddings
  assert action_world.get_config('smoke').vq_train.min_accuracy < config.vq_train.min_accuracy


def test_resolve_paths():
  config = _config()
  config.data.extra_train = ('{workdir}/bootstrap/synthetic', '/abs/path')
  out = datasets.resolve_paths(config, '/runs/w1')
  assert out.data.dir == '/runs/w1/tokenize'
  assert out.vocab.tokenizer_dir == '/runs/w1/build_data/tokenizer'
  assert out.checkpoint.vqgan_dir == '/runs/w1/train_tokenizer/params'
  assert tuple(out.data.extra_train) == ('/runs/w1/bootstrap/synthetic', '/abs/path')
  assert config.data.dir == '{workdir}/tokenize'  # the input is not changed
  assert out.model.d_model == config.model.d_model


def _write(prefix, ids):
  examples = [dict(src_codes=np.arange(4, dtype=np.int32), tgt_codes=np.arange(4, dtype=np.int32),
                   action='move it', action_type='move', example_id=i, split='x') for i in ids]
  records.write_records(prefix, examples)


def test_open_split_concatenates(tmp_path):
  d = tmp_path / 'tok'
  _write(str(d / 'labelled'), ['a0', 'a1'])
  _write(str(d / 'test'), ['t0'])
  _write(str(tmp_path / 'boot' / 'part1'), ['b0'])
  _write(str(tmp_path / 'boot' / 'part2'), ['b1', 'b2'])
  _write(str(tmp_path / 'single'), ['s0'])
  data_cfg = ml_collections.ConfigDict(dict(
      dir=str(d), train_splits=('labelled',),
      extra_train=(str(tmp_path / 'boot'), str(tmp_path / 'single'))))
  train = datasets.open_split(data_cfg, 'train')
  assert [train[i]['example_id'] for i in range(len(train))] == ['a0', 'a1', 'b0', 'b1', 'b2',
                                                                  's0']
  assert [e['example_id'] for e in datasets.open_split(data_cfg, 'test')] == ['t0']
  # Defaults: ('labelled',), no extra data.
  plain = datasets.open_split(ml_collections.ConfigDict(dict(dir=str(d))), 'train')
  assert len(plain) == 2
  with pytest.raises(UserError, match='tokenize'):
    datasets.open_split(data_cfg, 'validation')
  with pytest.raises(UserError, match='resolve_paths'):
    datasets.open_split(ml_collections.ConfigDict(dict(dir='{workdir}/tokenize')), 'train')


def test_train_examples_keeps_the_first_labelled_examples(tmp_path):
  d = tmp_path / 'tok'
  _write(str(d / 'labelled'), ['a0', 'a1', 'a2'])
  _write(str(tmp_path / 'boot' / 'part1'), ['b0', 'b1'])
  data_cfg = ml_collections.ConfigDict(dict(dir=str(d), train_splits=('labelled',),
                                            extra_train=(str(tmp_path / 'boot'),),
                                            train_examples=2))
  train = datasets.open_split(data_cfg, 'train')
  assert [e['example_id'] for e in train] == ['a0', 'a1', 'b0', 'b1']  # the extra data stays whole
  assert train[-1]['example_id'] == 'b1'
  with pytest.raises(IndexError):
    train[4]
  data_cfg.extra_train = ()
  assert [e['example_id'] for e in datasets.open_split(data_cfg, 'train')] == ['a0', 'a1']
  data_cfg.train_examples = 3
  assert len(datasets.open_split(data_cfg, 'train')) == 3
  data_cfg.train_examples = 4
  with pytest.raises(UserError, match='train_examples=4 is more than the 3 examples'):
    datasets.open_split(data_cfg, 'train')


def test_train_tokenizer_fails_loudly_below_threshold(tmp_path, monkeypatch):
  monkeypatch.setattr(WorldConfig, 'preset', classmethod(lambda cls, size='default', **kw: TINY))
  config = _config()
  config.vq_train.min_accuracy = 0.995
  stage_dir = str(tmp_path / 'train_tokenizer')
  os.makedirs(stage_dir)
  with pytest.raises(UserError, match=r'num_steps'):
    world_stages.train_tokenizer(config, stage_dir)
  metrics = json.loads(open(os.path.join(stage_dir, 'metrics.json')).read())
  assert metrics['heldout_frame_accuracy'] < 0.995 and metrics['heldout_frames'] == 8
  # The tokenize stage must not pick it up, but the trained weights are kept for inspection.
  assert not os.path.exists(os.path.join(stage_dir, 'params'))
  assert os.path.exists(os.path.join(stage_dir, 'params_below_bar', 'params.msgpack'))


def test_stages_build_train_tokenize_end_to_end(tmp_path, monkeypatch, capsys):
  # build_data with a tiny world instead of the preset sizes.
  monkeypatch.setattr(WorldConfig, 'preset', classmethod(lambda cls, size='default', **kw: TINY))
  config = _config()
  workdir = str(tmp_path / 'run')
  data_stages = ['build_data', 'train_tokenizer', 'tokenize']
  # The data stages run without the sections their fingerprints leave out (stages.NOT_READ_BY):
  # they do not read them, so changing them reuses the world.
  unread = set.intersection(*(stages._unread(n) for n in data_stages))
  assert {'train', 'model', 'pretrain', 'data'} <= unread
  without = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items()
                                       if k not in unread})
  assert stages.run_stages(without, workdir, data_stages)
  changed = _config()
  changed.train.learning_rate, changed.model.d_model = 0.5, 96
  assert stages.run_stages(changed, workdir, data_stages)  # accepted: a mismatch would refuse
  metrics = json.loads(open(os.path.join(workdir, 'train_tokenizer', 'metrics.json')).read())
  assert metrics['steps'] == 3 and 0.0 <= metrics['heldout_frame_accuracy'] <= 1.0

  resolved = datasets.resolve_paths(config, workdir)
  vq_config, params = vqgan_files.load_vqgan(resolved.checkpoint.vqgan_dir)
  assert vq_config == VQGANConfig(**VQ)
  model = VQGAN(vq_config)
  world_dir = os.path.join(workdir, 'build_data')
  for split, n in (('labelled', 12), ('unlabelled', 16), ('test', 6)):
    source = datasets.open_split(resolved.data, 'train' if split == 'labelled' else split)
    raw = load_split(world_dir, split)
    assert len(source) == n == len(raw)
    ex, want = source[0], raw[0]
    assert ex['example_id'] == want['id'] and ex['split'] == split
    assert ex['src_codes'].shape == (9,) and ex['src_codes'].dtype == np.int32
    assert ex['recognition_weights'].shape == (9,)
    assert ex['recognition_weights'].dtype == np.float32
    assert Scene.from_json(json.loads(ex['src_scene'])) == Scene.from_json(want['src'])
    # The stored codes are the model's codes of the rendered frames, and decode like them.
    frames = np.stack([render(Scene.from_json(want[k]), TINY) for k in ('src', 'tgt')])
    codes, features = model.apply({'params': params}, frames_to_pixels(frames),
                                  method=VQGAN.encode)
    np.testing.assert_array_equal(ex['src_codes'], np.asarray(codes[0]).reshape(-1))
    np.testing.assert_array_equal(ex['tgt_codes'], np.asarray(codes[1]).reshape(-1))
    np.testing.assert_allclose(ex['recognition_weights'],
                               recognition_weights(features[0], features[1]), rtol=1e-4,
                               atol=1e-5)
    decoded = model.apply({'params': params}, ex['src_codes'].reshape(1, 3, 3),
                          method=VQGAN.decode)
    assert decoded.shape == (1, 24, 24, 3) and np.isfinite(np.asarray(decoded)).all()
    if split == 'unlabelled':
      assert ex['action'] == '' and ex['action_type'] == ''
      assert ex['hidden_action'] == want['hidden']['action']
      assert ex['hidden_canonical'] == want['hidden']['canonical']
    else:
      assert ex['action'] == want['action'] and ex['canonical'] == want['canonical']
  tok = json.loads(open(os.path.join(workdir, 'tokenize', 'metrics.json')).read())
  assert tok['codebook_size'] == 16 and 1 <= tok['codes_used'] <= 16
  assert sum(tok['code_counts']) == 2 * 9 * (12 + 16 + 6 + 6 + 6)
  assert set(tok['splits']) == {'labelled', 'unlabelled', 'test', 'test_compositional',
                                'validation'}

  # augment: copies of the first data.train_examples labelled triplets, encoded like tokenize's.
  config.data.update(augment_copies=2, train_examples=5)
  assert stages.run_stages(config, workdir, ['augment'])
  aug = records.RecordSource.from_prefix(world_stages.AUGMENTED.format(workdir=workdir))
  labelled = load_split(world_dir, 'labelled')[:5]
  made = json.loads(open(os.path.join(workdir, 'augment', 'metrics.json')).read())
  assert made['labelled'] == 5 and made['examples'] == len(aug) and 6 <= len(aug) <= 10
  for i in range(len(aug)):
    ex = aug[i]
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    src = Scene.from_json(json.loads(text(ex['src_scene'])))
    tgt = Scene.from_json(json.loads(text(ex['tgt_scene'])))
    assert text(ex['example_id']).split('-aug')[0] in {r['id'] for r in labelled}
    assert A.score_action_text(src, text(ex['action']), tgt, TINY)['effect_match']
    frames = np.stack([render(src, TINY), render(tgt, TINY)])
    codes, _ = model.apply({'params': params}, frames_to_pixels(frames), method=VQGAN.encode)
    np.testing.assert_array_equal(ex['src_codes'], np.asarray(codes[0]).reshape(-1))
    np.testing.assert_array_equal(ex['tgt_codes'], np.asarray(codes[1]).reshape(-1))
  config.data.update(augment_copies=0, train_examples=0)
  with pytest.raises(UserError, match='augment_copies=0'):
    world_stages.augment_stage(config, os.path.join(workdir, 'augment_none'))

  # Pretraining with a second phase: from the first phase's params, on its own documents.
  # Eight scenes of this tiny world seldom hold a strip whose three cells all differ from another
  # photo's (the default rule, region_changed_cells=3): any changed cell here.
  config.pretrain.update(num_steps=2, batch_size=8, num_scenes=8, eval_scenes=8, continue_steps=2,
                         continue_documents=('caption', 'difference', 'region'),
                         region_changed_cells=1)
  config.model.max_positions = 128
  assert stages.run_stages(config, workdir, ['pretrain'])
  stage_dir = os.path.join(workdir, 'pretrain')
  m = json.loads(open(os.path.join(stage_dir, 'metrics.json')).read())
  assert m['region_changed_cells'] == 1  # the report names the strips' rule (tables)
  assert m['continue_steps'] == 2 and m['continue_documents'] == ['caption', 'difference',
                                                                  'region']
  # The reading covers both phases' kinds, each once.
  assert list(m['held_out_reading']) == list(config.pretrain.documents) + ['difference', 'region']
  lines = open(os.path.join(stage_dir, 'continued', 'metrics.jsonl')).read().splitlines()
  assert json.loads(lines[-1])['step'] == 2
  first = checkpointing.load_params(os.path.join(stage_dir, 'phase1_params'))
  final = checkpointing.load_params(os.path.join(stage_dir, 'params'))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), first,
                       final)
  assert max(jax.tree.leaves(moved)) > 0  # the continued phase trained the first phase's params
  # A rerun of the stage restores the finished first phase instead of training it again.
  before = open(os.path.join(stage_dir, 'metrics.jsonl')).read()
  assert stages.run_stages(config, workdir, ['pretrain'], rerun=['pretrain'])
  assert open(os.path.join(stage_dir, 'metrics.jsonl')).read() == before
  # A region strip asked to change more cells than it has: one sentence naming the key, before
  # anything is trained; the finished base stays as it was.
  config.pretrain.region_changed_cells = 4
  with pytest.raises(UserError, match=r'pretrain.region_changed_cells=4 must be a whole number'):
    world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), stage_dir)
  assert open(os.path.join(stage_dir, 'metrics.jsonl')).read() == before
  config.pretrain.region_changed_cells = 1
  # A second cycle of the second phase: both finished phases restored, not retrained; the new
  # cycle starts from the first cycle's params (kept) on other documents and moves them.
  continued = open(os.path.join(stage_dir, 'continued', 'metrics.jsonl')).read()
  config.pretrain.continue_cycles = 0
  with pytest.raises(UserError, match=r'pretrain.continue_cycles=0 must be a whole number'):
    world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), stage_dir)
  config.pretrain.continue_cycles = 2
  assert stages.run_stages(config, workdir, ['pretrain'], rerun=['pretrain'])
  assert open(os.path.join(stage_dir, 'metrics.jsonl')).read() == before
  assert open(os.path.join(stage_dir, 'continued', 'metrics.jsonl')).read() == continued
  lines = open(os.path.join(stage_dir, 'continued_2', 'metrics.jsonl')).read().splitlines()
  assert json.loads(lines[-1])['step'] == 2
  assert json.loads(open(os.path.join(stage_dir, 'metrics.json')).read())['continue_cycles'] == 2
  cycle1 = checkpointing.load_params(os.path.join(stage_dir, 'cycle1_params'))
  again = checkpointing.load_params(os.path.join(stage_dir, 'params'))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, cycle1, final)))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), cycle1,
                       again)
  assert max(jax.tree.leaves(moved)) > 0
  # A first phase that reads held-out scenes poorly is trained again from another initialisation
  # (pretrain.restarts); a 2-step base gets no document entirely right, so a bar of 1.0 restarts it.
  config.pretrain.update(continue_steps=0, continue_cycles=1, restarts=1, restart_below=1.0)
  checked = os.path.join(workdir, 'pretrain_checked')
  world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), checked)
  assert 'pretrain.restart_below=1.0: it stalled on a plateau' in capsys.readouterr().out
  m = json.loads(open(os.path.join(checked, 'metrics.json')).read())
  assert m['first_phase_restarts'] == 1 and len(m['first_phase_readings']) == 2
  assert all(list(r) == list(config.pretrain.documents) for r in m['first_phase_readings'])
  assert m['held_out_reading'] == m['first_phase_readings'][-1]  # no second phase: the same base
  first, again = (json.loads(open(os.path.join(d, 'metrics.jsonl')).readline())
                  for d in (checked, os.path.join(checked, 'restart_1')))
  assert first['loss'] != again['loss']  # another initialisation and document order
  restarted = open(os.path.join(checked, 'restart_1', 'metrics.jsonl')).read()
  # A base that passes the bar is not retrained; a rerun restores both finished attempts.
  config.pretrain.restart_below = 0.0
  world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), checked)
  m = json.loads(open(os.path.join(checked, 'metrics.json')).read())
  assert m['first_phase_restarts'] == 0 and len(m['first_phase_readings']) == 1
  assert open(os.path.join(checked, 'restart_1', 'metrics.jsonl')).read() == restarted
  assert not os.path.exists(os.path.join(checked, 'restart_2'))
  config.pretrain.restarts = -1
  with pytest.raises(UserError, match=r'pretrain.restarts=-1 must be a whole number'):
    world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), checked)
  # A second phase starts from the restarted first phase, in that attempt's own folder.
  config.pretrain.update(restarts=1, restart_below=1.0, continue_steps=2)
  world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), checked)
  assert os.path.isfile(os.path.join(checked, 'restart_1', 'continued', 'metrics.jsonl'))
  assert not os.path.exists(os.path.join(checked, 'continued'))
  assert open(os.path.join(checked, 'restart_1', 'metrics.jsonl')).read() == restarted
  # pretrain.check_step: a first phase with restarts left is also read part-way, and a weak
  # reading there stops and restarts it; the last attempt trains to the end, read only there.
  config.pretrain.update(restarts=1, restart_below=0.0, check_step=1, check_below=1.0,
                         continue_steps=0)
  early = os.path.join(workdir, 'pretrain_early')
  world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), early)
  assert ('entirely right at step 1 of 2, below pretrain.check_below=1.0: it stalled'
          in capsys.readouterr().out)
  m = json.loads(open(os.path.join(early, 'metrics.json')).read())
  assert m['first_phase_restarts'] == 1 and m['first_phase_checked_at'] == [1, 2]
  assert m['first_phase_check_readings'] == m['first_phase_readings'][:1]
  assert os.listdir(os.path.join(early, 'checkpoints')) == ['1']  # stopped at the check
  assert os.listdir(os.path.join(early, 'restart_1', 'checkpoints')) == ['2']
  # A reading that passes the check goes on to the end: the losses of an unchecked first phase.
  config.pretrain.check_below = 0.0
  passed = os.path.join(workdir, 'pretrain_passed')
  world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), passed)
  m = json.loads(open(os.path.join(passed, 'metrics.json')).read())
  assert m['first_phase_checked_at'] == [2] and len(m['first_phase_check_readings']) == 1

  def loss_at_2(d):
    return [r['loss'] for r in map(json.loads, open(os.path.join(d, 'metrics.jsonl')))
            if r.get('step') == 2]

  assert len(loss_at_2(passed)) == 1 and loss_at_2(passed) == loss_at_2(checked)[:1]
  for key, bad in (('check_step', -1), ('check_below', 2.0)):
    good, config.pretrain[key] = config.pretrain[key], bad
    with pytest.raises(UserError, match=rf'pretrain.{key}={bad} must be'):
      world_stages.pretrain_stage(stages.stage_config(config, 'pretrain'), passed)
    config.pretrain[key] = good
  config.pretrain.update(check_step=0, check_below=0.0)
  config.pretrain.update(restarts=0, continue_steps=2, continue_cycles=2)
  # The base's greedy text after the IDP prompt, at an action's length and longer (a difference
  # document: experiments/idp_errors.py --difference): one longer-cache sampler, made once.
  from jax_vlm.evaluation import world as world_eval
  models = world_eval.WorldModels(datasets.resolve_paths(config, workdir))
  items = world_eval.load_items(resolved, workdir, 'test', 3)
  short = models.greedy_actions(final, items, 2)
  longer = models.greedy_actions(final, items, 2, max_new_tokens=models.text_tokens + 8)
  assert len(short) == len(longer) == 3 and all(isinstance(t, str) for t in short + longer)
  models.greedy_actions(final, items[:1], 2, max_new_tokens=models.text_tokens + 8)
  assert list(models._long_text_samplers) == [models.text_tokens + 8]
