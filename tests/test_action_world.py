"""Tests of the embedded action world: rendering and parsing frames, actions and their phrasings,
scoring, splits and the tokenizer directory."""

import dataclasses
import itertools
import json
import os

import numpy as np
import pytest

from data.action_world import __main__ as cli
from data.action_world import actions as A
from data.action_world import splits as S
from data.action_world.parser import parse_frame, parse_frames
from data.action_world.tokenizer import SPECIAL_TOKENS, write_tokenizer
from data.action_world.world import (
  BACKGROUND,
  PALETTE,
  Scene,
  WorldConfig,
  WorldObject,
  cell_masks,
  changed_cells,
  random_scene,
  render,
)
from jax_vlm.core.errors import UserError

CFG = WorldConfig()
TINY = WorldConfig(num_labelled=60, num_unlabelled=300, num_test=30, num_test_compositional=30,
                   num_validation=30, rollout_length=6)


def _scene(*objs):
  return Scene(tuple(WorldObject(r, c, s, col) for r, c, col, s in objs))


def _blur(frame, w=0.15):
  x = np.pad(frame.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode='edge')
  x = w * x[:-2] + (1 - 2 * w) * x[1:-1] + w * x[2:]
  return w * x[:, :-2] + (1 - 2 * w) * x[:, 1:-1] + w * x[:, 2:]


# ---- world and rendering ----------------------------------------------------------------------


def test_render_draws_each_object_in_its_cell_only():
  scene = _scene((0, 0, 'red', 'square'), (2, 3, 'blue', 'cross'), (4, 4, 'yellow', 'circle'))
  frame = render(scene, CFG)
  assert frame.shape == (40, 40, 3) and frame.dtype == np.uint8
  k = CFG.cell_size
  for r, c in itertools.product(range(5), range(5)):
    tile = frame[r * k:(r + 1) * k, c * k:(c + 1) * k]
    obj = scene.at(r, c)
    if obj is None:
      assert (tile == BACKGROUND).all()
    else:
      mask = cell_masks(CFG)[obj.shape]
      assert (tile[mask] == PALETTE[obj.color]).all() and (tile[~mask] == BACKGROUND).all()
      assert not mask[0].any() and not mask[:, 0].any()  # the 1 px margin


def test_default_shapes_are_far_apart_at_8px():
  masks = cell_masks(CFG)
  for a, b in itertools.combinations(CFG.shapes, 2):
    assert (masks[a] ^ masks[b]).sum() >= 12, (a, b)


def test_random_scenes_are_deterministic_and_unambiguous():
  a = [random_scene(np.random.default_rng(3), CFG) for _ in range(2)]
  assert a[0] == a[1]
  rng = np.random.default_rng(0)
  for _ in range(200):
    s = random_scene(rng, CFG)
    assert CFG.min_objects <= len(s) <= CFG.max_objects
    assert len({o.key for o in s.objects}) == len(s) == len(s.occupied())
  with pytest.raises(ValueError):
    _scene((0, 0, 'red', 'square'), (1, 1, 'red', 'square'))
  assert Scene.from_json(json.loads(s.dumps())) == s


def test_config_errors_are_user_errors():
  with pytest.raises(UserError):
    WorldConfig(colors=('red', 'mauve'))
  with pytest.raises(UserError):
    WorldConfig(cell_size=4)
  with pytest.raises(UserError):
    WorldConfig.preset('huge')
  assert WorldConfig.from_json(CFG.to_json() | {'extra': 1}) == CFG


# ---- frame parser -----------------------------------------------------------------------------


def test_parse_frame_round_trip_is_exact():
  rng = np.random.default_rng(1)
  for _ in range(300):
    s = random_scene(rng, CFG)
    assert parse_frame(render(s, CFG), CFG) == s
  big = WorldConfig(rows=4, cols=6, cell_size=16, margin=1, shapes=CFG.shapes + ('diamond',))
  for _ in range(30):
    s = random_scene(rng, big)
    assert parse_frame(render(s, big), big) == s
  assert parse_frame(render(Scene(), CFG), CFG) == Scene()
  src, tgt = S.example_frames(dict(src=s.to_json(), tgt=[]), big)
  assert parse_frames(np.stack([src, tgt]), big) == [s, Scene()]


