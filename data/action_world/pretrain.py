"""Action-free pretraining documents: what a unified VLM has read before it ever sees an action.

Chameleon and Liquid are pretrained on captioned images and interleaved image-text documents, so
they already read objects and their places out of image tokens and write about them. The world's
stand-in for that pretraining draws fresh random scenes (a seed stream no split uses, and no
action is ever applied to them) and turns them into documents of these kinds:

  caption        one scene, then its caption                        <boi> A <eoi> caption(A)
  text_to_image  a caption, then its scene                          caption(A) <boi> A <eoi>
  multi_caption  two independent scenes, then the caption of the    <boi> B <eoi> <boi> A <eoi>
                 last one (reading places in multi-image context)    caption(A)
  repeat         a scene shown twice, as web pages repeat images     <boi> A <eoi> <boi> A <eoi>
                 (the in-context copying a pretrained model has)
  difference     two photos of one place at two times, then what     <boi> A <eoi> <boi> B <eoi>
                 differs: the objects only the first shows, "to",     difference(A, B)
                 the objects only the second shows
  region         a photo, then the same photo with a strip of three   <boi> A <eoi> <boi> A' <eoi>
                 cells of one row pasted from another photo (an
                 edited picture: what changed is a contiguous region,
                 as in real images, where an object spans many
                 neighbouring tokens)
  relations      one scene, then which objects touch and how:      <boi> A <eoi> relations(A)
                 "the red circle to the left of the blue square"
                 for each object in reading order and each of its
                 side neighbours (the spatial-relation captions a
                 VLM has read, e.g. "a cup next to a laptop")

With `difference` among the kinds the pool pairs its scenes (`pretraining_scenes(paired=True)`;
without it the pool is the plain random scenes it always was): scene 2i+1 is scene 2i after 1-3
random primitive edits (an object vanishes, appears, turns into another object, or is in another
cell: any cell, not a world action's step). A `difference` document shows one pair in random
order. Its text names objects and cells only, with no verb, direction or relation, so it is not an
action label: it is the "what is different between these two pictures" a pretrained VLM can
already say about two photos (docs/reproduction.md, "Session 3: is the base a reader?", has what
it changed).

A `region` document has no text and no action: its second image is the first with one region
replaced. In a real image a changed object covers many neighbouring patches, so while a model
writes the second image, whether the token it just wrote differs from the first image's token at
that place tells it whether the next one will: the comparison pays at the second image's own
tokens. The world draws each object in one cell, one token, which loses that; the strip of three
cells restores it. On the development world this was what made a per-cell change feature appear
at the second image's tokens, where no earlier document did (docs/reproduction.md, session 11).

A `relations` document describes one photo by which objects are side by side, in the relation
words a pretrained VLM has read in captions ("to the left of", "above", ...): the world's
captions name only each object's own cell, so without it a base has never related two objects of
one picture, which a move or an addition next to another object asks the IDP to name (session 14
of docs/reproduction.md). It is a single scene's description, no action and no change.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from data.action_world.world import (
  DEFAULT_CONFIG,
  Scene,
  WorldConfig,
  WorldObject,
  all_keys,
  changed_cells,
  random_scene,
)

DOCUMENT_KINDS = ('caption', 'text_to_image', 'multi_caption', 'repeat', 'difference', 'region',
                  'relations')
# Kinds whose output is an image (the rest end with a caption).
IMAGE_OUTPUT_KINDS = ('text_to_image', 'repeat', 'region')
# Kinds whose text is the caption of their last scene (a source may cache those).
CAPTION_KINDS = ('caption', 'text_to_image', 'multi_caption')
# Seed stream of pretraining scenes; the splits use streams 1-5 (splits._STREAM).
PRETRAIN_STREAM = 11
# Scenes the pretrain stage measures its base on, never trained on.
HELD_OUT_STREAM = 12


class Document(NamedTuple):
  """A pretraining document: its kind, the pool indices of its scenes in order (the last one is
  the output or the captioned one) and its text (empty for `repeat` and `region`). `region`: its
  output is scene_ids[0] with these cells (flat indices) taken from scene_ids[1]
  (`pasted_codes`)."""
  kind: str
  scene_ids: tuple[int, ...]
  text: str
  cells: tuple[int, ...] = ()


REGION_WIDTH = 3  # cells of one row a `region` document replaces
# The most statements a `relations` document makes (about 10 words each), so one photo and its
# statements fit the pretraining row (pretrain.max_seq_len = 112).
MAX_RELATIONS = 8
# A neighbour's offset from an object -> the object's relation to it, in the action phrasings'
# words ("the red circle to the left of the blue square": the circle's right neighbour is the
# square), checked right, left, below, above (actions.NEXT_TO_ORDER).
_NEIGHBOURS = (((0, 1), 'to the left of'), ((0, -1), 'to the right of'), ((1, 0), 'above'),
               ((-1, 0), 'below'))


def pasted_codes(codes_a: np.ndarray, codes_b: np.ndarray, cells: tuple[int, ...]) -> np.ndarray:
  """The image codes of photo A with `cells` (flat indices) taken from photo B."""
  out = np.array(codes_a).reshape(-1)
  idx = np.asarray(cells, np.int64)
  out[idx] = np.asarray(codes_b).reshape(-1)[idx]
  return out.reshape(np.shape(codes_a))



def caption(scene: Scene) -> str:
  """Every object of the scene with its cell (1-indexed), in reading order."""
  return ' '.join(f'the {o.color} {o.shape} at row {o.row + 1} column {o.col + 1}'
                  for o in scene.objects)


def relations(scene: Scene, limit: int = MAX_RELATIONS) -> str:
  """Each object (reading order) against each of its side neighbours, "the X <relation> the Y",
  at most `limit` statements; empty when no two objects touch."""
  cells = scene.cells()
  out = []
  for o in scene.objects:
    for (dr, dc), words in _NEIGHBOURS:
      n = cells.get((o.row + dr, o.col + dc))  # (colour, shape)
      if n is not None:
        out.append(f'the {o.color} {o.shape} {words} the {n[0]} {n[1]}')
  return ' '.join(out[:limit])


def difference(a: Scene, b: Scene) -> str:
  """What differs from `a` to `b`: the objects (with cells) only `a` has, "to", those only `b`
  has; either side may be empty ("the red circle at row 1 column 2 to")."""
  in_a = {(o.key, o.cell) for o in a.objects}
  in_b = {(o.key, o.cell) for o in b.objects}
  only_a = Scene(tuple(o for o in a.objects if (o.key, o.cell) not in in_b))
  only_b = Scene(tuple(o for o in b.objects if (o.key, o.cell) not in in_a))
  return f'{caption(only_a)} to {caption(only_b)}'.strip()


def perturb(scene: Scene, rng: np.random.Generator, config: WorldConfig = DEFAULT_CONFIG) -> Scene:
  """The scene after 1-3 random primitive edits (remove, add, replace an object, or put one in
  another free cell), kept within the world's object counts and different from `scene`."""
  keys = all_keys(config)
  pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
  while True:
    objs = {o.cell: o for o in scene.objects}
    for _ in range(int(rng.integers(1, 4))):
      free = [(r, c) for r in range(config.rows) for c in range(config.cols) if (r, c) not in objs]
      used = {o.key for o in objs.values()}
      unused = [k for k in keys if k not in used]
      cells = sorted(objs)
      op = int(rng.integers(4))
      if op == 0 and len(objs) > config.min_objects:
        del objs[cells[int(rng.integers(len(cells)))]]
      elif op == 1 and len(objs) < config.max_objects and free and unused:
        cell, (color, shape) = pick(free), pick(unused)
        objs[cell] = WorldObject(cell[0], cell[1], shape, color)
      elif op == 2 and cells and unused:
        cell, (color, shape) = pick(cells), pick(unused)
        objs[cell] = WorldObject(cell[0], cell[1], shape, color)
      elif op == 3 and cells and free:
        o = objs.pop(cells[int(rng.integers(len(cells)))])
        cell = free[int(rng.integers(len(free)))]
        objs[cell] = WorldObject(cell[0], cell[1], o.shape, o.color)
    out = Scene(tuple(objs.values()))
    if out != scene:
      return out


