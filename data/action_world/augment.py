"""Label-preserving augmentation of labelled triplets: the same change, photographed differently.

An image-editing data set is augmented the way photos are: mirror the two photos left to right
(and say "left" where the action said "right"), shift the camera, or change which colours the
objects wear (and name the new colours). Each transform maps a (source, action, target) triplet to
another triplet of the same world that the action still explains:

  mirror   column c -> cols - 1 - c in both scenes; move left <-> right, left_of <-> right_of, an
           added cell's column mirrored. Every default shape is left-right symmetric, so the
           frame is the photo's pixel mirror, rolled by the one-pixel grid gap the world draws at
           the left of each cell.
  shift    every object of both scenes moved by one (d_row, d_col) that keeps them all on the
           grid; an added cell moves with them; the frame is the photo moved by whole cells.
           Directions and relations are unchanged.
  colours  one permutation of the world's colours applied to both scenes and to the action's
           colour words; the frame is the photo with its palette colours swapped.

So each is an operation on the photos' pixels (tests/test_action_world.py checks it), which an
editing data set of real photos allows too (a mirror most of all; a shift as a crop; a colour swap
only approximately), with the words of the action changed to match.

The action text is drawn afresh from the world's phrasings (`actions.describe`) for the
transformed canonical action, and every augmented triplet is checked by the world's own IDP
scoring (`score_action_text`: the text applied to the source gives the target exactly); one that
fails (a "next to" whose first free neighbour moved) is redrawn. An augmented action may act only
on (colour, shape, action type) combinations the labelled actions already act on
(`allowed_combos`), so augmentation never brings a combination a split holds out
(test_compositional's) into training: it needs no knowledge of the held-out set to do so.

Pure numpy; deterministic for a seed.
"""

from __future__ import annotations

import itertools

import numpy as np

from data.action_world import actions as A
from data.action_world.world import Scene, WorldConfig, WorldObject

TRANSFORMS = ('mirror', 'shift', 'colors')
_MIRROR_WORDS = {'left': 'right', 'right': 'left', 'left_of': 'right_of', 'right_of': 'left_of'}
_MAX_TRIES = 20


def _map_scene(scene: Scene, cell_fn, color_fn) -> Scene:
  return Scene(tuple(WorldObject(*cell_fn(o.cell), o.shape, color_fn(o.color))
                     for o in scene.objects))


def _map_action(a: A.Action, cell_fn, color_fn, mirror: bool) -> A.Action:
  key = lambda k: (color_fn(k[0]), k[1]) if k is not None else None
  swap = (lambda w: _MIRROR_WORDS.get(w, w)) if mirror else (lambda w: w)
  return a._replace(
      obj=key(a.obj), ref=key(a.ref),
      direction=swap(a.direction) if a.direction else None,
      relation=swap(a.relation) if a.relation else None,
      cell=cell_fn(a.cell) if a.cell is not None else None,
      color=color_fn(a.color) if a.color else None).normalized()


def _shifts(src: Scene, tgt: Scene, config: WorldConfig, action: A.Action) -> list:
  """Every (d_row, d_col) that keeps both scenes' objects (and an added cell) on the grid."""
  cells = list(src.occupied() | tgt.occupied())
  if action.cell is not None:
    cells.append(action.cell)
  rows, cols = [c[0] for c in cells], [c[1] for c in cells]
  return [(dr, dc) for dr in range(-min(rows), config.rows - max(rows))
          for dc in range(-min(cols), config.cols - max(cols))]


def transform_triplet(src: Scene, action: 'str | A.Action', tgt: Scene, config: WorldConfig,
                      mirror: bool = False, shift: tuple[int, int] = (0, 0),
                      colors: dict[str, str] | None = None
                      ) -> tuple[Scene, A.Action, Scene]:
  """(src', action', tgt') under a mirror, then a shift, then a colour map (each optional)."""
  a = A.parse_canonical(action)
  cols = config.cols

  def cell_fn(c):
    r, k = c
    if mirror:
      k = cols - 1 - k
    return (r + shift[0], k + shift[1])

  color_fn = (lambda c: colors.get(c, c)) if colors else (lambda c: c)
  return (_map_scene(src, cell_fn, color_fn), _map_action(a, cell_fn, color_fn, mirror),
          _map_scene(tgt, cell_fn, color_fn))


def allowed_combos(triplets: list[dict]) -> frozenset:
  """(colour, shape, type) combinations the given triplets' actions act on."""
  return frozenset(itertools.chain.from_iterable(
      A.action_combos(ex['canonical']) for ex in triplets))


def augment_triplets(triplets: list[dict], copies: int, config: WorldConfig, seed: int = 0,
                     transforms: tuple[str, ...] = TRANSFORMS,
                     allowed: frozenset | None = None) -> list[dict]:
  """`copies` augmented triplets per given one (split-record dicts: id, src, tgt, action,
  canonical, action_type), each a random draw of the transforms that changes the pair and acts
  only on `allowed` combinations (default: those the given triplets act on). A triplet none of
  whose draws passes is skipped, so the result may hold a few fewer than copies * len(triplets).
  Ids are '<id>-aug<k>'."""
  unknown = set(transforms) - set(TRANSFORMS)
  if unknown:
    raise ValueError(f'unknown augmentation transforms {sorted(unknown)}; use {TRANSFORMS}')
  allowed = allowed_combos(triplets) if allowed is None else allowed
  rng = np.random.default_rng([seed, 7])
  palette = list(config.colors)
  out = []
  for ex in triplets:
    src, tgt = Scene.from_json(ex['src']), Scene.from_json(ex['tgt'])
    a = A.parse_canonical(ex['canonical'])
    made = 0
    for _ in range(copies * _MAX_TRIES):
      if made == copies:
        break
      mirror = 'mirror' in transforms and bool(rng.integers(2))
      colors = None
      if 'colors' in transforms:
        colors = dict(zip(palette, (palette[i] for i in rng.permutation(len(palette)))))
      shift = (0, 0)
      if 'shift' in transforms:
        m_src, m_a, m_tgt = transform_triplet(src, a, tgt, config, mirror=mirror)
        options = _shifts(m_src, m_tgt, config, m_a)
        shift = options[int(rng.integers(len(options)))]
      s2, a2, t2 = transform_triplet(src, a, tgt, config, mirror, shift, colors)
      if (s2, t2) == (src, tgt) or not A.action_combos(a2) <= allowed:
        continue
      text = A.describe(a2, rng, config)
      if not A.score_action_text(s2, text, t2, config)['effect_match']:
        continue
      out.append(dict(id=f'{ex["id"]}-aug{made}', src=s2.to_json(), tgt=t2.to_json(),
                      action=text, canonical=a2.canonical, action_type=a2.type))
      made += 1
  return out
