"""Bootstrapping: label classes, stratified selection, label accuracy, and the `bootstrap` stage
writing a synthetic FDP record set that RecordSource reads back."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from data import action_world as W
from data.records import RecordSource, write_records
from jax_vlm.core.errors import UserError
from jax_vlm.inference.sampler import Sampler
from jax_vlm.method import bootstrap as B
from jax_vlm.method.selection import stratified_top_k
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.pipeline import stages
from jax_vlm.tokens.vocab import UnifiedVocab
from jax_vlm.training import checkpointing
from tests.test_aurora_models import tiny_artifacts

NUM_CODES = 16
N = 4  # codes per frame


def world_action(kind, seed):
  rng = np.random.default_rng(seed)
  for _ in range(50):
    scene = W.random_scene(rng)
    action = W.sample_action(scene, kind, rng)
    if action is not None:
      return action
  raise AssertionError(kind)


def test_classes_and_label_accuracy():
  move = world_action('move', 0)
  phrasings = W.all_phrasings(move)
  assert B.classify(phrasings[0]) == 'move' and B.classify(phrasings[-1]) == 'move'
  assert B.classify('please do something') == B.UNPARSED
  assert B.classify('Cut the onion', 'first_word') == 'cut'
  assert B.classify('', 'first_word') == B.UNPARSED and B.classify('x', 'none') == 'all'
  with pytest.raises(UserError, match='class_key'):
    B.classify('x', 'verbs')

  # Another phrasing of the true action counts as correct (canonical match); a wrong one does not.
  recolor = world_action('recolor', 1)
  unlabelled = [{'hidden_action': phrasings[0]}, {'hidden_action': W.all_phrasings(recolor)[0]},
                {'hidden_action': phrasings[0]}, {}]  # the last one has no true action
  labels = [B.Label(0, phrasings[-1], 'move', -1.0, -0.1, -0.1, True),
            B.Label(1, phrasings[0], 'move', -2.0, -0.2, -0.2, True),
            B.Label(2, 'gibberish', B.UNPARSED, -3.0, -0.3, -0.3, False),
            B.Label(3, phrasings[0], 'move', -1.0, -0.1, -0.1, True)]
  stats = B.bootstrap_stats(unlabelled, labels, labels[:1])
  assert stats['label_accuracy'] == pytest.approx(1 / 3) and stats['label_accuracy_pairs'] == 3
  assert stats['selected_label_accuracy'] == 1.0
  assert stats['class_counts_before'] == {'move': 3, B.UNPARSED: 1}
  assert stats['class_counts_after'] == {'move': 1}
  assert stats['num_unfinished_labels'] == 1
  # Had K been each share of the 3 parsed labels (0 and 3 score -0.1, the wrong 1 -0.2; 3 has no
  # true action): round(0.1 * 3) = 0 selects nothing, the top 1-2 are right, all 3 half right.
  assert stats['selection_curve'] == {'0.1': None, '0.25': 1.0, '0.5': 1.0, '0.75': 1.0,
                                      '1.0': 0.5}
  assert stats['label_effect_match'] is None  # no scenes: nothing to apply the labels to


def test_label_effect_match_counts_another_action_with_the_same_effect():
  """A label that names the change another way ("next to" for "right of") is a right FDP triplet
  (its action applied to the source gives the target) but not the withheld action."""
  from data.action_world.actions import apply_action
  src = W.Scene((W.WorldObject(0, 0, 'square', 'red'), W.WorldObject(2, 2, 'circle', 'blue'),
                 W.WorldObject(4, 4, 'cross', 'green')))
  truth = 'move_rel(green cross, next_to, blue circle)'
  tgt = apply_action(src, truth)
  same = next(f'move_rel(green cross, {rel}, blue circle)' for rel in ('above', 'below',
              'left_of', 'right_of') if apply_action(src, f'move_rel(green cross, {rel}, '
                                                                   'blue circle)') == tgt)
  record = dict(hidden_action=W.all_phrasings(truth)[0],
                src_scene=json.dumps(src.to_json()), tgt_scene=json.dumps(tgt.to_json()).encode())
  labels = [B.Label(i, W.all_phrasings(text)[0], 'move_rel', -1.0, -0.1, -0.1, True)
            for i, text in enumerate((truth, same, 'remove(red square)'))]
  stats = B.bootstrap_stats([record] * 3, labels, labels[1:2])
  assert stats['label_accuracy'] == pytest.approx(1 / 3)  # the withheld action's canonical form
  assert stats['label_effect_match'] == pytest.approx(2 / 3)  # its effect
  assert stats['selected_label_accuracy'] == 0.0 and stats['selected_label_effect_match'] == 1.0
  assert B.bootstrap_stats([record], labels[:1], labels[:1], class_key='first_word'
                           )['label_effect_match'] is None  # free text: no world to apply it in


def test_stratified_selection_of_labels():
  rng = np.random.default_rng(0)
  classes = ['move'] * 8 + ['swap'] * 2 + ['add'] * 3 + [B.UNPARSED] * 4
  labels = [B.Label(i, f'label {i}', c, 0.0, float(s), float(s), True)
            for i, (c, s) in enumerate(zip(classes, rng.normal(size=len(classes))))]
  labels.append(B.Label(len(labels), '  ', 'move', 0.0, 9.0, 9.0, True))  # empty text: never kept
  selected = B.select_labels(labels, 0.5, keep_unparsed=False)
  pool = [lab for lab in labels if lab.action_class != B.UNPARSED and lab.text.strip()]
  assert len(selected) == 6  # round(0.5 * 13 usable labels)
  assert selected == stratified_top_k(pool, 6, lambda lab: lab.score, lambda lab: lab.action_class)
  # Round robin: two of each class, although 'move' has most labels.
  for c in ('move', 'swap', 'add'):
    assert sum(lab.action_class == c for lab in selected) == 2
  kept = B.select_labels(labels, 100, keep_unparsed=True)
  assert len(kept) == 17 and sum(lab.action_class == B.UNPARSED for lab in kept) == 4
  assert B.num_to_select(0.25, 10) == 2 and B.num_to_select(3, 10) == 3
  assert B.num_to_select(1.0, 10) == 10 and B.num_to_select(50, 10) == 10


@pytest.fixture(scope='module')
def world_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('boot')
  tok_dir = W.write_tokenizer(str(root / 'tokenizer'))
  config = base.get_base_config()
  config.vocab.update(tokenizer_dir=tok_dir, image_token_scheme='offset', num_image_codes=NUM_CODES,
                      **{k: v for k, v in W.TOKEN_NAMES.items() if k != 'unk_token'})
  vocab = UnifiedVocab.from_config(config.vocab)
  config.model.update(vocab_size=vocab.vocab_size, d_model=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, mlp_dim=64, dtype='float32',
                      remat_policy='none')
  config.data.max_seq_len = 32
  config.sampler.max_action_tokens = 6
  config.bootstrap.update(class_key='first_word', keep_unparsed=True, num_selected=0.5,
                          batch_size=4)
  module = DecoderLM(TransformerConfig.from_config(config.model))
  params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  return root, config, vocab, module, params


def test_bootstrap_stage_writes_selected_records(world_setup):
  root, config, vocab, module, params = world_setup
  workdir = str(root / 'work')
  checkpointing.save_params(os.path.join(workdir, 'train_dynamics', 'params'), params)
  rng = np.random.default_rng(0)
  unlabelled = []
  for i in range(10):
    ex = {'src_codes': rng.integers(0, NUM_CODES, N).astype(np.int32),
          'tgt_codes': rng.integers(0, NUM_CODES, N).astype(np.int32),
          'example_id': f'unlabelled-{i}',
          'hidden_action': W.all_phrasings(world_action('move', i))[0]}
    if i % 2:
      ex['recognition_weights'] = rng.uniform(0, 2, N).astype(np.float32)
    unlabelled.append(ex)
  write_records(os.path.join(workdir, 'tokenize', 'unlabelled'), unlabelled, schema=None)

  assert 'bootstrap' in stages.registered()
  assert stages.run_stages(config, workdir, ['bootstrap'])
  stage_dir = os.path.join(workdir, 'bootstrap')
  assert stages.is_done(workdir, 'bootstrap')
  with open(os.path.join(stage_dir, 'stats.json')) as f:
    stats = json.load(f)

  # The same labels by hand: greedy, key PRNGKey(seed), then the stratified top-K.
  sampler = Sampler.from_config(module, vocab, config)
  labels = B.label_pairs(sampler, params, [(e['src_codes'], e['tgt_codes']) for e in unlabelled],
                         jax.random.PRNGKey(config.seed), max_new_tokens=7, batch_size=4,
                         class_key='first_word')
  pool = [lab for lab in labels if lab.text.strip()]
  expected = stratified_top_k(pool, round(0.5 * len(pool)), lambda lab: lab.score,
                              lambda lab: lab.action_class)
  records = list(RecordSource.from_prefix(os.path.join(stage_dir, 'synthetic')))
  assert len(records) == len(expected) == stats['num_selected'] == stats['num_written'] > 0
  for rec, lab in zip(records, expected):
    src = unlabelled[lab.index]
    assert rec['example_id'] == f'synthetic-{src["example_id"]}' and rec['split'] == 'synthetic'
    assert rec['action'] == lab.text and rec['action_type'] == lab.action_class
    assert rec['label_score'] == pytest.approx(lab.score)
    np.testing.assert_array_equal(rec['src_codes'], src['src_codes'])
    np.testing.assert_array_equal(rec['tgt_codes'], src['tgt_codes'])
    np.testing.assert_array_equal(rec['recognition_weights'],
                                  src.get('recognition_weights', np.ones(N, np.float32)))
  classes = sorted({lab.action_class for lab in labels})
  assert stats['class_counts_before'] == {
      c: sum(lab.action_class == c for lab in labels) for c in classes}
  assert sum(stats['class_counts_after'].values()) == len(expected)
  assert stats['label_accuracy_pairs'] == 10 and stats['label_accuracy'] is not None
  # label_score is the mean token log-likelihood of the label (with <eos>), i.e. negative.
  assert all(r['label_score'] < 0 for r in records)


def test_true_label_control_swaps_in_the_withheld_actions(world_setup, tmp_path):
  """The control stage: the bootstrap stage's selected pairs, each with its pair's true action
  and that action's class, everything else as bootstrap wrote it."""
  _, config, _, _, _ = world_setup
  workdir = str(tmp_path)
  rng = np.random.default_rng(1)
  unlabelled = [{'src_codes': rng.integers(0, NUM_CODES, N).astype(np.int32),
                 'tgt_codes': rng.integers(0, NUM_CODES, N).astype(np.int32),
                 'example_id': f'unlabelled-{i}',
                 'hidden_action': W.all_phrasings(world_action(kind, i))[0]}
                for i, kind in enumerate(('move', 'recolor', 'remove', 'add'))]
  write_records(os.path.join(workdir, 'tokenize', 'unlabelled'), unlabelled, schema=None)
  # As bootstrap writes them: two selected pairs, one label right and one wrong, in its order.
  chosen = [(2, unlabelled[2]['hidden_action']), (0, 'remove the red circle')]
  selected = [B.Label(index=i, text=text, action_class=B.classify(text, 'first_word'),
                      logprob_sum=-1.0, logprob_mean=-0.5, score=-0.5, finished=True)
              for i, text in chosen]
  synthetic, _ = B.synthetic_examples(unlabelled, selected)
  write_records(os.path.join(workdir, 'bootstrap', 'synthetic'), synthetic)
  assert stages.run_stages(config, workdir, [B.TRUE_LABELS_STAGE])
  control = list(RecordSource.from_prefix(os.path.join(workdir, B.TRUE_LABELS_STAGE, 'synthetic')))
  assert [c['example_id'] for c in control] == ['synthetic-unlabelled-2', 'synthetic-unlabelled-0']
  for ctl, syn, (i, _) in zip(control, synthetic, chosen):
    truth = unlabelled[i]['hidden_action']
    assert ctl['action'] == truth and ctl['action_type'] == B.classify(truth, 'first_word')
    assert ctl['label_score'] == pytest.approx(syn['label_score'])
    np.testing.assert_array_equal(ctl['src_codes'], unlabelled[i]['src_codes'])
    np.testing.assert_array_equal(ctl['tgt_codes'], unlabelled[i]['tgt_codes'])
    np.testing.assert_array_equal(ctl['recognition_weights'], syn['recognition_weights'])
  with open(os.path.join(workdir, B.TRUE_LABELS_STAGE, 'stats.json')) as f:
    stats = json.load(f)
  assert stats['num_pairs'] == 2 and stats['labels_changed'] == 1


