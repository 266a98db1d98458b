"""The embedded action world's shared stages: build the world, train its image tokenizer, tokenize,
pretrain the stand-in for a pretrained unified VLM.

  build_data       writes the splits (data.action_world.write_world) to WORKDIR/build_data:
                   <split>.jsonl, world_config.json, tokenizer/
  train_tokenizer  trains the world's small VQGAN (training/vq_training.py) on random scenes,
                   measures
                   decode(encode(frame)) -> parse_frame on held-out frames, writes
                   WORKDIR/train_tokenizer/params/ (load with vqgan_files.load_vqgan),
                   metrics.json and metrics.jsonl, and fails with a UserError when the held-out
                   frame accuracy is below `vq_train.min_accuracy`
  tokenize         encodes every frame of every split once and writes record sets
                   WORKDIR/tokenize/<split> (data.records) with, per example:
                     src_codes, tgt_codes       [25] int32 code ids (row-major cells)
                     recognition_weights        [25] float32 (sequences.recognition_weights of the
                                                pre-quantisation features)
                     action, action_type, example_id, split, canonical
                     src_scene, tgt_scene       the scenes as JSON text (exact scoring)
                   unlabelled pairs: action '' and action_type '' (the action is withheld), the
                   hidden one under hidden_action / hidden_canonical / hidden_action_type, plus
                   episode and step; written with UNLABELLED_SCHEMA (the triplet schema without
                   the non-empty action rule). Also tokenize/metrics.json: codebook usage and the
                   round-trip parse accuracy of every split's frames.
  augment          (data.augment_copies > 0) writes WORKDIR/augment/labelled: that many augmented
                   copies of each labelled triplet (data.action_world.augment: mirrored,
                   shifted, recoloured; the first data.train_examples when set), tokenized as
                   `tokenize` does; train_dynamics reads them through data.extra_train
                   (AUGMENTED), and metrics.json says how many were made
  pretrain         trains the unified model from random init on action-free documents over fresh
                   scenes (captions, text-to-image, multi-image captions, repeated images,
                   differences between two photos of a place; no action, no split's scene),
                   writes WORKDIR/pretrain/params (what train_dynamics starts from) and
                   metrics.json, with the held-out teacher-forced accuracy of every document kind
                   (held_out_reading); config.pretrain sets it (configs/action_world.py)
Paths in the config may hold '{workdir}' (jax_vlm.input.datasets.resolve_paths).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from data import records
from data.action_world import (
  SPLITS,
  Scene,
  WorldConfig,
  augment,
  load_split,
  load_world_config,
  parse_frame,
  pretrain,
  render,
  write_world,
)
from jax_vlm.core import registry
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import StageInterrupted, UserError, require
from jax_vlm.core.files import write_json
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.input.sources import DocumentSource
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens.image_processing import postprocess
from jax_vlm.tokens.sequences import recognition_weights
from jax_vlm.tokens.vocab import UnifiedVocab
from jax_vlm.training import checkpointing
from jax_vlm.training import vq_training as vt
from jax_vlm.training.trainer import Trainer
from jax_vlm.weights import vqgan_files

# The triplet schema minus 'action' (whose rule rejects empty text): unlabelled pairs have none.
_UNLABELLED_DROP = ('action',)


def unlabelled_schema() -> dict:
  return {k: v for k, v in records.TRIPLET_SCHEMA.items() if k not in _UNLABELLED_DROP}


def _workdir(stage_dir: str) -> str:
  return os.path.dirname(os.path.abspath(stage_dir))


def _world_dir(config: ml_collections.ConfigDict) -> str:
  return config.world.dir


def world_config_of(config: ml_collections.ConfigDict):
  """The WorldConfig of the run: the built world's (build_data) if it exists, else the preset."""
  world_dir = _world_dir(config)
  if world_dir and os.path.isfile(os.path.join(world_dir, 'world_config.json')):
    return load_world_config(world_dir)
  return _preset_world(config)


def _preset_world(config: ml_collections.ConfigDict):
  """The WorldConfig that config.world (size, phrasings) describes."""
  return WorldConfig.preset(config.world.size,
                            phrasings=str(config.world.get('phrasings', 'varied')))


# ------------------------------------------------------------------------------------------------
# build_data


