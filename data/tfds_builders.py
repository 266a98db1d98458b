"""TFDS builders writing ArrayRecord without TensorFlow, read back with `tfds.data_source` / grain.

Two data sets:
  AuroraTriplets      image triplets from an AURORA checkout (`data/<task>/train.json`, and
                      `valid.json` where present): src_image, tgt_image (encoded PNG/JPEG),
                      instruction, task, example_id. Frames are not tokenized here: raw images.
  TokenizedDynamics   tokenized examples (see data/records.py): src_codes, tgt_codes (int32 [n]),
                      action, action_type, example_id. Optional extras (VQGAN features, scores) only
                      go through data/records.py, which stores any numpy field.

Without TensorFlow, TFDS can build and read `file_format='array_record'` as long as no feature
needs TF to encode: images are therefore handed over already encoded (original bytes of 8-bit RGB
PNG/JPEG files, else PNG from `load_rgb`), which the Image feature stores as they are (encoding an
array would import TF). Text features come back as `bytes` from the numpy data source. TFDS orders
examples by a hash of their key: deterministic, not file order.

    builder = AuroraTriplets(aurora_root='/data/AURORA', data_dir='/data/tfds')
    builder.download_and_prepare()
    print(builder.reports['train'].summary())
    source = tfds.data_source('aurora_triplets', data_dir='/data/tfds', split='train')
"""

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow_datasets as tfds

from data import aurora, images, records
from data.errors import UserError

PathLike = Union[str, os.PathLike]

# AURORA file names per TFDS split.
_AURORA_SPLITS = {'train': 'train', 'validation': 'valid'}


class AuroraTriplets(tfds.core.GeneratorBasedBuilder):
  """AURORA (source image, instruction, target image) triplets as encoded images."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version: train and (where shipped) validation splits.'}

  def __init__(self, *, aurora_root: Optional[PathLike] = None,
               tasks: Optional[Sequence[str]] = None,
               max_instruction_chars: Optional[int] = records.MAX_ACTION_CHARS, **kwargs):
    """`aurora_root` (a McGill-NLP/AURORA checkout) is needed to build, not to read."""
    self._aurora_root = None if aurora_root is None else os.fspath(aurora_root)
    self._tasks = None if tasks is None else list(tasks)
    self._max_instruction_chars = max_instruction_chars
    # Split name -> AuroraReport of the last build (unreadable images counted in its `skipped`).
    self.reports: dict[str, aurora.AuroraReport] = {}
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='AURORA action- and reasoning-centric image edits (McGill-NLP/AURORA).',
        features=tfds.features.FeaturesDict({
            'src_image': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            'tgt_image': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            'instruction': tfds.features.Text(),
            'task': tfds.features.Text(),
            'example_id': tfds.features.Text(),
        }),
        homepage='https://github.com/McGill-NLP/AURORA',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the checkout is local
    if self._aurora_root is None:
      raise UserError('AuroraTriplets needs aurora_root to build; pass the path of a '
                      'McGill-NLP/AURORA checkout.')
    splits = {}
    for split, file_stem in _AURORA_SPLITS.items():
      tasks = self._tasks if self._tasks is not None else aurora.aurora_tasks(
          self._aurora_root, file_stem)
      tasks = [t for t in tasks if os.path.isfile(
          os.path.join(self._aurora_root, 'data', t, f'{file_stem}.json'))]
      if tasks:
        splits[split] = self._generate_examples(split, file_stem, tasks)
    if 'train' not in splits:
      raise UserError(f'No data/<task>/train.json under {self._aurora_root}; point aurora_root at '
                      'a McGill-NLP/AURORA checkout with the training data.')
    return splits

  def _generate_examples(self, split: str, file_stem: str, tasks: Sequence[str]):
    items, report = aurora.load_aurora_train(self._aurora_root, tasks, file_stem,
                                             self._max_instruction_chars)
    self.reports[split] = report
    for item in items:
      try:
        src, _ = images.read_rgb_bytes(item.input_path)
        tgt, _ = images.read_rgb_bytes(item.output_path)
      except UserError:
        report.skip(item.index, item.task, 'image file unreadable')
        continue
      key = f'{item.task}/{item.index}'
      yield key, {'src_image': src, 'tgt_image': tgt, 'instruction': item.instruction,
                  'task': item.task, 'example_id': key}


ExampleSource = Union[Iterable[Mapping[str, Any]], Callable[[], Iterable[Mapping[str, Any]]]]


class TokenizedDynamics(tfds.core.GeneratorBasedBuilder):
  """Tokenized dynamics examples: VQGAN code ids of both frames and the action text."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, examples: Optional[Mapping[str, ExampleSource]] = None,
               max_action_chars: Optional[int] = records.MAX_ACTION_CHARS, **kwargs):
    """`examples` maps split name -> examples (or a function returning them); needed to build only.

    Each example is a dict with at least the `records.TRIPLET_SCHEMA` required fields; examples that
    do not fit are skipped and counted in `self.reports[split]`.
    """
    self._examples = examples
    self._max_action_chars = max_action_chars
    self.reports: dict[str, records.WriteReport] = {}
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Frames as VQGAN code ids with the action between them (FDP/IDP training).',
        features=tfds.features.FeaturesDict({
            'src_codes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'tgt_codes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'action': tfds.features.Text(),
            'action_type': tfds.features.Text(),
            'example_id': tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._examples:
      raise UserError('TokenizedDynamics needs examples to build; pass examples={split: ...}.')
    return {split: self._generate_examples(split, source)
            for split, source in self._examples.items()}

  def _generate_examples(self, split: str, source: ExampleSource):
    report = records.WriteReport(paths=[], counts=[0])
    self.reports[split] = report
    examples = source() if callable(source) else source
    seen = set()
    for position, example in enumerate(examples):
      reason = records.check_example(example, records.TRIPLET_SCHEMA, self._max_action_chars)
      key = str(example.get('example_id', position)) if isinstance(example, Mapping) else str(
          position)
      if reason is None and key in seen:
        reason = 'duplicate example_id'
      if reason is not None:
        report.skipped[reason] += 1
        report.skipped_ids.append((key, reason))
        continue
      seen.add(key)
      report.counts[0] += 1
      yield key, {
          'src_codes': np.asarray(example['src_codes'], np.int32),
          'tgt_codes': np.asarray(example['tgt_codes'], np.int32),
          'action': records.clean_action(example['action'], None)[0],
          'action_type': example['action_type'],
          'example_id': key,
      }


def build(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.GeneratorBasedBuilder:
  """Builds a data set (ArrayRecord, no TF, nothing downloaded) and returns the builder."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def data_source(builder_dir: PathLike, split: str):
  """Random-access source over a built data set's split, from its directory alone (no class needed).

  `builder_dir` is `<data_dir>/<name>/<version>`, e.g. `/data/tfds/aurora_triplets/1.0.0`.
  """
  builder_dir = os.fspath(builder_dir)
  if not os.path.isfile(os.path.join(builder_dir, 'dataset_info.json')):
    raise UserError(f'{builder_dir} is not a built TFDS data set (no dataset_info.json); pass '
                    '<data_dir>/<name>/<version>.')
  builder = tfds.builder_from_directory(builder_dir)
  if split not in builder.info.splits:
    raise UserError(f'TFDS data set {builder_dir} has no split {split!r}; it has '
                    f'{", ".join(builder.info.splits)}.')
  return builder.as_data_source(split=split)