def test_parse_frame_is_robust_to_small_decoding_errors():
  rng = np.random.default_rng(2)
  errors = {'noise': 0, 'flips': 0, 'blur': 0, 'all': 0}
  n = 150
  for _ in range(n):
    s = random_scene(rng, CFG)
    f = render(s, CFG)
    flipped = f.copy()
    idx = rng.choice(40 * 40, 8, replace=False)
    flipped.reshape(-1, 3)[idx] = rng.integers(0, 256, (8, 3))
    noisy = lambda x, sd: np.clip(x + rng.normal(0, sd, x.shape), 0, 255)
    for name, frame in (('noise', noisy(f, 30)), ('flips', flipped), ('blur', _blur(f, 0.25)),
                        ('all', noisy(_blur(flipped), 10))):
      errors[name] += parse_frame(frame, CFG) != s
  assert errors == {'noise': 0, 'flips': 0, 'blur': 0, 'all': 0}


def test_parse_frame_reads_what_is_drawn_not_what_was_meant():
  s = _scene((1, 1, 'red', 'circle'))
  f = render(s, CFG)
  f[8:16, 8:16] = render(_scene((1, 1, 'green', 'circle')), CFG)[8:16, 8:16]
  assert parse_frame(f, CFG) == _scene((1, 1, 'green', 'circle'))
  # Garbage never crashes the parser; a wrong frame size is the user's error.
  parse_frame(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), CFG)
  with pytest.raises(UserError):
    parse_frame(np.zeros((32, 32, 3), np.uint8), CFG)


# ---- actions ----------------------------------------------------------------------------------


def _check_effect(src, a, tgt):
  """The action changed exactly what it says."""
  changed = changed_cells(src, tgt)
  o = src.find(a.obj)
  if a.type in ('move', 'move_rel'):
    new = tgt.find(a.obj)
    assert changed == {o.cell, new.cell} and src.at(*new.cell) is None
    if a.type == 'move':
      d = A.DIRECTIONS[a.direction]
      assert new.cell == (o.row + d[0], o.col + d[1])
    else:
      ref = src.find(a.ref)
      assert tgt.find(a.ref) == ref
      dr, dc = new.row - ref.row, new.col - ref.col
      if a.relation == 'next_to':
        assert abs(dr) + abs(dc) == 1
      else:
        assert (dr, dc) == A.RELATIONS[a.relation]
  elif a.type == 'remove':
    assert changed == {o.cell} and tgt.find(a.obj) is None and len(tgt) == len(src) - 1
  elif a.type == 'add':
    new = tgt.find(a.obj)
    assert src.find(a.obj) is None and changed == {new.cell} and len(tgt) == len(src) + 1
    if a.cell is not None:
      assert new.cell == a.cell
  elif a.type == 'recolor':
    assert changed == {o.cell} and tgt.at(*o.cell).key == (a.color, o.shape)
  elif a.type == 'swap':
    p = src.find(a.ref)
    assert changed == {o.cell, p.cell}
    assert tgt.at(*p.cell).key == o.key and tgt.at(*o.cell).key == p.key


def test_every_action_type_changes_exactly_what_it_says():
  rng = np.random.default_rng(4)
  seen = set()
  for _ in range(150):
    src = random_scene(rng, CFG)
    for kind in A.ACTION_TYPES:
      a = A.sample_action(src, kind, rng, CFG)
      if a is None:
        continue
      tgt = A.apply_action(src, a, CFG)
      _check_effect(src, a, tgt)
      assert A.apply_action(src, a.canonical, CFG) == tgt
      seen.add((kind, a.relation, a.cell is None))
  assert {k for k, _, _ in seen} == set(A.ACTION_TYPES)
  assert ('move_rel', 'next_to', True) in seen and ('add', 'next_to', True) in seen
  assert ('add', None, False) in seen


