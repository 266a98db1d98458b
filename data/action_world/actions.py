"""Actions of the action world: types, canonical forms, phrasings, parsing, applying, scoring.

Action types (the `type` is the action class used for stratified selection), canonical forms:
  move      one cell up/down/left/right          move(red circle, up)
  move_rel  to the cell above/below/left of/right of/next to another object
                                                 move_rel(red circle, left_of, blue square)
  remove    remove an object                     remove(red circle)
  add       a described object at a cell (0-indexed row, col) or relative to an object
                                                 add(blue square, 0, 0)
                                                 add(blue square, next_to, red circle)
  recolor   give an object another colour        recolor(red circle, blue)
  swap      exchange two objects' cells          swap(blue square, red circle)  (names sorted)

"next to" resolves to the first free cell in the order right of, left of, below, above the
reference object (so applying an action is deterministic); when scoring a prediction, any of the
four neighbours counts as "next to". Only valid actions are generated: the target cell is inside
the grid and free, the new (colour, shape) does not exist yet, and something changes.

Phrasings are templates of fixed words and slots ({obj} "the red circle", {dir} "up", {rel}
"to the left of", {cell} "in the top left corner" / "at row 1 column 1" (1-indexed in words),
...). Each slot is a table phrase -> value, so generating a phrasing and parsing one back use the
same tables: `parse_action(text)` matches the normalised text (lower case, punctuation dropped,
British spellings mapped) against every template and returns the canonical string or None.
Phrasings use lower-case words and digits only, so a word-level tokenizer round-trips them.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Callable, NamedTuple

import numpy as np

from data.action_world.world import (
  DEFAULT_CONFIG,
  Scene,
  WorldConfig,
  WorldObject,
  changed_cells,
  in_grid,
)

ACTION_TYPES = ('move', 'move_rel', 'remove', 'add', 'recolor', 'swap')
DIRECTIONS = {'up': (-1, 0), 'down': (1, 0), 'left': (0, -1), 'right': (0, 1)}
# Offset of the target cell from the reference object's cell.
RELATIONS = {'above': (-1, 0), 'below': (1, 0), 'left_of': (0, -1), 'right_of': (0, 1),
             'next_to': None}
NEXT_TO_ORDER = ('right_of', 'left_of', 'below', 'above')

Key = tuple[str, str]  # (colour, shape)


class InvalidAction(ValueError):
  """The action does not apply to the scene (missing object, cell taken or off the grid, ...)."""


class Action(NamedTuple):
  """A structured action; `str(action)` / `action.canonical` is its canonical string."""
  type: str
  obj: Key  # the object acted on (for add: the new object)
  direction: str | None = None  # move
  relation: str | None = None  # move_rel; add relative to `ref`
  ref: Key | None = None  # reference object (move_rel, add) or the swap partner
  cell: tuple[int, int] | None = None  # add at a cell
  color: str | None = None  # recolor: the new colour

  @property
  def canonical(self) -> str:
    o = f'{self.obj[0]} {self.obj[1]}'
    r = f'{self.ref[0]} {self.ref[1]}' if self.ref else ''
    if self.type == 'move':
      return f'move({o}, {self.direction})'
    if self.type == 'move_rel':
      return f'move_rel({o}, {self.relation}, {r})'
    if self.type == 'remove':
      return f'remove({o})'
    if self.type == 'add':
      if self.cell is not None:
        return f'add({o}, {self.cell[0]}, {self.cell[1]})'
      return f'add({o}, {self.relation}, {r})'
    if self.type == 'recolor':
      return f'recolor({o}, {self.color})'
    if self.type == 'swap':
      a, b = sorted([o, r])
      return f'swap({a}, {b})'
    raise ValueError(f'unknown action type {self.type!r}')

  def __str__(self) -> str:
    return self.canonical

  def normalized(self) -> 'Action':
    """Swap partners in sorted order, so equal meanings compare equal."""
    if self.type == 'swap' and self.ref is not None and self.ref < self.obj:
      return self._replace(obj=self.ref, ref=self.obj)
    return self


def parse_canonical(canonical: 'str | Action') -> Action:
  """Canonical string -> Action (raises ValueError on a malformed string)."""
  if isinstance(canonical, Action):
    return canonical.normalized()
  m = re.fullmatch(r'\s*(\w+)\((.*)\)\s*', canonical)
  if not m:
    raise ValueError(f'not a canonical action: {canonical!r}')
  kind, args = m.group(1), [a.strip() for a in m.group(2).split(',')]

  def key(s: str) -> Key:
    parts = s.split()
    if len(parts) != 2:
      raise ValueError(f'not an object name: {s!r} in {canonical!r}')
    return (parts[0], parts[1])

  try:
    if kind == 'move' and len(args) == 2 and args[1] in DIRECTIONS:
      return Action('move', key(args[0]), direction=args[1])
    if kind == 'move_rel' and len(args) == 3 and args[1] in RELATIONS:
      return Action('move_rel', key(args[0]), relation=args[1], ref=key(args[2]))
    if kind == 'remove' and len(args) == 1:
      return Action('remove', key(args[0]))
    if kind == 'add' and len(args) == 3 and args[1] in RELATIONS:
      return Action('add', key(args[0]), relation=args[1], ref=key(args[2]))
    if kind == 'add' and len(args) == 3:
      return Action('add', key(args[0]), cell=(int(args[1]), int(args[2])))
    if kind == 'recolor' and len(args) == 2:
      return Action('recolor', key(args[0]), color=args[1])
    if kind == 'swap' and len(args) == 2:
      return Action('swap', key(args[0]), ref=key(args[1])).normalized()
  except ValueError as e:
    raise ValueError(f'not a canonical action: {canonical!r}') from e
  raise ValueError(f'not a canonical action: {canonical!r}')


def action_type(canonical: 'str | Action') -> str:
  return parse_canonical(canonical).type


def action_combos(action: 'str | Action') -> set[tuple[str, str, str]]:
  """(colour, shape, type) of every object the action acts on.

  move/move_rel/remove: the object; add: the new object; recolor: the object as named and as it
  becomes; swap: both objects. Reference objects of move_rel/add are not acted on.
  """
  a = parse_canonical(action)
  out = {(a.obj[0], a.obj[1], a.type)}
  if a.type == 'recolor':
    out.add((a.color, a.obj[1], a.type))
  if a.type == 'swap':
    out.add((a.ref[0], a.ref[1], a.type))
  return out


# ---------------------------------------------------------------------------------------------
# Applying.


def _offset(cell, delta):
  return (cell[0] + delta[0], cell[1] + delta[1])


def relation_cell(ref_cell: tuple[int, int], relation: str, scene: Scene,
                  config: WorldConfig) -> tuple[int, int] | None:
  """The cell `relation` of `ref_cell`; None if off the grid (or, for next_to, none is free)."""
  if relation == 'next_to':
    occupied = scene.occupied()
    for r in NEXT_TO_ORDER:
      c = _offset(ref_cell, RELATIONS[r])
      if in_grid(c, config) and c not in occupied:
        return c
    return None
  c = _offset(ref_cell, RELATIONS[relation])
  return c if in_grid(c, config) else None


def _require_obj(scene: Scene, key: Key, what: str) -> WorldObject:
  o = scene.find(key)
  if o is None:
    raise InvalidAction(f'no {key[0]} {key[1]} in the scene ({what})')
  return o


def _require_free(scene: Scene, cell, config: WorldConfig) -> None:
  if cell is None or not in_grid(cell, config):
    raise InvalidAction(f'target cell {cell} is off the grid')
  if scene.at(*cell) is not None:
    raise InvalidAction(f'target cell {cell} is taken')


def apply_action(scene: Scene, action: 'str | Action',
                 config: WorldConfig = DEFAULT_CONFIG) -> Scene:
  """The scene after the action; raises InvalidAction if the action does not apply."""
  a = parse_canonical(action)
  if a.type in ('move', 'move_rel', 'remove', 'recolor', 'swap'):
    o = _require_obj(scene, a.obj, a.type)
  if a.type == 'move':
    cell = _offset(o.cell, DIRECTIONS[a.direction])
    _require_free(scene, cell, config)
    return scene.without(o).with_objects(WorldObject(*cell, o.shape, o.color))
  if a.type == 'move_rel':
    ref = _require_obj(scene, a.ref, 'reference')
    if ref == o:
      raise InvalidAction('an object cannot move relative to itself')
    cell = relation_cell(ref.cell, a.relation, scene, config)
    _require_free(scene, cell, config)
    return scene.without(o).with_objects(WorldObject(*cell, o.shape, o.color))
  if a.type == 'remove':
    return scene.without(o)
  if a.type == 'add':
    if a.obj[0] not in config.colors or a.obj[1] not in config.shapes:
      raise InvalidAction(f'{a.obj} is not an object of this world')
    if scene.find(a.obj) is not None:
      raise InvalidAction(f'a {a.obj[0]} {a.obj[1]} is already in the scene')
    if a.cell is not None:
      cell = a.cell
    else:
      cell = relation_cell(_require_obj(scene, a.ref, 'reference').cell, a.relation, scene, config)
    _require_free(scene, cell, config)
    return scene.with_objects(WorldObject(*cell, a.obj[1], a.obj[0]))
  if a.type == 'recolor':
    if a.color not in config.colors or a.color == o.color:
      raise InvalidAction(f'cannot recolour the {o.name} {a.color}')
    if scene.find((a.color, o.shape)) is not None:
      raise InvalidAction(f'a {a.color} {o.shape} is already in the scene')
    return scene.without(o).with_objects(WorldObject(o.row, o.col, o.shape, a.color))
  if a.type == 'swap':
    p = _require_obj(scene, a.ref, 'swap partner')
    if p == o:
      raise InvalidAction('an object cannot swap with itself')
    return scene.without(o).without(p).with_objects(
        WorldObject(p.row, p.col, o.shape, o.color), WorldObject(o.row, o.col, p.shape, p.color))
  raise InvalidAction(f'unknown action type {a.type!r}')


def try_apply(scene: Scene, action: 'str | Action | None',
              config: WorldConfig = DEFAULT_CONFIG) -> Scene | None:
  """apply_action, or None where the action is None, malformed or does not apply."""
  if action is None:
    return None
  try:
    return apply_action(scene, action, config)
  except ValueError:  # InvalidAction, or a malformed canonical string
    return None


# ---------------------------------------------------------------------------------------------
# Sampling valid actions.


def _add_candidates(scene: Scene, key: Key, config: WorldConfig) -> list[Action]:
  occupied = scene.occupied()
  out = [Action('add', key, cell=(r, c)) for r in range(config.rows) for c in range(config.cols)
         if (r, c) not in occupied]
  for ref in scene.objects:
    for rel in RELATIONS:
      c = relation_cell(ref.cell, rel, scene, config)
      if c is not None and c not in occupied:
        out.append(Action('add', key, relation=rel, ref=ref.key))
  return out


def _candidates(scene: Scene, kind: str, config: WorldConfig) -> list[Action]:
  objs = scene.objects
  occupied = scene.occupied()
  free = lambda c: in_grid(c, config) and c not in occupied
  out = []
  if kind == 'move':
    for o in objs:
      out += [Action('move', o.key, direction=d) for d, dl in DIRECTIONS.items()
              if free(_offset(o.cell, dl))]
  elif kind == 'move_rel':
    for o, ref in itertools.permutations(objs, 2):
      for rel in RELATIONS:
        if rel == 'next_to':
          # Only when not already a neighbour, so the action visibly does what it says.
          if abs(o.row - ref.row) + abs(o.col - ref.col) == 1:
            continue
          cell = relation_cell(ref.cell, rel, scene, config)
        else:
          cell = _offset(ref.cell, RELATIONS[rel])
        if cell is not None and free(cell):
          out.append(Action('move_rel', o.key, relation=rel, ref=ref.key))
  elif kind == 'remove':
    if len(objs) > config.min_objects:
      out = [Action('remove', o.key) for o in objs]
  elif kind == 'add':
    if len(objs) < config.max_objects:
      present = {o.key for o in objs}
      for key in (k for c in config.colors for s in config.shapes
                  if (k := (c, s)) not in present):
        out += _add_candidates(scene, key, config)
  elif kind == 'recolor':
    present = {o.key for o in objs}
    for o in objs:
      out += [Action('recolor', o.key, color=c) for c in config.colors
              if c != o.color and (c, o.shape) not in present]
  elif kind == 'swap':
    out = [Action('swap', a.key, ref=b.key).normalized()
           for a, b in itertools.combinations(objs, 2)]
  else:
    raise ValueError(f'unknown action type {kind!r}')
  return out


def valid_actions(scene: Scene, kind: str, config: WorldConfig = DEFAULT_CONFIG) -> list[Action]:
  """Every valid action of one type for the scene (the generator samples from these)."""
  return _candidates(scene, kind, config)


def sample_action(scene: Scene, kind: str, rng: np.random.Generator,
                  config: WorldConfig = DEFAULT_CONFIG,
                  allow: Callable[[Action], bool] | None = None) -> Action | None:
  """A random valid action of one type (with `allow(action)` true), or None.

  Uniform over the valid actions, except for `add`: first a uniformly random absent
  (colour, shape), then cell or relative placement half and half where both exist (so the many
  cells do not crowd out the relative phrasings), then a uniform placement.
  """
  if kind == 'add':
    if len(scene) >= config.max_objects:
      return None
    present = {o.key for o in scene.objects}
    absent = [(c, s) for c in config.colors for s in config.shapes if (c, s) not in present]
    for j in rng.permutation(len(absent)):
      cands = _add_candidates(scene, absent[j], config)
      if allow is not None:
        cands = [a for a in cands if allow(a)]
      groups = [g for g in ([a for a in cands if a.cell is not None],
                            [a for a in cands if a.cell is None]) if g]
      if groups:
        group = groups[int(rng.integers(len(groups)))]
        return group[int(rng.integers(len(group)))]
    return None
  cands = _candidates(scene, kind, config)
  if allow is not None:
    cands = [a for a in cands if allow(a)]
  if not cands:
    return None
  return cands[int(rng.integers(len(cands)))]


# ---------------------------------------------------------------------------------------------
# Phrasings: templates of words and slots, each slot a table phrase -> value.

_MOVE = ('move {obj} {dir}', 'move {obj} {dir_adv}', 'move {obj} one cell {dir}',
         'push {obj} one cell {dir}', 'shift {obj} {dir_adv}', 'move {obj} one step {dir}',
         'slide {obj} {dir} by one cell', 'nudge {obj} {dir_adv}')
_MOVE_REL = ('move {obj} {rel} {ref}', 'put {obj} {rel} {ref}', 'place {obj} {rel} {ref}',
             'move {obj} so that it is {rel} {ref}')
_REMOVE = ('remove {obj}', 'delete {obj}', 'take away {obj}', 'get rid of {obj}', 'erase {obj}')
_ADD = tuple(f'{verb} {{new}} {place}' for verb in ('add', 'put', 'place', 'draw')
             for place in ('{cell}', '{rel} {ref}'))
_RECOLOR = ('make {obj} {color}', 'paint {obj} {color}', 'recolor {obj} {color}',
            'change the color of {obj} to {color}', 'turn {obj} {color}')
_SWAP = ('swap {obj} and {ref}', 'swap {obj} with {ref}', 'exchange {obj} and {ref}',
         'switch {obj} and {ref}', 'swap the positions of {obj} and {ref}',
         'let {obj} and {ref} trade places')
TEMPLATES = {'move': _MOVE, 'move_rel': _MOVE_REL, 'remove': _REMOVE, 'add': _ADD,
             'recolor': _RECOLOR, 'swap': _SWAP}

# Spelling variants mapped before parsing (a model may write either).
_NORMALISE_WORDS = {'colour': 'color', 'recolour': 'recolor', 'centre': 'center', 'grey': 'gray',
                    'an': 'a'}


@functools.lru_cache(maxsize=None)
def slot_tables(config: WorldConfig = DEFAULT_CONFIG) -> dict[str, dict[str, object]]:
  """{slot: {phrase: value}} for every slot the templates use."""
  keys = [(c, s) for c in config.colors for s in config.shapes]
  cells = {}
  for r in range(config.rows):
    for c in range(config.cols):
      for prep in ('at', 'in'):
        cells[f'{prep} row {r + 1} column {c + 1}'] = (r, c)
  last_r, last_c = config.rows - 1, config.cols - 1
  corners = {'top left': (0, 0), 'top right': (0, last_c), 'bottom left': (last_r, 0),
             'bottom right': (last_r, last_c)}
  for name, cell in corners.items():
    cells[f'in the {name} corner'] = cell
    cells[f'at the {name} corner'] = cell
  if config.rows % 2 and config.cols % 2:
    centre = (config.rows // 2, config.cols // 2)
    cells['in the center'] = centre
    cells['in the middle'] = centre
  return {
      'obj': {f'the {c} {s}': (c, s) for c, s in keys},
      'ref': {f'the {c} {s}': (c, s) for c, s in keys},
      # Parsing maps "an" to "a", so either article parses.
      'new': {f'{"an" if c[0] in "aeiou" else "a"} {c} {s}': (c, s) for c, s in keys},
      'dir': {d: d for d in DIRECTIONS},
      'dir_adv': {'upward': 'up', 'upwards': 'up', 'downward': 'down', 'downwards': 'down',
                  'to the left': 'left', 'to the right': 'right'},
      'rel': {'above': 'above', 'just above': 'above', 'below': 'below', 'just below': 'below',
              'to the left of': 'left_of', 'just left of': 'left_of',
              'to the right of': 'right_of', 'just right of': 'right_of',
              'next to': 'next_to', 'beside': 'next_to'},
      'cell': cells,
      'color': {c: c for c in config.colors},
  }


_SLOT_RE = re.compile(r'\{(\w+)\}')


def _slots(template: str) -> list[str]:
  return _SLOT_RE.findall(template)


def _slot_values(action: Action) -> dict[str, object] | None:
  """What each slot must express for this action (None where a template cannot express it)."""
  return {'obj': action.obj, 'ref': action.ref, 'new': action.obj, 'dir': action.direction,
          'dir_adv': action.direction, 'rel': action.relation, 'cell': action.cell,
          'color': action.color}


def _fits(template: str, action: Action) -> bool:
  slots = _slots(template)
  if action.type == 'add':
    return ('cell' in slots) == (action.cell is not None)
  return True


def _fill(template: str, action: Action, choose: Callable[[list[str]], str],
          config: WorldConfig) -> str:
  tables, values = slot_tables(config), _slot_values(action)

  def sub(m):
    slot = m.group(1)
    phrases = [p for p, v in tables[slot].items() if v == values[slot]]
    if not phrases:
      raise ValueError(f'slot {slot} cannot express {values[slot]!r}')
    return choose(phrases)
  return _SLOT_RE.sub(sub, template)


def describe(action: 'str | Action', rng: np.random.Generator,
             config: WorldConfig = DEFAULT_CONFIG) -> str:
  """One random phrasing of the action (template and slot phrases drawn uniformly)."""
  a = parse_canonical(action)
  if config.phrasings == 'plain':  # one wording: the first template and phrases, sorted partners
    template = next(t for t in TEMPLATES[a.type] if _fits(t, a))
    return _fill(template, a, lambda ps: ps[0], config)
  # The swap partner order in words is random too; the canonical form sorts it away.
  if a.type == 'swap' and rng.integers(2):
    a = a._replace(obj=a.ref, ref=a.obj)
  templates = [t for t in TEMPLATES[a.type] if _fits(t, a)]
  template = templates[int(rng.integers(len(templates)))]
  return _fill(template, a, lambda ps: ps[int(rng.integers(len(ps)))], config)


def all_phrasings(action: 'str | Action', config: WorldConfig = DEFAULT_CONFIG) -> list[str]:
  """Every phrasing the generator can produce for the action (both swap orders)."""
  a = parse_canonical(action)
  variants = [a, a._replace(obj=a.ref, ref=a.obj)] if a.type == 'swap' else [a]
  tables, out = slot_tables(config), []
  for v in variants:
    values = _slot_values(v)
    for t in TEMPLATES[a.type]:
      if not _fits(t, v):
        continue
      slots = _slots(t)
      options = [[p for p, val in tables[s].items() if val == values[s]] for s in slots]
      for combo in itertools.product(*options):
        it = iter(combo)
        out.append(_SLOT_RE.sub(lambda m: next(it), t))
  return out


def vocabulary_words(config: WorldConfig = DEFAULT_CONFIG) -> list[str]:
  """Every word a phrasing can contain (sorted); the world's tokenizer covers exactly these."""
  words = set()
  for templates in TEMPLATES.values():
    for t in templates:
      words.update(w for w in _SLOT_RE.sub(' ', t).split())
  for table in slot_tables(config).values():
    for phrase in table:
      words.update(phrase.split())
  return sorted(words)