def pretraining_scenes(num: int, seed: int, config: WorldConfig = DEFAULT_CONFIG,
                       stream: int = PRETRAIN_STREAM, paired: bool = False) -> list[Scene]:
  """`num` fresh scenes of the world's distribution, from their own seed stream.

  paired (what `difference` documents need): scene 2i is a random scene, scene 2i+1 the same
  place after `perturb` (two photos, two times). stream=HELD_OUT_STREAM gives the held-out scenes
  the base is measured on."""
  if stream not in (PRETRAIN_STREAM, HELD_OUT_STREAM):
    raise ValueError(f'pretraining scenes come from stream {PRETRAIN_STREAM} or {HELD_OUT_STREAM}')
  rng = np.random.default_rng([seed, stream])
  if not paired:
    return [random_scene(rng, config) for _ in range(num)]
  scenes = []
  while len(scenes) < num:
    scenes.append(random_scene(rng, config))
    scenes.append(perturb(scenes[-1], rng, config))
  return scenes[:num]


def sample_document(rng: np.random.Generator, kinds: tuple[str, ...], scenes: list[Scene],
                    config: WorldConfig = DEFAULT_CONFIG, region_changed: int = 1) -> Document:
  """A random document of one of `kinds` over the scene pool (of a world with `config`'s grid).

  `region_changed`: how many of a `region` strip's cells must differ between the two photos (1:
  any, the kind as session 11 ran it, when most strips changed one cell of three; REGION_WIDTH:
  every cell, as when a real edited region changes every patch it covers)."""
  for k in kinds:
    if k not in DOCUMENT_KINDS:
      raise ValueError(f'unknown pretraining document kind {k!r}; use some of {DOCUMENT_KINDS}')
  kind = kinds[int(rng.integers(len(kinds)))]
  a, b = (int(i) for i in rng.integers(len(scenes), size=2))
  if kind == 'difference':
    if len(scenes) < 2:
      raise ValueError('difference documents need a pool of at least 2 scenes')
    first = 2 * int(rng.integers(max(len(scenes) // 2, 1)))
    pair = (first, min(first + 1, len(scenes) - 1))
    pair = pair if rng.random() < 0.5 else pair[::-1]
    return Document(kind, pair, difference(scenes[pair[0]], scenes[pair[1]]))
  if kind == 'region':
    width = min(REGION_WIDTH, config.cols)
    need = max(min(int(region_changed), width), 1)
    for _ in range(1000):  # a strip and a donor photo with `need` changed cells
      row, col = int(rng.integers(config.rows)), int(rng.integers(config.cols - width + 1))
      first = row * config.cols + col
      cells = tuple(range(first, first + width))
      changed = changed_cells(scenes[a], scenes[b])
      if sum(divmod(i, config.cols) in changed for i in cells) >= need:
        return Document(kind, (a, b), '', cells)
      b = int(rng.integers(len(scenes)))
    raise ValueError(f'region documents need a pool of scenes that differ in {need} neighbouring '
                     'cells of a row')
  if kind == 'relations':
    for _ in range(1000):  # a photo where some objects touch
      text = relations(scenes[a])
      if text:
        return Document(kind, (a,), text)
      a = int(rng.integers(len(scenes)))
    raise ValueError('relations documents need a pool of scenes where two objects are side by side')
  if kind in ('caption', 'text_to_image'):
    return Document(kind, (a,), caption(scenes[a]))
  if kind == 'multi_caption':
    return Document(kind, (b, a), caption(scenes[a]))
  return Document(kind, (a, a), '')