def test_true_label_control_needs_withheld_actions():
  rec = {'example_id': 'synthetic-u0', 'action': 'move', 'src_codes': np.zeros(N, np.int32)}
  out, changed = B.true_label_examples([rec], [{'example_id': 'u0', 'hidden_action': 'move'}],
                                       class_key='first_word')
  assert changed == 0 and out[0]['action'] == 'move' and out[0]['action_type'] == 'move'
  with pytest.raises(UserError, match='no withheld true action'):
    B.true_label_examples([rec], [{'example_id': 'u0'}], class_key='first_word')
  with pytest.raises(UserError, match='no withheld true action'):
    B.true_label_examples([rec], [{'example_id': 'other', 'hidden_action': 'x'}])


def test_bootstrap_stage_needs_params(world_setup, tmp_path):
  _, config, _, _, _ = world_setup
  with pytest.raises(UserError, match='run the train_dynamics stage first'):
    B.bootstrap_stage(config, str(tmp_path / 'bootstrap'))


def test_world_class_key_on_free_text_is_one_sentence(world_setup, monkeypatch, tmp_path):
  _, config, vocab, module, params = world_setup
  free_text = [B.Label(i, 'cut the onion', B.UNPARSED, -1.0, -0.5, -0.5, True) for i in range(3)]
  monkeypatch.setattr(B, 'label_pairs', lambda *a, **k: free_text)
  cfg = config.bootstrap.copy_and_resolve_references()
  cfg.update(class_key='world', keep_unparsed=False)
  pairs = [{'src_codes': np.zeros(N, np.int32), 'tgt_codes': np.ones(N, np.int32)}] * 3
  with pytest.raises(UserError, match='class_key=first_word'):
    B.run_bootstrap(Sampler.from_config(module, vocab, config), params, pairs, cfg, None, 7,
                    str(tmp_path), jax.random.PRNGKey(0))


