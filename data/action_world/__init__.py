"""The embedded action world: a procedural grid world where the whole method runs end to end on
a CPU and is scored exactly.

world.py     scenes (objects with row/col/shape/colour), WorldConfig, render(scene) -> frame
actions.py   action types, canonical forms, phrasings, parse_action(text), apply_action,
             score_prediction (FDP) and score_action_text (IDP)
parser.py    parse_frame(frame) -> scene, the ground truth for generated frames
splits.py    build_splits / write_world / load_split (labelled, unlabelled, test,
             test_compositional, validation: built like test, for tuning)
tokenizer.py the world's word-level text tokenizer directory
pretrain.py  action-free pretraining documents over fresh scenes (captions, text-to-image,
             multi-image captions, repeated images): the stand-in for a VLM's pretraining data
`python -m data.action_world build --out DIR [--size default|smoke] [--seed 0]` writes a data set.
Pure Python + numpy; imports nothing from jax_vlm but its errors.
"""

from data.action_world.actions import (
  ACTION_TYPES,
  Action,
  InvalidAction,
  action_combos,
  action_type,
  all_phrasings,
  apply_action,
  describe,
  parse_action,
  parse_action_struct,
  parse_canonical,
  sample_action,
  score_action_text,
  score_prediction,
  try_apply,
  valid_actions,
  vocabulary_words,
)
from data.action_world.parser import parse_frame, parse_frames
from data.action_world.splits import (
  SPLITS,
  build_splits,
  example_action,
  example_frames,
  held_out_combos,
  load_split,
  load_world_config,
  split_statistics,
  write_world,
)
from data.action_world.tokenizer import SPECIAL_TOKENS, TOKEN_NAMES, write_tokenizer
from data.action_world.world import (
  DEFAULT_CONFIG,
  PALETTE,
  Scene,
  WorldConfig,
  WorldObject,
  changed_cells,
  random_scene,
  render,
)

__all__ = [
  'ACTION_TYPES', 'Action', 'InvalidAction', 'action_combos', 'action_type', 'all_phrasings',
  'apply_action', 'describe', 'parse_action', 'parse_action_struct', 'parse_canonical',
  'sample_action', 'score_action_text', 'score_prediction', 'try_apply', 'valid_actions',
  'vocabulary_words', 'parse_frame', 'parse_frames', 'SPLITS', 'build_splits', 'example_action',
  'example_frames', 'held_out_combos', 'load_split', 'load_world_config', 'split_statistics',
  'write_world',
  'SPECIAL_TOKENS', 'TOKEN_NAMES', 'write_tokenizer', 'DEFAULT_CONFIG', 'PALETTE', 'Scene',
  'WorldConfig', 'WorldObject', 'changed_cells', 'random_scene', 'render',
]