@registry.register('stage', 'build_data')
def build_data(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Writes the world's splits, config and text tokenizer into `stage_dir`."""
  world = _preset_world(config)
  result = write_world(stage_dir, world, int(config.world.seed), size=config.world.size)
  counts = {k: v['examples'] for k, v in result['stats'].items()}
  logging.info('build_data: %s examples in %.1f s -> %s', counts, result['total_seconds'],
               stage_dir)


# ------------------------------------------------------------------------------------------------
# train_tokenizer


def _vq_config(config):
  return VQGANConfig.from_config(config.vqgan)


@registry.register('stage', 'train_tokenizer')
def train_tokenizer(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Trains the world's VQGAN, checks it on held-out frames, writes `stage_dir/params`."""
  config = resolve_paths(config, _workdir(stage_dir))
  world = world_config_of(config)
  vq_config = _vq_config(config)
  t = config.vq_train
  h, w, _ = world.frame_shape
  require(h == w == vq_config.resolution and vq_config.downsample_factor == world.cell_size,
          f'vqgan resolution {vq_config.resolution} / downsampling {vq_config.downsample_factor} '
          f'does not fit the world frames {world.frame_shape} with {world.cell_size} px cells; '
          'set vqgan.resolution to the frame size and one downsampling level per factor 2.')
  settings = vt.check_vq_settings(t)
  start = time.perf_counter()
  result = vt.train_vqgan(
      vq_config, world, num_steps=int(t.num_steps), batch_size=int(t.batch_size),
      learning_rate=float(t.learning_rate), settings=settings, seed=int(config.seed),
      warmup_steps=int(t.warmup_steps), max_objects=int(t.max_objects) or None,
      eval_every=int(t.eval_every), val_frames=int(t.val_frames),
      target_accuracy=float(t.target_accuracy), log_dir=stage_dir,
      progress_bar=bool(t.progress_bar), log_every=int(t.log_every))
  train_s = time.perf_counter() - start
  # Held out: scenes from the world's own distribution, a seed stream training never draws from.
  frames, scenes = vt.random_frames(world, int(t.test_frames),
                                    np.random.default_rng([int(config.seed), 3]))
  ev = vt.evaluate_frames(result.params, frames, scenes, world, VQGAN(vq_config))
  usage = np.bincount(ev['codes'].reshape(-1), minlength=vq_config.num_embeddings)
  metrics = dict(
      heldout_frame_accuracy=ev['frame_accuracy'], heldout_cell_accuracy=ev['cell_accuracy'],
      heldout_frames=ev['num_frames'], min_accuracy=float(t.min_accuracy),
      steps=result.steps, train_seconds=round(train_s, 1),
      total_seconds=round(time.perf_counter() - start, 1),
      val_frame_accuracy=result.val_accuracy, codes_used=int((usage > 0).sum()),
      codebook_size=vq_config.num_embeddings, devices=str(jax.devices()[0].platform))
  write_json(os.path.join(stage_dir, 'metrics.json'), metrics)
  logging.info('train_tokenizer: %s', metrics)
  print(f'train_tokenizer: held-out frame accuracy {ev["frame_accuracy"]:.4f} '
        f'(cells {ev["cell_accuracy"]:.5f}) on {ev["num_frames"]} frames after {result.steps} '
        f'steps in {train_s:.0f} s; {metrics["codes_used"]}/{vq_config.num_embeddings} codes used',
        flush=True)
  below_bar = ev['frame_accuracy'] < float(t.min_accuracy)
  # Kept even when below the bar (for inspection); the stage is only marked done above it.
  vqgan_files.save_vqgan(os.path.join(stage_dir, 'params_below_bar' if below_bar else 'params'),
                result.params, vq_config, extra=dict(heldout_frame_accuracy=ev['frame_accuracy']))
  if below_bar:
    raise UserError(
        f'The world tokenizer reads back only {ev["frame_accuracy"]:.2%} of held-out frames '
        f'exactly (vq_train.min_accuracy={t.min_accuracy}); train longer (raise '
        f'vq_train.num_steps, now {t.num_steps}) and rerun the train_tokenizer stage.')


# ------------------------------------------------------------------------------------------------
# tokenize


def _examples_for_split(name: str, raw: list[dict], codes: np.ndarray, features: np.ndarray
                        ) -> list[dict]:
  """Record dicts of one split; codes `[2n, h', w']`, features `[2n, h', w', c]` (src, tgt
  interleaved)."""
  out = []
  for i, ex in enumerate(raw):
    src_codes = codes[2 * i].reshape(-1).astype(np.int32)
    tgt_codes = codes[2 * i + 1].reshape(-1).astype(np.int32)
    record = dict(
        src_codes=src_codes, tgt_codes=tgt_codes,
        recognition_weights=recognition_weights(features[2 * i], features[2 * i + 1]),
        example_id=ex['id'], split=name, source='action_world',
        src_scene=json.dumps(ex['src'], separators=(',', ':')),
        tgt_scene=json.dumps(ex['tgt'], separators=(',', ':')))
    if 'hidden' in ex:
      record.update(action='', action_type='', canonical='',
                    hidden_action=ex['hidden']['action'],
                    hidden_canonical=ex['hidden']['canonical'],
                    hidden_action_type=ex['hidden']['action_type'],
                    episode=int(ex['episode']), step=int(ex['step']))
    else:
      record.update(action=ex['action'], action_type=ex['action_type'],
                    canonical=ex['canonical'])
    out.append(record)
  return out


def encode_frames(params, vq_config, frames: np.ndarray, batch_size: int,
                  fn=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 frames `[n, h, w, 3]` -> (codes `[n, h', w']` int32, features `[n, h', w', c]` f32,
  decoded frames `[n, h, w, 3]` uint8), in batches of one compiled shape."""
  fn = fn or vt.make_encode_decode_fn(VQGAN(vq_config))
  codes, feats, recon = [], [], []
  n = len(frames)
  for start in range(0, n, batch_size):
    chunk = frames[start:start + batch_size]
    m = len(chunk)
    chunk = pad_rows(chunk, batch_size)
    c, f, r = jax.device_get(fn(params, chunk))
    codes.append(np.asarray(c)[:m])
    feats.append(np.asarray(f)[:m])
    recon.append(postprocess(r)[:m])
  return np.concatenate(codes), np.concatenate(feats), np.concatenate(recon)


@registry.register('stage', 'tokenize')
def tokenize(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Encodes every split's frames once and writes `stage_dir/<split>` record sets."""
  config = resolve_paths(config, _workdir(stage_dir))
  world_dir = _world_dir(config)
  world = load_world_config(world_dir)
  vq_config, params = vqgan_files.load_vqgan(config.checkpoint.vqgan_dir)
  fn = vt.make_encode_decode_fn(VQGAN(vq_config))
  batch_size = int(config.tokenize.batch_size)
  usage = np.zeros(vq_config.num_embeddings, np.int64)
  metrics = dict(splits={})
  start = time.perf_counter()
  for name in SPLITS:
    raw = load_split(world_dir, name)
    # Each distinct scene is rendered, encoded and checked once (consecutive pairs of a rollout
    # share a frame), then spread back over the (src, tgt) slots.
    keys = [json.dumps(ex[k], sort_keys=True) for ex in raw for k in ('src', 'tgt')]
    index: dict[str, int] = {}  # distinct scene -> its position, in order of first appearance
    slot = np.array([index.setdefault(key, len(index)) for key in keys], np.int64)
    scenes = [Scene.from_json(json.loads(key)) for key in index]
    frames = np.stack([render(s, world) for s in scenes]) if scenes else np.zeros(
        (0, *world.frame_shape), np.uint8)
    codes, features, recon = encode_frames(params, vq_config, frames, batch_size, fn)
    # The round trip of the data's own frames: what the exact scores will rest on.
    exact = np.array([parse_frame(r, world) == s for r, s in zip(recon, scenes)], bool)
    codes, features, exact = codes[slot], features[slot], exact[slot]
    usage += np.bincount(codes.reshape(-1), minlength=vq_config.num_embeddings)
    exact = int(exact.sum())
    examples = _examples_for_split(name, raw, codes, features)
    schema = unlabelled_schema() if name == 'unlabelled' else records.TRIPLET_SCHEMA
    report = records.write_records(os.path.join(stage_dir, name), examples,
                                   num_shards=int(config.tokenize.num_shards), schema=schema)
    require(not report.skipped, f'tokenize skipped examples of split {name} '
            f'({dict(report.skipped)}); rebuild the world with build_data.')
    metrics['splits'][name] = dict(examples=report.num_written, distinct_frames=len(scenes),
                                   frame_roundtrip_accuracy=exact / max(len(keys), 1))
    logging.info('tokenize: %s: %d examples (%d distinct frames), round trip %.4f', name,
                 report.num_written, len(scenes), exact / max(len(keys), 1))
  used = usage > 0
  metrics.update(codes_used=int(used.sum()), codebook_size=vq_config.num_embeddings,
                 code_counts=usage.tolist(), seconds=round(time.perf_counter() - start, 1))
  p = usage[used] / usage.sum()
  metrics['code_perplexity'] = float(np.exp(-(p * np.log(p)).sum())) if used.any() else 0.0
  write_json(os.path.join(stage_dir, 'metrics.json'), metrics)
  print(f'tokenize: {sum(s["examples"] for s in metrics["splits"].values())} examples, '
        f'{metrics["codes_used"]}/{vq_config.num_embeddings} codes used (perplexity '
        f'{metrics["code_perplexity"]:.1f}) in {metrics["seconds"]:.0f} s -> {stage_dir}',
        flush=True)


# ------------------------------------------------------------------------------------------------
# augment

AUGMENTED = '{workdir}/augment/labelled'  # the augment stage's record set (data.extra_train)


def augment_settings(config: ml_collections.ConfigDict) -> tuple[int, tuple[str, ...]]:
  """(data.augment_copies, data.augment_transforms), checked: UserError on a negative count or
  an unknown transform."""
  data = config.get('data', None) or {}
  copies = int(data.get('augment_copies', 0) or 0)
  require(copies >= 0, f'data.augment_copies={copies} must be >= 0; set 0 for no augmentation.')
  transforms = tuple(data.get('augment_transforms', augment.TRANSFORMS))
  unknown = sorted(set(transforms) - set(augment.TRANSFORMS))
  require(transforms and not unknown, f'data.augment_transforms={transforms} must name some of '
          f'{augment.TRANSFORMS}; pick from those.')
  return copies, transforms


def with_augmentation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """With data.augment_copies > 0: the config with the augment stage right before
  train_dynamics in config.stages (where that is listed) and its records added to train_dynamics'
  data.extra_train (its stage_overrides; a value the config's own overrides give wins). The
  config as it is otherwise. train.py and the reproduction both build their stages through it."""
  copies, _ = augment_settings(config)
  if not copies:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  names = list(out.get('stages', ()))
  if 'train_dynamics' in names and 'augment' not in names:
    names.insert(names.index('train_dynamics'), 'augment')
    out.stages = tuple(names)
  given = out.get('stage_overrides', None)
  given = given.to_dict() if given else {}
  dyn = dict(given.get('train_dynamics', ()))
  dyn.setdefault('data.extra_train', (AUGMENTED, *tuple(out.data.get('extra_train', ()))))
  given['train_dynamics'] = tuple(sorted(dyn.items()))
  out.stage_overrides = ml_collections.ConfigDict(given)
  return out


@registry.register('stage', 'augment')
def augment_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Writes `stage_dir/labelled`: data.augment_copies augmented copies of each labelled triplet
  (of the first data.train_examples, when set), encoded like the tokenize stage's."""
  config = resolve_paths(config, _workdir(stage_dir))
  copies, transforms = augment_settings(config)
  require(copies > 0, f'data.augment_copies={copies}: the augment stage needs a positive number '
          'of copies per labelled triplet; set e.g. --config.data.augment_copies=10.')
  world_dir = _world_dir(config)
  world = load_world_config(world_dir)
  labelled = load_split(world_dir, 'labelled')
  limit = int(config.data.get('train_examples', 0) or 0)
  if limit:
    labelled = labelled[:limit]
  start = time.perf_counter()
  made = augment.augment_triplets(labelled, copies, world, seed=int(config.seed),
                                  transforms=transforms)
  vq_config, params = vqgan_files.load_vqgan(config.checkpoint.vqgan_dir)
  frames = np.stack([render(Scene.from_json(ex[k]), world) for ex in made for k in ('src', 'tgt')])
  codes, features, _ = encode_frames(params, vq_config, frames, int(config.tokenize.batch_size))
  examples = _examples_for_split('labelled_augmented', made, codes, features)
  report = records.write_records(os.path.join(stage_dir, 'labelled'), examples,
                                 num_shards=int(config.tokenize.num_shards))
  require(not report.skipped, f'augment skipped examples ({dict(report.skipped)}); rebuild the '
          'world with build_data.')
  types = {t: sum(ex['action_type'] == t for ex in made) for t in sorted({ex['action_type']
                                                                          for ex in made})}
  write_json(os.path.join(stage_dir, 'metrics.json'), dict(
      labelled=len(labelled), copies=copies, transforms=list(transforms), examples=len(made),
      action_types=types, seconds=round(time.perf_counter() - start, 1)))
  print(f'augment: {len(made)} augmented triplets from {len(labelled)} labelled '
        f'({"/".join(transforms)}) -> {stage_dir}', flush=True)


# ------------------------------------------------------------------------------------------------
# pretrain


# Pretraining checkpoints this often, so a stopped pretrain stage resumes instead of starting over.
PRETRAIN_CHECKPOINT_EVERY = 400


def pretraining_config(config: ml_collections.ConfigDict, num_steps: int = 0,
                       init_from: str = '') -> ml_collections.ConfigDict:
  """The config the pretrain stage trains with: config.pretrain's steps, rates and row length
  over the model and mesh of the run (both objectives on; no init_from: it starts from random).
  Text-output documents (captions) are the IDP objective, image-output ones the FDP objective;
  `pretrain.text_loss_weight` weighs the first against the second. `num_steps` / `init_from`:
  the continued phase's (pretrain.continue_steps, from the first phase's params)."""
  p = config.pretrain
  steps = int(num_steps or p.num_steps)
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.num_steps = steps
  out.train.learning_rate = float(p.learning_rate)
  out.train.warmup_steps = int(p.warmup_steps)
  out.train.global_batch_size = int(p.batch_size)
  out.train.checkpoint_every = max(1, min(steps, PRETRAIN_CHECKPOINT_EVERY))
  out.objectives.idp_loss_weight = float(p.get('text_loss_weight', 1.0))
  out.objectives.fdp_loss_weight = 1.0
  out.train.init_from = init_from
  out.data.max_seq_len = int(p.max_seq_len)
  out.data.length_buckets = ()  # documents are padded to pretrain.max_seq_len (DocumentSource)
  out.data.augment_copies = 0  # documents are drawn fresh; labelled triplets are not read
  out.data.augment_transforms = augment.TRANSFORMS
  return out


def _document_kinds(given, key: str) -> tuple[str, ...]:
  kinds = tuple(given)
  require(len(kinds) > 0 and all(k in pretrain.DOCUMENT_KINDS for k in kinds),
          f'{key}={kinds} must name some of {pretrain.DOCUMENT_KINDS} (a kind named twice is '
          'drawn twice as often).')
  return kinds


@registry.register('stage', 'pretrain')
def pretrain_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """The world's stand-in for a pretrained unified VLM: trains the model from random init on
  action-free documents (data/action_world/pretrain.py) over fresh scenes, encoded once with the
  world's VQGAN, and writes `stage_dir/params` for train_dynamics (train.init_from='pretrain').

  pretrain.continue_steps > 0 adds a second phase, like a VLM's later pretraining stage: from the
  first phase's params (kept in `stage_dir/phase1_params`), that many steps on
  pretrain.continue_documents with a restarted warmup and decay, in `stage_dir/continued`; its
  params become `stage_dir/params`. pretrain.continue_cycles > 1 runs that phase again from its
  own params (a warm restart of its schedule, fresh documents), in `stage_dir/continued_<cycle>`,
  each cycle's params kept in `stage_dir/cycle<cycle>_params` for the next. A finished phase or
  cycle is restored from its checkpoint, not trained again.

  pretrain.restarts > 0: the first phase is a stand-in for a VLM that reads objects in images, so
  its held-out reading is checked (`weak_reading`); a first phase that left some document kind
  below pretrain.restart_below of held-out documents entirely right is trained again from another
  initialisation and document order (seed + RESTART_SEED_STRIDE x n), in `stage_dir/restart_<n>`,
  up to that many times; the later phases then go under that folder. Which side of the plateau
  a build lands on can turn on float rounding alone (docs/reproduction.md, session 24). Every
  attempt's reading goes into metrics.json. pretrain.check_step > 0: an attempt with restarts
  left is also read after that step (Trainer.run(until=...): it pauses there and resumes exactly),
  and one with no document kind at pretrain.check_below of its documents entirely right there is
  stopped and restarted at once, without training the rest of its steps."""
  config = resolve_paths(config, _workdir(stage_dir))
  world = world_config_of(config)
  p = config.pretrain
  kinds = _document_kinds(p.documents, 'pretrain.documents')
  continue_steps = int(p.get('continue_steps', 0))
  require(continue_steps >= 0, f'pretrain.continue_steps={continue_steps} must be 0 (no second '
          'phase) or a positive number of steps.')
  later = (_document_kinds(p.get('continue_documents', ()), 'pretrain.continue_documents')
           if continue_steps else ())
  cycles = p.get('continue_cycles', 1)
  require(isinstance(cycles, int) and cycles >= 1, f'pretrain.continue_cycles={cycles!r} must be a '
          'whole number of at least 1 (how many times the second phase runs, each from the last).')
  restarts, restart_below = p.get('restarts', 0), p.get('restart_below', 0.0)
  require(isinstance(restarts, int) and restarts >= 0, f'pretrain.restarts={restarts!r} must be a '
          'whole number of at least 0 (how often a first phase that reads poorly is retrained).')
  require(isinstance(restart_below, (int, float)) and 0 <= restart_below <= 1,
          f'pretrain.restart_below={restart_below!r} must be a share from 0 to 1 (of held-out '
          'documents entirely right).')
  check_step, check_below = p.get('check_step', 0), p.get('check_below', 0.0)
  require(isinstance(check_step, int) and 0 <= check_step,
          f'pretrain.check_step={check_step!r} must be a whole number of at least 0 (the step the '
          'first phase is read at before it finishes; 0 = only when it finishes).')
  require(isinstance(check_below, (int, float)) and 0 <= check_below <= 1,
          f'pretrain.check_below={check_below!r} must be a share from 0 to 1 (of held-out '
          'documents entirely right at pretrain.check_step).')
  region_changed = p.get('region_changed_cells', 1)
  require(isinstance(region_changed, int) and 1 <= region_changed <= pretrain.REGION_WIDTH,
          f'pretrain.region_changed_cells={region_changed!r} must be a whole number from 1 to '
          f'{pretrain.REGION_WIDTH} (how many cells of a region strip must change).')
  start = time.perf_counter()
  vq_config, vq_params = vqgan_files.load_vqgan(config.checkpoint.vqgan_dir)
  vocab = UnifiedVocab.from_config(config.vocab)

  def encode(scenes):  # scenes -> their image codes [len(scenes), cells]
    frames = np.stack([render(s, world) for s in scenes])
    codes, _, _ = encode_frames(vq_params, vq_config, frames, int(config.tokenize.batch_size))
    return codes.reshape(len(scenes), -1)

  pools, encode_s = {}, [0.0]

  def pool(paired):  # the fresh scenes documents draw from, their codes and captions
    if paired not in pools:
      t = time.perf_counter()
      scenes = pretrain.pretraining_scenes(int(p.num_scenes), int(config.seed), world,
                                           paired=paired)
      pools[paired] = scenes, encode(scenes), [pretrain.caption(s) for s in scenes]
      encode_s[0] += time.perf_counter() - t
    return pools[paired]

  def train(phase_kinds, train_config, workdir, stream, check=None):
    """Trains a phase; a first phase with `check` is read at check_step (check(trainer) -> what
    reads weakly or '', and the reading): a weak one stops it there, the result's 'weak' and
    'reading' say why."""
    scenes, codes, captions = pool('difference' in phase_kinds)
    source = DocumentSource(
        scenes, codes, captions, vocab, kinds=phase_kinds, seq_len=int(p.max_seq_len),
        seed=int(train_config.seed), process_index=jax.process_index(),
        local_batch_size=int(p.batch_size) // jax.process_count(), stream=stream, world=world,
        region_changed=region_changed)
    trainer = Trainer(train_config, workdir, batch_source=source)
    result = trainer.run(until=check_step if check else None)
    if result['status'] == 'paused':
      # Only a phase that stops at check_step itself is checked: one restored past it passed.
      weak, reading = check(trainer) if result['step'] == check_step else ('', None)
      if weak:
        return trainer, dict(result, weak=weak, reading=reading)
      result = trainer.run()
    if result['status'] != 'done':
      raise StageInterrupted(f'pretraining stopped at step {result["step"]} in {workdir}')
    return trainer, result

  held_out = pretrain.pretraining_scenes(int(p.eval_scenes), int(config.seed), world,
                                         stream=pretrain.HELD_OUT_STREAM,
                                         paired='difference' in kinds + later)

  held_out_codes = []  # encoded once, on first use

  def reading_of(trainer, measured, params=None):
    if not held_out_codes:
      held_out_codes.append(encode(held_out))
    params = trainer.final_params if params is None else params
    return document_accuracy(trainer.model, params, held_out, held_out_codes[0],
                             vocab, measured, seq_len=int(p.max_seq_len),
                             batch_size=int(p.batch_size), seed=int(config.seed), world=world,
                             region_changed=region_changed)

  first_kinds = tuple(dict.fromkeys(kinds))
  num_steps = int(p.num_steps)
  # The held-out reading each attempt was judged on and the step it was read at; and every
  # reading at check_step, weak or not.
  first_phase, checked_at, at_check = [], [], []

  def check(trainer):  # weak only when no kind reaches check_below: some kinds rise late
    reading = reading_of(trainer, first_kinds, trainer.final_state.params)
    at_check.append(reading)
    best = max(v['document_accuracy'] for v in reading.values())
    return (weak_reading(reading, check_below) if best < check_below else ''), reading

  def first_phase_attempt(train_config, workdir, last):
    # A first phase with restarts left is read at check_step too, and stopped there if weak.
    checking = restarts and not last and 0 < check_step < num_steps
    return train(kinds, train_config, workdir, 0, check=check if checking else None)

  trainer, result = first_phase_attempt(pretraining_config(config), stage_dir, restarts == 0)
  # The later phases live beside the first phase they start from: a restarted first phase gets
  # its own, and never resumes the ones trained from the phase it replaced.
  phase_root = stage_dir
  for attempt in range(1, restarts + 2 if restarts else 1):
    early = bool(result.get('weak'))
    first_phase.append(result['reading'] if early else reading_of(trainer, first_kinds))
    checked_at.append(check_step if early else num_steps)
    weak, below, at = ((result['weak'], check_below, f' at step {check_step} of {num_steps}')
                       if early else
                       (weak_reading(first_phase[-1], restart_below), restart_below, ''))
    if not weak:
      break
    if attempt > restarts:
      print(f'pretrain: WARNING the first phase still gets {weak} of held-out documents '
            f'entirely right after {restarts} restarts; the base goes on from the last one, and '
            'what is trained from it will read scenes poorly', flush=True)
      break
    phase_root = os.path.join(stage_dir, f'restart_{attempt}')
    key = 'pretrain.check_below' if at else 'pretrain.restart_below'
    print(f'pretrain: the first phase got {weak} of held-out documents entirely right{at}, below '
          f'{key}={below}: it stalled on a plateau, so it is trained again from another '
          f'initialisation ({attempt} of {restarts}) in {phase_root}', flush=True)
    again = pretraining_config(config)
    again.seed = int(config.seed) + RESTART_SEED_STRIDE * attempt
    trainer, result = first_phase_attempt(again, phase_root, attempt == restarts)
  if continue_steps:
    previous = os.path.join(phase_root, 'phase1_params')
    checkpointing.save_params(previous, trainer.final_params, trainer.model_config)
    for cycle in range(1, cycles + 1):
      if cycle > 1:  # a warm restart from the last cycle's params, on other documents
        previous = os.path.join(phase_root, f'cycle{cycle - 1}_params')
        checkpointing.save_params(previous, trainer.final_params, trainer.model_config)
      workdir = os.path.join(phase_root, 'continued' if cycle == 1 else f'continued_{cycle}')
      trainer, result = train(later, pretraining_config(config, continue_steps, init_from=previous),
                              workdir, cycle)
  checkpointing.save_params(os.path.join(stage_dir, 'params'), trainer.final_params,
                            trainer.model_config)
  # How well the base reads and writes scenes it never saw: a pretrained VLM that cannot caption
  # one frame cannot learn to describe a change between two (docs/reproduction.md).
  measured = tuple(dict.fromkeys(kinds + later))  # each kind once, in order
  reading = reading_of(trainer, measured)
  scenes = pool('difference' in kinds)[0]
  write_json(os.path.join(stage_dir, 'metrics.json'), dict(
      scenes=len(scenes), documents=list(kinds), steps=int(p.num_steps),
      continue_documents=list(later), continue_steps=continue_steps,
      continue_cycles=cycles if continue_steps else 0,
      region_changed_cells=region_changed,
      encode_seconds=round(encode_s[0], 1), seconds=round(time.perf_counter() - start, 1),
      held_out_reading=reading,
      first_phase_restarts=max(len(first_phase) - 1, 0), first_phase_readings=first_phase,
      first_phase_checked_at=checked_at, first_phase_check_readings=at_check,
      final_metrics={k: float(v) for k, v in (result.get('metrics') or {}).items()}))
  read = ', '.join(f'{k} {v["token_accuracy"]:.3f}/{v["document_accuracy"]:.3f}'
                   for k, v in reading.items())
  more = (f' + {continue_steps}{f" x{cycles}" if cycles > 1 else ""} on '
          f'{", ".join(dict.fromkeys(later))}' if continue_steps else '')
  print(f'pretrain: {p.num_steps} steps on {len(scenes)} fresh scenes ({", ".join(kinds)}){more} '
        f'in {time.perf_counter() - start:.0f} s -> {stage_dir}/params; held-out teacher-forced '
        f'token/document accuracy: {read}', flush=True)


# How far apart a retrained first phase's seed is from the run's (pretrain.restarts): far from the
# seeds a user lists, so a restarted base of seed 0 does not repeat seed 1's.
RESTART_SEED_STRIDE = 100_003


def weak_reading(reading: dict[str, dict[str, float]], below: float) -> str:
  """The document kinds of a held-out `reading` (document_accuracy) with fewer than `below` of
  their documents entirely right, as 'caption 0.000, text_to_image 0.000'; '' if none."""
  return ', '.join(f'{k} {v["document_accuracy"]:.3f}' for k, v in reading.items()
                   if v['document_accuracy'] < below)


def document_accuracy(module, params, scenes, scene_codes: np.ndarray, vocab, kinds, *,
                      seq_len: int, batch_size: int, seed: int, num_batches: int = 4,
                      world=pretrain.DEFAULT_CONFIG,
                      region_changed: int = 1) -> dict[str, dict[str, float]]:
  """Teacher-forced accuracy of each document kind over `scenes` (held out from pretraining):
  the share of output tokens whose argmax is right, and of documents with every output token
  right, over num_batches x batch_size documents per kind."""

  @jax.jit
  def hits(params, ids, positions, segments, weights):
    logits = module.apply({'params': params}, ids, positions=positions, segment_ids=segments)
    right = (logits[:, :-1].argmax(-1) == ids[:, 1:]).astype(np.float32)
    w = (weights[:, 1:] > 0).astype(np.float32)
    return (right * w).sum(1), w.sum(1)

  out = {}
  captions = [pretrain.caption(s) for s in scenes]
  for kind in kinds:
    source = DocumentSource(scenes, scene_codes, captions, vocab, kinds=(kind,), seq_len=seq_len,
                            local_batch_size=batch_size, seed=seed, world=world,
                            region_changed=region_changed)
    right, total = [], []
    for _ in range(num_batches):
      b = next(source)
      r, n = hits(params, b['token_ids'], b['positions'], b['segment_ids'], b['loss_weights'])
      right.append(np.asarray(r))
      total.append(np.asarray(n))
    right, total = np.concatenate(right), np.concatenate(total)
    out[kind] = dict(token_accuracy=round(float(right.sum() / max(total.sum(), 1)), 4),
                     document_accuracy=round(float(np.mean(right == total)), 4))
  return out