def test_labeller_from_a_checkpoint_directory(tmp_path):
  """bootstrap.labeller_stage as a path: an IDP checkpoint outside the workdir (here Orbax params
  with a Chameleon-scheme tokenizer) labels prepared-video records (action '')."""
  art = tiny_artifacts(str(tmp_path / 'art'))
  config = base.get_base_config()
  config.model.update(art['model'])
  config.vocab.update(tokenizer_dir=art['tok'], num_image_codes=art['num_codes'])
  config.data.max_seq_len = 64
  config.sampler.max_action_tokens = 4
  config.bootstrap.update(labeller_stage=art['model_dir'], class_key='first_word',
                          keep_unparsed=True, num_selected=1.0, batch_size=4,
                          unlabelled=str(tmp_path / 'data' / 'unlabelled'))
  rng = np.random.default_rng(0)
  write_records(config.bootstrap.unlabelled, [
      {'src_codes': rng.integers(0, 16, 16).astype(np.int32),
       'tgt_codes': rng.integers(0, 16, 16).astype(np.int32), 'action': '', 'action_type': '',
       'recognition_weights': rng.uniform(0, 2, 16).astype(np.float32), 'example_id': f'v:{i}'}
      for i in range(5)], schema=None)
  workdir = str(tmp_path / 'work')
  assert stages.run_stages(config, workdir, ['bootstrap'])
  stats = json.loads(open(os.path.join(workdir, 'bootstrap', 'stats.json')).read())
  assert stats['num_labelled'] == 5 and stats['label_accuracy'] is None
  assert stats['num_written'] == stats['num_selected'] <= 5
  config.bootstrap.labeller_stage = str(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='is not a directory'):
    B.labeller(config, workdir)
  config.bootstrap.labeller_stage = 'no_such_stage'
  with pytest.raises(UserError, match='run the no_such_stage stage first'):
    B.labeller(config, workdir)
