"""The world's pretraining documents: action-free, fresh scenes, laid out as the model reads."""

import numpy as np
import pytest

from data.action_world import WorldConfig, build_splits, parse_action
from data.action_world import pretrain as P
from jax_vlm.input.sources import DocumentSource
from jax_vlm.tokens import sequences as seqs


class _Vocab:
  """Word-level text ids after 6 specials; image codes after 100 text ids."""
  pad_id, bos_id, eos_id, boi_id, eoi_id = 0, 2, 3, 4, 5

  def __init__(self):
    self.words = {}

  def encode_text(self, text):
    return [6 + self.words.setdefault(w, len(self.words)) for w in text.split()]

  def codes_to_ids(self, codes):
    return np.asarray(codes) + 100


def test_caption_names_every_object_and_cell():
  world = WorldConfig()
  scene = P.pretraining_scenes(1, seed=0, config=world)[0]
  text = P.caption(scene)
  for o in scene.objects:
    assert f'the {o.color} {o.shape} at row {o.row + 1} column {o.col + 1}' in text
  assert parse_action(text, world) is None  # a caption is not an action


def test_difference_documents_name_changed_cells_and_no_action():
  world = WorldConfig.preset('default')
  scenes = P.pretraining_scenes(400, seed=3, config=world, paired=True)
  action_words = {'move', 'add', 'remove', 'make', 'swap', 'up', 'down', 'left', 'right', 'above',
                  'below', 'next'}
  for a, b in zip(scenes[0::2], scenes[1::2]):
    assert a != b and world.min_objects <= len(b) <= world.max_objects
    text = P.difference(a, b)
    assert parse_action(text, world) is None and not set(text.split()) & action_words
    before, after = (' ' + text + ' ').split(' to ')
    gone = {(o.key, o.cell) for o in a.objects} - {(o.key, o.cell) for o in b.objects}
    new = {(o.key, o.cell) for o in b.objects} - {(o.key, o.cell) for o in a.objects}
    assert before.count(' at row ') == len(gone) and after.count(' at row ') == len(new)
    for (color, shape), (r, c) in gone:
      assert f'the {color} {shape} at row {r + 1} column {c + 1}' in before
    for (color, shape), (r, c) in new:
      assert f'the {color} {shape} at row {r + 1} column {c + 1}' in after
  assert P.difference(scenes[0], scenes[0]) == 'to'
  with pytest.raises(ValueError, match='at least 2 scenes'):
    P.sample_document(np.random.default_rng(0), ('difference',), scenes[:1])


def test_pretraining_scenes_are_their_own_stream():
  world = WorldConfig.preset('smoke')
  a = P.pretraining_scenes(50, seed=0, config=world)
  assert a == P.pretraining_scenes(50, seed=0, config=world)  # deterministic
  assert a != P.pretraining_scenes(50, seed=1, config=world)
  # Not the scenes the splits draw for the same seed (the splits use streams 1-5).
  splits = build_splits(world, 0)
  split_scenes = {str(ex['src']) for name in ('labelled', 'test') for ex in splits[name]}
  assert sum(str(s.to_json()) in split_scenes for s in a) <= 1
  for s in a:
    assert world.min_objects <= len(s) <= world.max_objects