def test_valid_actions_are_all_valid_and_invalid_ones_raise():
  src = _scene((0, 0, 'red', 'square'), (0, 1, 'blue', 'circle'), (2, 2, 'red', 'cross'),
               (4, 4, 'green', 'triangle'), (4, 0, 'yellow', 'circle'))
  for kind in A.ACTION_TYPES:
    for a in A.valid_actions(src, kind, CFG):
      _check_effect(src, a, A.apply_action(src, a, CFG))
  for bad in ('move(red square, up)', 'move(red square, right)', 'move(cyan square, down)',
              'move_rel(red cross, left_of, red square)', 'add(blue circle, 3, 3)',
              'add(yellow cross, 0, 1)', 'recolor(blue circle, yellow)', 'recolor(red cross, red)',
              'recolor(red square, mauve)', 'add(mauve square, 3, 3)',
              'swap(red square, red square)', 'move_rel(red square, left_of, blue circle)'):
    with pytest.raises(A.InvalidAction):
      A.apply_action(src, bad, CFG)
    assert A.try_apply(src, bad, CFG) is None
  assert A.try_apply(src, 'not an action', CFG) is None
  # next_to resolves to the first free cell in the order right, left, below, above.
  tgt = A.apply_action(src, 'move_rel(green triangle, next_to, blue circle)', CFG)
  assert tgt.find(('green', 'triangle')).cell == (0, 2)
  tgt = A.apply_action(src, 'add(cyan cross, next_to, red square)', CFG)
  assert tgt.find(('cyan', 'cross')).cell == (1, 0)


def test_every_phrasing_parses_back_to_its_canonical_form():
  rng = np.random.default_rng(5)
  count = 0
  for _ in range(40):
    src = random_scene(rng, CFG)
    for kind in A.ACTION_TYPES:
      a = A.sample_action(src, kind, rng, CFG)
      if a is None:
        continue
      phrasings = A.all_phrasings(a, CFG)
      assert len(set(phrasings)) >= 4
      for text in phrasings:
        assert A.parse_action(text, CFG) == a.canonical, text
        count += 1
      for _ in range(3):
        assert A.describe(a, rng, CFG) in phrasings
  assert count > 1000
  # Every cell phrase of add, both corner and row/column forms.
  for r, c in itertools.product(range(5), range(5)):
    for text in A.all_phrasings(f'add(red circle, {r}, {c})', CFG):
      assert A.parse_action(text, CFG) == f'add(red circle, {r}, {c})'
  assert A.parse_action('Add a red circle in the top-left corner.') == 'add(red circle, 0, 0)'
  assert A.parse_action('move the red circle to the left') == 'move(red circle, left)'
  assert A.parse_action('change the colour of the red circle to blue') == (
      'recolor(red circle, blue)')
  assert A.parse_action('  SWAP the blue square and the red circle!') == (
      'swap(blue square, red circle)')
  for junk in ('', 'move the red circle', 'move the red circle sideways', 'fly the red circle up',
               'swap the red circle and the red circle', 'move the mauve circle up',
               'move the red circle up and the blue square down'):
    assert A.parse_action(junk, CFG) is None, junk


def test_canonical_forms_round_trip_and_swap_is_symmetric():
  rng = np.random.default_rng(6)
  for _ in range(50):
    src = random_scene(rng, CFG)
    for kind in A.ACTION_TYPES:
      a = A.sample_action(src, kind, rng, CFG)
      if a is not None:
        assert A.parse_canonical(a.canonical) == a and A.action_type(a.canonical) == kind
  assert (A.parse_action('swap the red circle and the blue square')
          == A.parse_action('swap the blue square with the red circle')
          == 'swap(blue square, red circle)')
  for bad in ('move(red circle)', 'jump(red circle, up)', 'move(red, up)', 'add(red circle, a, 1)'):
    with pytest.raises(ValueError):
      A.parse_canonical(bad)


def test_vocabulary_covers_every_phrasing_word():
  words = set(A.vocabulary_words(CFG))
  rng = np.random.default_rng(7)
  for _ in range(30):
    src = random_scene(rng, CFG)
    for kind in A.ACTION_TYPES:
      a = A.sample_action(src, kind, rng, CFG)
      if a is not None:
        for text in A.all_phrasings(a, CFG):
          assert set(text.split()) <= words
  orange = WorldConfig(colors=('red', 'orange', 'blue'))
  texts = A.all_phrasings('add(orange circle, 0, 0)', orange)
  assert any(t.startswith('add an orange circle') for t in texts) and 'an' in A.vocabulary_words(
      orange)
  assert all(A.parse_action(t, orange) == 'add(orange circle, 0, 0)' for t in texts)


# ---- scoring ----------------------------------------------------------------------------------


