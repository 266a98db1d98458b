"""The action world: a grid of cells, each empty or holding one coloured shape, and its renderer.

A scene is a set of objects, each at a (row, col) cell with a shape and a colour; no two objects
share a cell and no two share both colour and shape, so "the red circle" always names one object.
Frames are flat-colour RGB uint8 images, `[rows * cell_size, cols * cell_size, 3]`: every cell is
`cell_size` pixels square; its first `margin` rows and columns stay background (a thin grid gap)
and the shape fills the remaining `(cell_size - margin)` square. With the default 8 px cells and a
1 px margin the shapes are drawn on 7x7 pixels: odd, so the cross has a one-pixel centred bar.
An 8x downsampling image tokenizer then sees exactly one cell per image token (25 tokens for the
default 5x5 grid, 40x40 frames).

Shapes (masks over the drawing square, pixel centres at `(i + 0.5) / n`):
  square    the full square
  circle    the inscribed disk
  triangle  apex at the top centre, base on the bottom row
  cross     a plus sign: one vertical and one horizontal bar through the centre, ~n/5 thick
  diamond   |u| + |v| <= 1/2 (not in the default set: at 7 px it is close to the circle)

Scenes serialise to compact JSON as a list of `{"row", "col", "shape", "color"}` dicts sorted by
cell. Everything here is pure numpy and deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Iterable, Sequence

import numpy as np

from data.errors import UserError, require

# Well separated flat colours (names are the words the phrasings use).
PALETTE = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 80, 220),
    'yellow': (240, 200, 30),
    'purple': (150, 60, 190),
    'cyan': (40, 190, 210),
    'orange': (245, 130, 20),
    'black': (30, 30, 30),
}
SHAPES = ('square', 'circle', 'triangle', 'cross', 'diamond')
BACKGROUND = (255, 255, 255)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Geometry, vocabulary of attributes, scene statistics and split sizes of one world.

  Frozen (hashable) so parsers and regexes can be cached per config.
  """
  rows: int = 5
  cols: int = 5
  cell_size: int = 8  # pixels per cell side; the world's VQGAN downsamples by this factor
  margin: int = 1  # background pixels at the top and left of each cell
  colors: tuple[str, ...] = ('red', 'green', 'blue', 'yellow', 'purple', 'cyan')
  shapes: tuple[str, ...] = ('square', 'circle', 'triangle', 'cross')
  min_objects: int = 3
  max_objects: int = 7
  # Split sizes (build_splits).
  num_labelled: int = 2000
  num_unlabelled: int = 20000
  num_test: int = 500
  num_test_compositional: int = 500
  # Built like `test` and drawn after every other split, so adding it left those unchanged: what
  # settings are tuned on (never `test`). Not evaluated by default.
  num_validation: int = 500
  rollout_length: int = 10  # steps per unlabelled rollout (consecutive pairs per episode)
  # Compositional hold-out: per action type, held_out_colors x held_out_shapes (colour, shape)
  # pairs never acted on by that action type in labelled/unlabelled/test.
  held_out_colors: int = 2
  held_out_shapes: int = 2
  # 'varied': each action is worded by a random template and random slot phrases (several per
  # type); 'plain': one wording per action (each type's first template, each slot's first phrase).
  phrasings: str = 'varied'

  def __post_init__(self):
    require(self.rows >= 2 and self.cols >= 2,
            f'World grid {self.rows}x{self.cols} is too small; use at least 2x2 cells.')
    require(self.cell_size - self.margin >= 5,
            f'World cell_size={self.cell_size} with margin={self.margin} leaves under 5 px for '
            'a shape; use a larger cell_size or a smaller margin.')
    for c in self.colors:
      require(c in PALETTE, f'World colour {c!r} is unknown; pick from {sorted(PALETTE)}.')
    for s in self.shapes:
      require(s in SHAPES, f'World shape {s!r} is unknown; pick from {list(SHAPES)}.')
    require(self.phrasings in ('varied', 'plain'),
            f'World phrasings={self.phrasings!r} is unknown; use "varied" or "plain".')
    require(len(set(self.colors)) == len(self.colors) and len(set(self.shapes)) == len(self.shapes),
            'World colours and shapes must not repeat; remove the duplicates.')
    require(1 <= self.min_objects <= self.max_objects <= self.rows * self.cols - 1,
            f'World min_objects={self.min_objects}, max_objects={self.max_objects} must satisfy '
            '1 <= min <= max < number of cells; change them.')
    require(self.max_objects <= len(self.colors) * len(self.shapes) - 1,
            'World max_objects must be below the number of (colour, shape) pairs; lower it.')

  @property
  def frame_shape(self) -> tuple[int, int, int]:
    return (self.rows * self.cell_size, self.cols * self.cell_size, 3)

  @property
  def num_cells(self) -> int:
    return self.rows * self.cols

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['colors'], d['shapes'] = list(self.colors), list(self.shapes)
    return d

  @classmethod
  def from_json(cls, d: dict) -> 'WorldConfig':
    """Builds a config from a dict, ignoring keys that are not config fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    for k in ('colors', 'shapes'):
      if k in kw:
        kw[k] = tuple(kw[k])
    return cls(**kw)

  @classmethod
  def preset(cls, size: str = 'default', **overrides) -> 'WorldConfig':
    """'default' (2,000 / 20,000 / 500 / 500 / 500 examples) or 'smoke' (10x fewer)."""
    require(size in ('default', 'smoke'),
            f'World size {size!r} is unknown; use "default" or "smoke".')
    if size == 'smoke':
      overrides = dict(num_labelled=200, num_unlabelled=2000, num_test=50,
                       num_test_compositional=50, num_validation=50, **overrides)
    return cls(**overrides)


DEFAULT_CONFIG = WorldConfig()


@dataclasses.dataclass(frozen=True, order=True)
class WorldObject:
  row: int
  col: int
  shape: str
  color: str

  @property
  def cell(self) -> tuple[int, int]:
    return (self.row, self.col)

  @property
  def key(self) -> tuple[str, str]:
    """(colour, shape): the attributes that name the object."""
    return (self.color, self.shape)

  @property
  def name(self) -> str:
    return f'{self.color} {self.shape}'


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects sorted by cell; equal scenes compare and hash equal."""
  objects: tuple[WorldObject, ...] = ()

  def __post_init__(self):
    objs = tuple(sorted(self.objects))
    object.__setattr__(self, 'objects', objs)
    cells = [o.cell for o in objs]
    keys = [o.key for o in objs]
    if len(set(cells)) != len(cells):
      raise ValueError(f'two objects share a cell: {cells}')
    if len(set(keys)) != len(keys):
      raise ValueError(f'two objects share colour and shape: {keys}')

  def __len__(self) -> int:
    return len(self.objects)

  def at(self, row: int, col: int) -> WorldObject | None:
    for o in self.objects:
      if o.row == row and o.col == col:
        return o
    return None

  def find(self, key: tuple[str, str]) -> WorldObject | None:
    """The object with this (colour, shape), or None."""
    for o in self.objects:
      if o.key == key:
        return o
    return None

  def occupied(self) -> set[tuple[int, int]]:
    return {o.cell for o in self.objects}

  def cells(self) -> dict[tuple[int, int], tuple[str, str]]:
    """{(row, col): (colour, shape)} for the occupied cells."""
    return {o.cell: o.key for o in self.objects}

  def without(self, obj: WorldObject) -> 'Scene':
    return Scene(tuple(o for o in self.objects if o != obj))

  def with_objects(self, *objs: WorldObject) -> 'Scene':
    return Scene(self.objects + tuple(objs))

  def to_json(self) -> list[dict]:
    return [dict(row=o.row, col=o.col, shape=o.shape, color=o.color) for o in self.objects]

  @classmethod
  def from_json(cls, items: Iterable[dict]) -> 'Scene':
    return cls(tuple(WorldObject(int(d['row']), int(d['col']), d['shape'], d['color'])
                     for d in items))

  def dumps(self) -> str:
    """Compact, canonical JSON text (used as a hashable key for disjointness checks)."""
    return json.dumps(self.to_json(), separators=(',', ':'))