def normalize_text(text: str) -> str:
  """Lower case, punctuation to spaces, single spaces, British spellings mapped."""
  words = re.sub(r'[^a-z0-9]+', ' ', text.lower()).split()
  return ' '.join(_NORMALISE_WORDS.get(w, w) for w in words)


@functools.lru_cache(maxsize=None)
def _compiled(config: WorldConfig) -> list[tuple[str, re.Pattern]]:
  tables = slot_tables(config)
  out = []
  for kind, templates in TEMPLATES.items():
    for t in templates:
      pattern = ''
      pos = 0
      for m in _SLOT_RE.finditer(t):
        pattern += re.escape(t[pos:m.start()])
        phrases = sorted({normalize_text(p) for p in tables[m.group(1)]}, key=len, reverse=True)
        pattern += f'(?P<{m.group(1)}>' + '|'.join(map(re.escape, phrases)) + ')'
        pos = m.end()
      pattern += re.escape(t[pos:])
      out.append((kind, re.compile(pattern)))
  return out


@functools.lru_cache(maxsize=None)
def _normalized_tables(config: WorldConfig) -> dict[str, dict[str, object]]:
  return {slot: {normalize_text(p): v for p, v in table.items()}
          for slot, table in slot_tables(config).items()}


def parse_action_struct(text: str, config: WorldConfig = DEFAULT_CONFIG) -> Action | None:
  """Text -> Action, or None if no template matches."""
  norm = normalize_text(text)
  tables = _normalized_tables(config)
  for kind, pattern in _compiled(config):
    m = pattern.fullmatch(norm)
    if not m:
      continue
    g = {k: tables[k][v] for k, v in m.groupdict().items()}
    a = Action(kind, g.get('obj') or g.get('new'), direction=g.get('dir') or g.get('dir_adv'),
               relation=g.get('rel'), ref=g.get('ref'), cell=g.get('cell'), color=g.get('color'))
    if a.ref is not None and a.ref == a.obj:
      continue  # "swap the red circle and the red circle" means nothing
    return a.normalized()
  return None