def test_score_prediction_on_hand_made_cases():
  src = _scene((0, 0, 'red', 'square'), (1, 1, 'blue', 'circle'), (3, 3, 'green', 'cross'))
  act = 'move(red square, down)'
  tgt = A.apply_action(src, act, CFG)
  score = lambda pred, a=act, t=tgt: A.score_prediction(src, a, t, pred, CFG)
  assert score(tgt) == dict(edit_success=1.0, minimal_editing=1.0, item_score=1.0,
                            exact_match=True)
  # A copy of the source: nothing else changed, but the edit did not happen.
  assert score(src) == dict(edit_success=0.0, minimal_editing=1.0, item_score=0.0,
                            exact_match=False)
  # The edit right, one other object lost: 1 of the 23 other cells changed.
  s = score(tgt.without(tgt.find(('green', 'cross'))))
  assert s['edit_success'] == 1.0 and s['minimal_editing'] == pytest.approx(22 / 23)
  assert s['item_score'] == pytest.approx(22 / 23) and not s['exact_match']
  # Moved but also left at the source cell (a copy, not a move): no success.
  dup = tgt.with_objects(WorldObject(0, 0, 'square', 'purple'))
  assert score(dup)['edit_success'] == 0.0
  # Wrong colour at the target cell.
  wrong = A.apply_action(tgt, 'recolor(red square, yellow)', CFG)
  assert score(wrong)['edit_success'] == 0.0 and score(wrong)['minimal_editing'] == 1.0
  # "next to": any free neighbour of the reference counts, and its cell is not an "other" cell.
  act2 = 'move_rel(green cross, next_to, blue circle)'
  tgt2 = A.apply_action(src, act2, CFG)  # resolves to the right: (1, 2)
  assert tgt2.find(('green', 'cross')).cell == (1, 2)
  other_side = A.apply_action(src, 'move_rel(green cross, below, blue circle)', CFG)
  s = score(other_side, act2, tgt2)
  assert s == dict(edit_success=1.0, minimal_editing=1.0, item_score=1.0, exact_match=False)
  # Swap half done (one object copied over the other).
  act3 = 'swap(blue circle, red square)'
  tgt3 = A.apply_action(src, act3, CFG)
  half = src.without(src.find(('red', 'square'))).with_objects(WorldObject(0, 0, 'circle', 'green'))
  assert score(half, act3, tgt3)['edit_success'] == 0.0
  with pytest.raises(ValueError):
    score(src, 'move(red square, up)')
  # Remove, add, recolor.
  for a in ('remove(blue circle)', 'add(yellow triangle, 4, 0)', 'recolor(green cross, red)',
            'add(yellow triangle, above, green cross)'):
    t = A.apply_action(src, a, CFG)
    assert score(t, a, t)['item_score'] == 1.0 and score(src, a, t)['item_score'] == 0.0


def test_score_action_text_judges_meaning():
  src = _scene((0, 0, 'red', 'square'), (2, 2, 'blue', 'circle'))
  tgt = A.apply_action(src, 'move_rel(red square, next_to, blue circle)', CFG)
  truth = 'move_rel(red square, next_to, blue circle)'
  same = A.score_action_text(src, 'put the red square to the right of the blue circle', tgt, CFG,
                             truth)
  assert same == dict(parsed=True, effect_match=True, canonical_match=False)
  exact = A.score_action_text(src, 'Place the red square beside the blue circle.', tgt, CFG, truth)
  assert exact == dict(parsed=True, effect_match=True, canonical_match=True)
  wrong = A.score_action_text(src, 'move the red square down', tgt, CFG, truth)
  assert wrong == dict(parsed=True, effect_match=False, canonical_match=False)
  assert A.score_action_text(src, 'gibberish', tgt, CFG)['parsed'] is False


# ---- splits -----------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_splits():
  return S.build_splits(TINY, seed=0)