def changed_cells(a: Scene, b: Scene) -> set[tuple[int, int]]:
  """Cells whose content (empty or colour+shape) differs between two scenes."""
  ca, cb = a.cells(), b.cells()
  return {c for c in set(ca) | set(cb) if ca.get(c) != cb.get(c)}


def in_grid(cell: tuple[int, int], config: WorldConfig) -> bool:
  return 0 <= cell[0] < config.rows and 0 <= cell[1] < config.cols


# ---------------------------------------------------------------------------------------------
# Rendering.


def shape_mask(shape: str, n: int) -> np.ndarray:
  """`[n, n]` bool mask of a shape drawn on an n x n pixel square."""
  u = (np.arange(n) + 0.5) / n - 0.5  # pixel centres in [-1/2, 1/2]
  y, x = np.meshgrid(u, u, indexing='ij')
  if shape == 'square':
    return np.ones((n, n), bool)
  if shape == 'circle':
    return x ** 2 + y ** 2 <= 0.25 + 1e-9
  if shape == 'triangle':
    # Half-width grows linearly from 0 at the top edge to 1/2 at the bottom edge, measured at the
    # bottom of each pixel row so the apex row is one pixel wide.
    bottom = (np.arange(n)[:, None] + 1.0) / n
    return np.abs(x) <= 0.5 * bottom + 1e-9
  if shape == 'cross':
    half = 0.1 + 1e-9  # bars n/5 thick: one pixel at n=7, three at n=15
    return (np.abs(x) < half) | (np.abs(y) < half)
  if shape == 'diamond':
    return np.abs(x) + np.abs(y) <= 0.5 + 1e-9
  raise UserError(f'Shape {shape!r} is unknown; pick from {list(SHAPES)}.')


