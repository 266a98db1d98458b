"""The action world's data splits: generation, statistics, files.

Splits (sizes from WorldConfig; 'smoke' is 10x smaller):
  labelled            (src, action, tgt) triplets: the scarce labelled data
  unlabelled          consecutive (src, tgt) frame pairs of multi-step random rollouts (episodes of
                      `rollout_length` steps); the action is withheld, kept under `hidden` for
                      analysis only
  test                triplets from the training distribution
  test_compositional  triplets whose every acted-on (colour, shape, action type) combination is
                      held out of labelled, unlabelled and test
  validation          triplets built like test, drawn after every other split (its own random
                      stream; it yields on collisions), so the other splits are what they were
                      before it existed: the split settings are tuned on, never `test`

Compositional hold-out: for each action type, `held_out_colors` colours x `held_out_shapes`
shapes (drawn from the seed; 2 x 2 = 4 of the 24 default pairs per type) form the held-out
(colour, shape, type) combinations. `actions.action_combos` says which objects an action acts
on: the moved / removed / added object, the recoloured object before and after, both swapped
objects (reference objects of move_rel / add are not acted on, and any object may appear in any
scene). A training or test action acts on no held-out combination; a compositional action acts
only on held-out ones. So every colour, shape and type is seen in training, only not together.

Action types are balanced within each triplet split (round robin, then shuffled) and drawn
uniformly at each rollout step (redrawn when the type has no valid action, e.g. add at
max_objects, so add and remove are a little rarer there: ~14% each against ~18% for the others).
Splits are disjoint: no (src scene, tgt scene) pair occurs twice in or across splits (stronger
than (src, action, tgt): two phrasings of one change are one pair).
Scenes always hold min_objects..max_objects objects (remove and add respect the bounds).

Example records (one JSON object a line in DIR/<split>.jsonl; scenes as Scene.to_json lists):
  triplets:   {id, src, tgt, action, canonical, action_type}
  unlabelled: {id, src, tgt, episode, step, hidden: {action, canonical, action_type}}
Frames are rendered from the scenes on demand (world.render).
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np

from data.action_world import actions as A
from data.action_world.tokenizer import TOKEN_NAMES, write_tokenizer
from data.action_world.world import (
  DEFAULT_CONFIG,
  Scene,
  WorldConfig,
  changed_cells,
  random_scene,
  render,
)
from data.errors import require

SPLITS = ('labelled', 'unlabelled', 'test', 'test_compositional', 'validation')
_STREAM = {'test_compositional': 1, 'test': 2, 'labelled': 3, 'unlabelled': 4, 'held_out': 5,
           'validation': 6}
_MAX_TRIES = 1000


def held_out_combos(config: WorldConfig = DEFAULT_CONFIG,
                    seed: int = 0) -> frozenset[tuple[str, str, str]]:
  """The (colour, shape, action type) combinations reserved for test_compositional."""
  require(config.held_out_colors <= len(config.colors) - 1
          and config.held_out_shapes <= len(config.shapes) - 1,
          'World held_out_colors/held_out_shapes must leave at least one colour and one shape '
          'per action type for training; lower them.')
  rng = np.random.default_rng([seed, _STREAM['held_out']])
  out = set()
  for kind in A.ACTION_TYPES:
    colors = rng.choice(len(config.colors), config.held_out_colors, replace=False)
    shapes = rng.choice(len(config.shapes), config.held_out_shapes, replace=False)
    out |= {(config.colors[c], config.shapes[s], kind) for c in colors for s in shapes}
  return frozenset(out)


def _pair_key(src: Scene, tgt: Scene) -> tuple[str, str]:
  return (src.dumps(), tgt.dumps())


def _triplet(split: str, i: int, src: Scene, action: A.Action, tgt: Scene, text: str) -> dict:
  return dict(id=f'{split}-{i:06d}', src=src.to_json(), tgt=tgt.to_json(), action=text,
              canonical=action.canonical, action_type=action.type)


def _triplets(split: str, n: int, config: WorldConfig, seed: int, held: frozenset,
              seen: set) -> list[dict]:
  rng = np.random.default_rng([seed, _STREAM[split]])
  compositional = split == 'test_compositional'
  if compositional:
    allow = lambda a: A.action_combos(a) <= held
  else:
    allow = lambda a: not (A.action_combos(a) & held)
  held_by_type = collections.defaultdict(list)
  for c, s, kind in sorted(held):
    held_by_type[kind].append((c, s))
  out = []
  for i in range(n):
    kind = A.ACTION_TYPES[i % len(A.ACTION_TYPES)]
    for _ in range(_MAX_TRIES):
      include = ()
      if compositional:
        # Put held-out objects in the scene so the type has something to act on (add needs
        # the held-out object absent instead).
        k = {'swap': 2, 'add': 0}.get(kind, 1)
        pool = held_by_type[kind]
        include = [pool[j] for j in rng.choice(len(pool), min(k, len(pool)), replace=False)]
      src = random_scene(rng, config, include=include)
      action = A.sample_action(src, kind, rng, config, allow)
      if action is None:
        continue
      tgt = A.apply_action(src, action, config)
      key = _pair_key(src, tgt)
      if key in seen:
        continue
      seen.add(key)
      out.append(_triplet(split, 0, src, action, tgt, A.describe(action, rng, config)))
      break
    else:
      raise RuntimeError(f'could not generate a {kind} example for {split}; '
                         'the world config leaves too few valid actions')
  order = rng.permutation(len(out))
  out = [out[j] for j in order]
  for i, ex in enumerate(out):
    ex['id'] = f'{split}-{i:06d}'
  return out


def _rollouts(n: int, config: WorldConfig, seed: int, held: frozenset, seen: set) -> list[dict]:
  rng = np.random.default_rng([seed, _STREAM['unlabelled']])
  allow = lambda a: not (A.action_combos(a) & held)
  out, episode = [], 0
  while len(out) < n:
    scene = random_scene(rng, config)
    for step in range(config.rollout_length):
      if len(out) >= n:
        break
      for _ in range(_MAX_TRIES):
        kind = A.ACTION_TYPES[int(rng.integers(len(A.ACTION_TYPES)))]
        action = A.sample_action(scene, kind, rng, config, allow)
        if action is None:
          continue
        tgt = A.apply_action(scene, action, config)
        if _pair_key(scene, tgt) not in seen:
          break
      else:
        raise RuntimeError('could not continue a rollout; the world config is too constrained')
      seen.add(_pair_key(scene, tgt))
      out.append(dict(id=f'unlabelled-{len(out):06d}', src=scene.to_json(), tgt=tgt.to_json(),
                      episode=episode, step=step,
                      hidden=dict(action=A.describe(action, rng, config),
                                  canonical=action.canonical, action_type=action.type)))
      scene = tgt
    episode += 1
  return out


def build_splits(config: WorldConfig = DEFAULT_CONFIG, seed: int = 0) -> dict[str, list[dict]]:
  """All five splits, deterministic for (config, seed). See the module docstring."""
  held = held_out_combos(config, seed)
  seen: set = set()
  # Test sets first, so training data is what yields on the (rare) collisions.
  splits = {}
  splits['test_compositional'] = _triplets('test_compositional', config.num_test_compositional,
                                           config, seed, held, seen)
  splits['test'] = _triplets('test', config.num_test, config, seed, held, seen)
  splits['labelled'] = _triplets('labelled', config.num_labelled, config, seed, held, seen)
  splits['unlabelled'] = _rollouts(config.num_unlabelled, config, seed, held, seen)
  splits['validation'] = _triplets('validation', config.num_validation, config, seed, held, seen)
  return {name: splits[name] for name in SPLITS}


def example_action(example: dict) -> dict:
  """{action, canonical, action_type} of a triplet, or the hidden one of an unlabelled pair."""
  src = example.get('hidden', example)
  return {k: src[k] for k in ('action', 'canonical', 'action_type')}


def example_frames(example: dict, config: WorldConfig = DEFAULT_CONFIG
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(src_frame, tgt_frame), each uint8 `[H, W, 3]`, rendered from the example's scenes."""
  return (render(Scene.from_json(example['src']), config),
          render(Scene.from_json(example['tgt']), config))