def test_splits_sizes_types_and_consistency(tiny_splits):
  sizes = {k: len(v) for k, v in tiny_splits.items()}
  assert sizes == dict(labelled=60, unlabelled=300, test=30, test_compositional=30,
                       validation=30)
  for name in ('labelled', 'test', 'test_compositional', 'validation'):
    counts = S.split_statistics({name: tiny_splits[name]})[name]['action_types']
    assert set(counts.values()) == {len(tiny_splits[name]) // 6}
  for name, examples in tiny_splits.items():
    for ex in examples:
      a = S.example_action(ex)
      src, tgt = Scene.from_json(ex['src']), Scene.from_json(ex['tgt'])
      assert A.apply_action(src, a['canonical'], TINY) == tgt
      assert A.parse_action(a['action'], TINY) == a['canonical']
      assert A.action_type(a['canonical']) == a['action_type']
      assert TINY.min_objects <= len(src) <= TINY.max_objects
      assert ('action' in ex) == (name != 'unlabelled')
  # Rollouts: consecutive pairs chain within an episode.
  un = tiny_splits['unlabelled']
  for prev, nxt in zip(un, un[1:]):
    if nxt['episode'] == prev['episode']:
      assert nxt['step'] == prev['step'] + 1 and nxt['src'] == prev['tgt']
  assert max(ex['step'] for ex in un) == TINY.rollout_length - 1


def test_splits_are_disjoint(tiny_splits):
  keys = {}
  for name, examples in tiny_splits.items():
    for ex in examples:
      key = (json.dumps(ex['src']), json.dumps(ex['tgt']))
      assert key not in keys, (name, keys.get(key))
      keys[key] = name


def test_compositional_split_holds_only_unseen_combinations(tiny_splits):
  held = S.held_out_combos(TINY, 0)
  assert len(held) == 6 * 4
  train = set()
  for name in ('labelled', 'unlabelled', 'test', 'validation'):
    for ex in tiny_splits[name]:
      train |= A.action_combos(S.example_action(ex)['canonical'])
  comp = set()
  for ex in tiny_splits['test_compositional']:
    combos = A.action_combos(ex['canonical'])
    assert combos <= held
    comp |= combos
  assert not (train & comp) and not (train & held)
  # Every colour and shape is still acted on in training by every type, just not in those pairs.
  for kind in A.ACTION_TYPES:
    assert {c for c, _, k in train if k == kind} >= {c for c, _, k in comp if k == kind}


def test_splits_are_deterministic_for_a_seed(tiny_splits):
  small = WorldConfig(num_labelled=12, num_unlabelled=30, num_test=6, num_test_compositional=6,
                      num_validation=6)
  a, b = S.build_splits(small, 3), S.build_splits(small, 3)
  assert a == b
  assert S.build_splits(small, 4)['labelled'] != a['labelled']
  assert S.held_out_combos(small, 3) == S.held_out_combos(small, 3)
  # The validation split came last: without it the other splits are exactly what they were.
  without = dict(S.build_splits(dataclasses.replace(small, num_validation=0), 3))
  assert without.pop('validation') == [] and without == {k: v for k, v in a.items()
                                                         if k != 'validation'}


# ---- files, CLI, tokenizer --------------------------------------------------------------------


def test_cli_build_writes_splits_config_and_tokenizer(tmp_path, capsys):
  out = str(tmp_path / 'world')
  assert cli.main(['build', '--out', out, '--size', 'smoke', '--seed', '1']) == 0
  printed = capsys.readouterr().out
  assert 'unlabelled' in printed and 'move_rel' in printed and 'generated in' in printed
  config = S.load_world_config(out)
  assert config == WorldConfig.preset('smoke')
  meta = json.load(open(os.path.join(out, 'world_config.json')))
  assert meta['tokens_per_frame'] == 25 and meta['build']['seed'] == 1
  assert meta['build']['stats']['unlabelled']['examples'] == 2000
  labelled = S.load_split(out, 'labelled')
  assert len(labelled) == 200 and 'hidden' in S.load_split(out, 'unlabelled')[0]
  with pytest.raises(UserError):
    S.load_split(out, 'train')
  assert cli.main(['show', '--out', out, '--n', '3']) == 0
  assert os.path.getsize(os.path.join(out, 'examples.png')) > 0
  assert cli.main(['show', '--out', str(tmp_path / 'missing')]) == 2

  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(os.path.join(out, 'tokenizer', 'tokenizer.json'))
  assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(6))
  unk = tok.token_to_id('<unk>')
  for ex in labelled:
    ids = tok.encode(ex['action']).ids
    assert unk not in ids and tok.decode(ids) == ex['action']
  assert tok.get_vocab_size() == 6 + len(A.vocabulary_words(config))


def test_tokenizer_directory_loads_with_transformers(tmp_path):
  transformers = pytest.importorskip('transformers')
  write_tokenizer(str(tmp_path), CFG)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
  assert tok.convert_tokens_to_ids(['<boi>', '<eoi>']) == [4, 5]
  text = 'swap the positions of the red circle and the blue square'
  ids = tok.encode(text, add_special_tokens=False)
  assert tok.unk_token_id not in ids and tok.decode(ids) == text