@functools.lru_cache(maxsize=None)
def cell_masks(config: WorldConfig) -> dict[str, np.ndarray]:
  """{shape: `[cell_size, cell_size]` bool mask within a cell, margin included}."""
  n, m = config.cell_size - config.margin, config.margin
  out = {}
  for s in config.shapes:
    full = np.zeros((config.cell_size, config.cell_size), bool)
    full[m:, m:] = shape_mask(s, n)
    full.setflags(write=False)
    out[s] = full
  return out


def render(scene: Scene, config: WorldConfig = DEFAULT_CONFIG) -> np.ndarray:
  """Renders a scene to a uint8 `[rows * cell_size, cols * cell_size, 3]` frame."""
  frame = np.empty(config.frame_shape, np.uint8)
  frame[...] = BACKGROUND
  masks = cell_masks(config)
  k = config.cell_size
  for o in scene.objects:
    require(in_grid(o.cell, config) and o.shape in masks and o.color in config.colors,
            f'Object {o} does not fit the world config; check the scene against the config.')
    tile = frame[o.row * k:(o.row + 1) * k, o.col * k:(o.col + 1) * k]
    tile[masks[o.shape]] = PALETTE[o.color]
  return frame


# ---------------------------------------------------------------------------------------------
# Random scenes.


def all_keys(config: WorldConfig) -> list[tuple[str, str]]:
  """Every (colour, shape) pair of the world, in a fixed order."""
  return [(c, s) for c in config.colors for s in config.shapes]


def random_scene(rng: np.random.Generator, config: WorldConfig = DEFAULT_CONFIG,
                 num_objects: int | None = None,
                 include: Sequence[tuple[str, str]] = ()) -> Scene:
  """A uniformly random scene: distinct cells, distinct (colour, shape) pairs.

  `include` forces those (colour, shape) pairs into the scene (the compositional split uses it).
  """
  if num_objects is None:
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
  num_objects = max(num_objects, len(include))
  keys = all_keys(config)
  rest = [k for k in keys if k not in include]
  picks = list(include) + [rest[i] for i in rng.choice(len(rest), num_objects - len(include),
                                                       replace=False)]
  cells = rng.choice(config.num_cells, num_objects, replace=False)
  return Scene(tuple(WorldObject(int(c) // config.cols, int(c) % config.cols, s, col)
                     for (col, s), c in zip(picks, cells)))