def parse_action(text: str, config: WorldConfig = DEFAULT_CONFIG) -> str | None:
  """Text -> canonical action string, or None if the text is not an action of this world."""
  a = parse_action_struct(text, config)
  return None if a is None else a.canonical


# ---------------------------------------------------------------------------------------------
# Scoring (the world's exact analogue of the judge's editing success / minimal editing).


def _neighbours(cell):
  return [_offset(cell, RELATIONS[r]) for r in NEXT_TO_ORDER]


def score_prediction(src_scene: Scene, action: 'str | Action', true_tgt_scene: Scene,
                     predicted_scene: Scene, config: WorldConfig = DEFAULT_CONFIG) -> dict:
  """Scores a predicted next scene (e.g. parsed from an FDP frame) against the action.

  edit_success (0/1): the acted-on object(s) end where and as the action says (moved object at
    the target cell and gone from its old cell; removed object's cell empty; new object at its
    cell; recoloured object in place with the new colour; swapped objects in each other's cells).
    For "next to", any free neighbour of the reference counts.
  minimal_editing (0..1): share of the OTHER cells (not changed by the true action, nor the cell
    a successful "next to" prediction chose) whose content equals the source scene's.
  item_score: min(edit_success, minimal_editing).
  exact_match: the predicted scene equals the true target scene.
  """
  a = parse_canonical(action)
  if try_apply(src_scene, a, config) is None:
    raise ValueError(f'action {a.canonical!r} does not apply to the source scene')
  src, pred = src_scene.cells(), predicted_scene.cells()
  region = changed_cells(src_scene, true_tgt_scene)

  def holds(cell, key):
    return pred.get(cell) == key

  success = False
  if a.type in ('move', 'move_rel'):
    o = src_scene.find(a.obj)
    if a.type == 'move':
      targets = [_offset(o.cell, DIRECTIONS[a.direction])]
    else:
      ref = src_scene.find(a.ref)
      targets = ([c for c in _neighbours(ref.cell) if in_grid(c, config) and c not in src]
                 if a.relation == 'next_to' else [_offset(ref.cell, RELATIONS[a.relation])])
    hit = [c for c in targets if holds(c, o.key)]
    success = bool(hit) and o.cell not in pred
    region |= set(hit[:1])
  elif a.type == 'remove':
    success = src_scene.find(a.obj).cell not in pred
  elif a.type == 'add':
    if a.cell is not None:
      targets = [a.cell]
    else:
      ref = src_scene.find(a.ref)
      targets = ([c for c in _neighbours(ref.cell) if in_grid(c, config) and c not in src]
                 if a.relation == 'next_to' else [_offset(ref.cell, RELATIONS[a.relation])])
    hit = [c for c in targets if holds(c, a.obj)]
    success = bool(hit)
    region |= set(hit[:1])
  elif a.type == 'recolor':
    o = src_scene.find(a.obj)
    success = holds(o.cell, (a.color, o.shape))
  elif a.type == 'swap':
    o, p = src_scene.find(a.obj), src_scene.find(a.ref)
    success = holds(p.cell, o.key) and holds(o.cell, p.key)
  others = [(r, c) for r in range(config.rows) for c in range(config.cols) if (r, c) not in region]
  minimal = (sum(src.get(c) == pred.get(c) for c in others) / len(others)) if others else 1.0
  edit = float(success)
  return dict(edit_success=edit, minimal_editing=float(minimal), item_score=min(edit, minimal),
              exact_match=predicted_scene == true_tgt_scene)


def score_action_text(src_scene: Scene, text: str, tgt_scene: Scene,
                      config: WorldConfig = DEFAULT_CONFIG, true_action: 'str | None' = None
                      ) -> dict:
  """Scores an IDP prediction by meaning.

  parsed: the text is an action of this world; effect_match: applying it to the source gives the
  target scene exactly (so "next to" and "right of" both count when they have the same effect);
  canonical_match: its canonical form equals `true_action` (when given).
  """
  a = parse_action_struct(text, config)
  result = try_apply(src_scene, a, config)
  out = dict(parsed=a is not None, effect_match=result is not None and result == tgt_scene)
  if true_action is not None:
    out['canonical_match'] = a is not None and a.canonical == parse_canonical(true_action).canonical
  return out