def test_document_kinds_and_layouts():
  vocab = _Vocab()
  scenes = P.pretraining_scenes(8, seed=0, paired=True)
  codes = np.arange(8 * 25).reshape(8, 25) % 25
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(40):
    doc = P.sample_document(rng, P.DOCUMENT_KINDS, scenes)
    seen.add(doc.kind)
    image_out = doc.kind in P.IMAGE_OUTPUT_KINDS
    text = vocab.encode_text(doc.text)
    seq = seqs.build_document([codes[i] for i in doc.scene_ids], text, vocab, image_out)
    ids, w = seq.token_ids, seq.loss_weights
    assert ids[0] == vocab.bos_id and w[:seq.prompt_len].sum() == 0
    if image_out and doc.kind == 'region':  # photo A, then A with a strip of B's cells
      a, b = doc.scene_ids
      assert len(doc.cells) == P.REGION_WIDTH and doc.text == ''
      assert np.diff(doc.cells).tolist() == [1, 1] and len({c // 5 for c in doc.cells}) == 1
      out = codes[a].copy()
      out[list(doc.cells)] = codes[b][list(doc.cells)]
      assert np.array_equal(ids[w > 0][:-1], out + 100)
      assert np.array_equal(ids[2:27], codes[a] + 100)  # <bos> <boi> A <eoi> <boi> A' <eoi>
      keys = [{o.row * 5 + o.col: o.key for o in scenes[i].objects} for i in (a, b)]
      assert any(keys[0].get(c) != keys[1].get(c) for c in doc.cells)  # the strip changed
    elif image_out:
      assert seq.task == seqs.FDP and ids[-1] == vocab.eoi_id
      assert np.array_equal(ids[w > 0][:-1], codes[doc.scene_ids[-1]] + 100)
      if doc.kind == 'repeat':
        assert doc.scene_ids[0] == doc.scene_ids[1] and doc.text == ''
    else:
      assert seq.task == seqs.IDP and ids[-1] == vocab.eos_id
      assert list(ids[w > 0][:-1]) == text
      if doc.kind == 'difference':
        a, b = doc.scene_ids
        assert abs(a - b) == 1 and min(a, b) % 2 == 0  # one pair of the pool
        assert doc.text == P.difference(scenes[a], scenes[b])
      elif doc.kind == 'relations':
        assert len(doc.scene_ids) == 1 and doc.text == P.relations(scenes[doc.scene_ids[0]])
      else:
        assert doc.text == P.caption(scenes[doc.scene_ids[-1]])
        assert len(doc.scene_ids) == (2 if doc.kind == 'multi_caption' else 1)
  assert seen == set(P.DOCUMENT_KINDS)
  with pytest.raises(ValueError, match='unknown pretraining document kind'):
    P.sample_document(rng, ('captions',), scenes)


def test_relations_name_side_neighbours_in_the_action_words():
  from data.action_world.actions import parse_action, vocabulary_words
  from data.action_world.world import Scene, WorldObject
  scene = Scene((WorldObject(1, 1, 'circle', 'red'), WorldObject(1, 2, 'square', 'blue'),
                 WorldObject(2, 1, 'cross', 'green'), WorldObject(4, 4, 'triangle', 'cyan')))
  text = P.relations(scene)
  assert text == ('the red circle to the left of the blue square the red circle above the green '
                  'cross the blue square to the right of the red circle the green cross below '
                  'the red circle')
  # Each statement means what the same words mean in an action: "move X <rel> Y" puts X there.
  assert parse_action('move ' + text.split(' the blue square the ')[0] + ' the blue square') == (
      'move_rel(red circle, left_of, blue square)')
  assert set(text.split()) <= set(vocabulary_words())
  assert P.relations(Scene((WorldObject(0, 0, 'circle', 'red'),))) == ''
  assert len(P.relations(scene, limit=2).split(' the red circle ')) == 2
  # Only photos where something touches are described; a pool without any is one sentence.
  lonely = Scene((WorldObject(0, 0, 'circle', 'red'), WorldObject(4, 4, 'square', 'blue')))
  doc = P.sample_document(np.random.default_rng(0), ('relations',), [lonely, scene])
  assert doc.scene_ids == (1,) and doc.text == text
  with pytest.raises(ValueError, match='side by side'):
    P.sample_document(np.random.default_rng(0), ('relations',), [lonely])


def test_region_strips_change_as_many_cells_as_asked():
  scenes = P.pretraining_scenes(64, seed=0)
  cols = 5

  def changed(region_changed):
    rng, out = np.random.default_rng(1), []
    for _ in range(300):
      doc = P.sample_document(rng, ('region',), scenes, region_changed=region_changed)
      a, b = (scenes[i].cells() for i in doc.scene_ids)
      out.append(sum(a.get(divmod(c, cols)) != b.get(divmod(c, cols)) for c in doc.cells))
    return np.array(out)
  some, every = changed(1), changed(P.REGION_WIDTH)
  assert some.min() >= 1 and (some < P.REGION_WIDTH).mean() > 0.5  # mostly one or two of three
  assert (every == P.REGION_WIDTH).all()
  # A pool whose photos all agree has no strip to paste: one sentence, not an endless search.
  with pytest.raises(ValueError, match='differ in 3 neighbouring cells'):
    P.sample_document(np.random.default_rng(0), ('region',), scenes[:1] * 4, region_changed=3)


def test_document_source_batches_are_resumable():
  vocab = _Vocab()
  scenes = P.pretraining_scenes(16, seed=0, paired=True)
  codes = np.zeros((16, 25), np.int32)
  make = lambda: DocumentSource(scenes, codes, [P.caption(s) for s in scenes], vocab,  # noqa: E731
                                kinds=P.DOCUMENT_KINDS, seq_len=112, local_batch_size=4, seed=0)
  a = make()
  first, second = next(a), next(a)
  b = make()
  b.set_state({'step': 1})
  np.testing.assert_array_equal(next(b)['token_ids'], second['token_ids'])
  assert first['token_ids'].shape == (4, 112) and set(first['task'].tolist()) <= {0, 1}
  assert (first['loss_weights'].sum(1) > 0).all()