# ---- augmentation -----------------------------------------------------------------------------


def test_mirror_is_the_pixel_mirror_and_flips_the_words():
  from data.action_world.augment import transform_triplet
  src = _scene((1, 0, 'red', 'circle'), (2, 3, 'blue', 'triangle'), (4, 4, 'green', 'cross'))
  tgt = A.apply_action(src, 'move(red circle, right)', CFG)
  s2, a2, t2 = transform_triplet(src, 'move(red circle, right)', tgt, CFG, mirror=True)
  assert a2.canonical == 'move(red circle, left)'
  assert A.apply_action(s2, a2, CFG) == t2 and s2.at(1, 4).key == ('red', 'circle')
  # The world draws each cell's one-pixel gap at its left, so the photo's mirror is the mirrored
  # scene's frame up to a one-pixel roll; every default shape is left-right symmetric.
  for scene in (src, tgt):
    flipped = np.roll(render(scene, CFG)[:, ::-1], 1, axis=1)
    mirrored, _, _ = transform_triplet(scene, 'remove(red circle)', scene, CFG, mirror=True)
    assert np.array_equal(flipped, render(mirrored, CFG))
  # A shift is the photo moved by whole cells, a colour map the photo's palette swapped.
  shifted, _, _ = transform_triplet(src, 'remove(red circle)', src, CFG, shift=(-1, 0))
  assert np.array_equal(np.roll(render(src, CFG), -CFG.cell_size, axis=0), render(shifted, CFG))
  swap = {'red': 'yellow', 'yellow': 'red', 'blue': 'purple', 'purple': 'blue'}
  recoloured, _, _ = transform_triplet(src, 'remove(red circle)', src, CFG, colors=swap)
  frame, want = render(src, CFG), render(recoloured, CFG)
  got = frame.copy()
  for a, b in swap.items():
    got[(frame == PALETTE[a]).all(-1)] = PALETTE[b]
  assert np.array_equal(got, want)
  _, a3, _ = transform_triplet(src, 'add(cyan square, 0, 1)', tgt, CFG, mirror=True,
                               shift=(1, 0), colors={'cyan': 'yellow', 'yellow': 'cyan'})
  assert a3.canonical == 'add(yellow square, 1, 3)'
  _, a4, _ = transform_triplet(src, 'move_rel(red circle, left_of, blue triangle)', tgt, CFG,
                               mirror=True)
  assert a4.canonical == 'move_rel(red circle, right_of, blue triangle)'


def test_augmented_triplets_are_valid_new_and_keep_held_out_combinations_out(tiny_splits):
  from data.action_world.augment import allowed_combos, augment_triplets
  labelled = tiny_splits['labelled']
  out = augment_triplets(labelled, 3, TINY, seed=1)
  assert len(out) >= 3 * len(labelled) - 6  # a triplet whose every draw fails is skipped
  allowed = allowed_combos(labelled)
  held = S.held_out_combos(TINY, seed=0)
  originals = {(json.dumps(ex['src']), json.dumps(ex['tgt'])) for ex in labelled}
  for ex in out:
    src, tgt = Scene.from_json(ex['src']), Scene.from_json(ex['tgt'])
    assert A.score_action_text(src, ex['action'], tgt, TINY)['effect_match'], ex
    assert A.parse_action(ex['action'], TINY) == ex['canonical']
    assert A.action_combos(ex['canonical']) <= allowed
    assert not A.action_combos(ex['canonical']) & held
    assert (json.dumps(ex['src']), json.dumps(ex['tgt'])) not in originals
  assert {ex['action_type'] for ex in out} == set(A.ACTION_TYPES)
  assert out == augment_triplets(labelled, 3, TINY, seed=1)  # deterministic for a seed
  # One transform alone: only colours change, so every object stays in its cell.
  for ex in augment_triplets(labelled[:12], 2, TINY, seed=0, transforms=('colors',)):
    src = Scene.from_json(ex['src'])
    orig = next(o for o in labelled if ex['id'].startswith(o['id'] + '-'))
    assert src.occupied() == Scene.from_json(orig['src']).occupied()
  with pytest.raises(ValueError, match='unknown augmentation'):
    augment_triplets(labelled, 1, TINY, transforms=('rotate',))