def split_statistics(splits: dict[str, list[dict]]) -> dict:
  """Per split: examples, examples per action type, mean changed cells (overall and per type),
  mean objects per source scene."""
  stats = {}
  for name, examples in splits.items():
    per_type = collections.Counter()
    changed = collections.defaultdict(list)
    objects = []
    for ex in examples:
      kind = example_action(ex)['action_type']
      per_type[kind] += 1
      changed[kind].append(len(changed_cells(Scene.from_json(ex['src']),
                                             Scene.from_json(ex['tgt']))))
      objects.append(len(ex['src']))
    all_changed = [c for v in changed.values() for c in v]
    stats[name] = dict(
        examples=len(examples),
        action_types={k: per_type[k] for k in A.ACTION_TYPES},
        mean_changed_cells=float(np.mean(all_changed)) if all_changed else 0.0,
        mean_changed_cells_per_type={k: float(np.mean(changed[k])) if changed[k] else 0.0
                                     for k in A.ACTION_TYPES},
        mean_objects=float(np.mean(objects)) if objects else 0.0)
  return stats


def write_world(out_dir: str, config: WorldConfig = DEFAULT_CONFIG, seed: int = 0,
                size: str = '') -> dict:
  """Builds the splits and writes DIR/<split>.jsonl, DIR/world_config.json, DIR/tokenizer/.

  Returns the statistics (also stored in world_config.json under "build").
  """

  start = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  splits = build_splits(config, seed)
  build_s = time.perf_counter() - start
  for name, examples in splits.items():
    with open(os.path.join(out_dir, f'{name}.jsonl'), 'w') as f:
      for ex in examples:
        f.write(json.dumps(ex, separators=(',', ':')) + '\n')
  write_tokenizer(os.path.join(out_dir, 'tokenizer'), config)
  stats = split_statistics(splits)
  meta = dict(config.to_json(),
              frame_shape=list(config.frame_shape),
              tokens_per_frame=config.num_cells,
              vocab=dict(tokenizer_dir='tokenizer', **TOKEN_NAMES),
              build=dict(seed=seed, size=size, build_seconds=round(build_s, 2),
                         held_out_combos=sorted(map(list, held_out_combos(config, seed))),
                         stats=stats))
  with open(os.path.join(out_dir, 'world_config.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  return dict(stats=stats, build_seconds=build_s, total_seconds=time.perf_counter() - start)


def load_world_config(data_dir: str) -> WorldConfig:
  """The WorldConfig a data directory was built with."""
  path = os.path.join(data_dir, 'world_config.json')
  require(os.path.isfile(path), f'No world_config.json in {data_dir!r}; build the world there '
          'first with `python -m data.action_world build --out DIR`.')
  with open(path) as f:
    return WorldConfig.from_json(json.load(f))


def load_split(data_dir: str, name: str) -> list[dict]:
  """The examples of one split, as written by write_world."""
  require(name in SPLITS, f'Split {name!r} is unknown; use one of {list(SPLITS)}.')
  path = os.path.join(data_dir, f'{name}.jsonl')
  require(os.path.isfile(path), f'No {name}.jsonl in {data_dir!r}; build the world there first '
          'with `python -m data.action_world build --out DIR`.')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
