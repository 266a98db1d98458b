"""Action-free pretraining documents: what a unified VLM has read before it ever sees an action.

Chameleon and Liquid are pretrained on captioned images and interleaved image-text documents, so
they already read objects and their places out of image tokens and write about them. The world's
stand-in for that pretraining draws fresh random scenes (a seed stream no split uses, and no
action is ever applied to them) and turns them into documents of three kinds:

  caption        one scene, then its caption                        <boi> A <eoi> caption(A)
  text_to_image  a caption, then its scene                          caption(A) <boi> A <eoi>
  multi_caption  two independent scenes, then the caption of the    <boi> B <eoi> <boi> A <eoi>
                 last one (reading places in multi-image context)    caption(A)
  repeat         a scene shown twice, as web pages repeat images     <boi> A <eoi> <boi> A <eoi>
                 (the in-context copying a pretrained model has)

A caption names every object with its cell, in reading order: "the red circle at row 2 column 3
the blue square at row 4 column 1". It uses only words the world's tokenizer already has.
Documents never hold an action, an IDP or FDP sequence, or a scene of any split.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from data.action_world.world import DEFAULT_CONFIG, Scene, WorldConfig, random_scene

DOCUMENT_KINDS = ('caption', 'text_to_image', 'multi_caption', 'repeat')
# Kinds whose output is an image (the rest end with a caption).
IMAGE_OUTPUT_KINDS = ('text_to_image', 'repeat')
# Seed stream of pretraining scenes; the splits use streams 1-5 (splits._STREAM).
PRETRAIN_STREAM = 11


class Document(NamedTuple):
  """A pretraining document: its kind, the pool indices of its scenes in order (the last one is
  the output or the captioned one) and its text (empty for `repeat`)."""
  kind: str
  scene_ids: tuple[int, ...]
  text: str


def caption(scene: Scene) -> str:
  """Every object of the scene with its cell (1-indexed), in reading order."""
  return ' '.join(f'the {o.color} {o.shape} at row {o.row + 1} column {o.col + 1}'
                  for o in scene.objects)


def pretraining_scenes(num: int, seed: int, config: WorldConfig = DEFAULT_CONFIG) -> list[Scene]:
  """`num` fresh random scenes of the world's distribution, from their own seed stream."""
  rng = np.random.default_rng([seed, PRETRAIN_STREAM])
  return [random_scene(rng, config) for _ in range(num)]


def sample_document(rng: np.random.Generator, kinds: tuple[str, ...],
                    scenes: list[Scene]) -> Document:
  """A random document of one of `kinds` over the scene pool."""
  for k in kinds:
    if k not in DOCUMENT_KINDS:
      raise ValueError(f'unknown pretraining document kind {k!r}; use some of {DOCUMENT_KINDS}')
  kind = kinds[int(rng.integers(len(kinds)))]
  a, b = (int(i) for i in rng.integers(len(scenes), size=2))
  if kind in ('caption', 'text_to_image'):
    return Document(kind, (a,), caption(scenes[a]))
  if kind == 'multi_caption':
    return Document(kind, (b, a), caption(scenes[a]))
  return Document(kind, (a, a), '')
