"""Training a small VQGAN image tokenizer from scratch (the action world's 40x40 frames).

The loop (I/O, clocks) around the pure step of training/vq_step.py, on the action world's frames:
  `train_vqgan`        the loop: fresh random scenes every step, a tqdm bar, metrics.jsonl, a check
                       on validation frames every `eval_every` steps that stops early at the
                       target accuracy
  `evaluate_frames`    decode(encode(frame)) parsed back to scenes: frame and cell accuracy, codes
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from data.action_world import parse_frame, random_scene, render
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import UserError, require
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens.image_processing import frames_to_pixels, postprocess
from jax_vlm.training.metrics_writer import MetricsWriter
from jax_vlm.training.vq_step import (
  VQTrainSettings,
  encode_decode,
  init_state,
  make_optimizer,
  train_step,
)


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def make_encode_decode_fn(model: VQGAN) -> Callable:
  return jax.jit(lambda p, frames: encode_decode(p, frames_to_pixels(frames), model))


def evaluate_frames(params: Any, frames: np.ndarray, scenes: Sequence[Any], world_config,
                    model: VQGAN, batch_size: int = 256, fn: Callable | None = None) -> dict:
  """Round trip of uint8 frames `[n, h, w, 3]` through the VQGAN, read back by the world parser.

  Returns frame_accuracy (share of frames parsed to exactly their scene), cell_accuracy, codes
  `[n, h', w']` and num_codes_used.
  """
  fn = fn or make_encode_decode_fn(model)
  n = len(frames)
  frame_ok, cell_ok, cells, all_codes = 0, 0, 0, []
  for start, end in _batches(n, batch_size):
    chunk = pad_rows(frames[start:end], batch_size)  # one compiled shape
    codes, _, recon = fn(params, chunk)
    recon = postprocess(recon)[:end - start]
    all_codes.append(np.asarray(codes)[:end - start])
    for frame, scene in zip(recon, scenes[start:end]):
      parsed = parse_frame(frame, world_config)
      frame_ok += parsed == scene
      want, got = scene.cells(), parsed.cells()
      num_cells = world_config.rows * world_config.cols
      wrong = sum(want.get(c) != got.get(c) for c in set(want) | set(got))
      cell_ok += num_cells - wrong
      cells += num_cells
  codes = np.concatenate(all_codes) if all_codes else np.zeros((0,), np.int32)
  return dict(frame_accuracy=frame_ok / max(n, 1), cell_accuracy=cell_ok / max(cells, 1),
              num_frames=n, codes=codes, num_codes_used=int(len(np.unique(codes))))


def random_frames(world_config, n: int, rng: np.random.Generator,
                  max_objects: int | None = None) -> tuple[np.ndarray, list]:
  """n random scenes of the world and their frames `[n, h, w, 3]` uint8.

  `max_objects` above the world's own maximum draws busier scenes (more shapes per frame for the
  same compute); None keeps the world's scene statistics.
  """
  cells = world_config.rows * world_config.cols
  pairs = len(world_config.colors) * len(world_config.shapes)
  hi = world_config.max_objects if max_objects is None else min(max_objects, cells - 1, pairs - 1)
  scenes = []
  for _ in range(n):
    k = int(rng.integers(world_config.min_objects, max(hi, world_config.min_objects) + 1))
    scenes.append(random_scene(rng, world_config, num_objects=k))
  frames = np.stack([render(s, world_config) for s in scenes]) if scenes else np.zeros(
      (0, *world_config.frame_shape), np.uint8)
  return frames, scenes


@dataclasses.dataclass
class VQTrainResult:
  params: Any
  steps: int
  seconds: float
  val_accuracy: float
  history: list


def train_vqgan(vq_config: VQGANConfig, world_config, *, num_steps: int, batch_size: int,
                learning_rate: float, settings: VQTrainSettings, seed: int = 0,
                warmup_steps: int = 20, max_objects: int | None = None, eval_every: int = 0,
                val_frames: int = 256, target_accuracy: float = 1.0, log_dir: str | None = None,
                progress_bar: bool = True, log_every: int = 10) -> VQTrainResult:
  """Trains a VQGAN from scratch on random world frames; see the module docstring.

  Every `eval_every` steps (0: never) the round-trip frame accuracy on `val_frames` validation
  frames is measured; training stops early once it reaches `target_accuracy`.
  """

  require(num_steps > 0 and batch_size > 0,
          f'vq_train.num_steps={num_steps} and vq_train.batch_size={batch_size} must be positive.')
  model = VQGAN(vq_config)
  tx = make_optimizer(learning_rate, num_steps, warmup_steps)
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  state = init_state(model, tx, init_rng, world_config.frame_shape)
  step_fn = jax.jit(lambda s, x, r: train_step(s, frames_to_pixels(x), r, model=model, tx=tx,
                                                settings=settings), donate_argnums=0)
  eval_fn = make_encode_decode_fn(model)
  data_rng = np.random.default_rng([seed, 1])
  val = random_frames(world_config, val_frames, np.random.default_rng([seed, 2])) if (
      eval_every > 0 and val_frames > 0) else None

  writer = MetricsWriter(log_dir or '', num_steps, 0, progress_bar=progress_bar,
                         tensorboard=False, enabled=log_dir is not None)
  history, val_accuracy, start = [], float('nan'), time.perf_counter()
  step = 0
  try:
    for step in range(1, num_steps + 1):
      frames, _ = random_frames(world_config, batch_size, data_rng, max_objects)
      state, metrics = step_fn(state, frames, jax.random.fold_in(rng, step))
      writer.advance()
      last = step == num_steps
      if step % log_every == 0 or step == 1 or last:
        record = {k: float(v) for k, v in jax.device_get(metrics).items()}
        record['seconds'] = time.perf_counter() - start
        if val is not None and (step % eval_every == 0 or last):
          result = evaluate_frames(state.params, val[0], val[1], world_config, model, fn=eval_fn)
          val_accuracy = result['frame_accuracy']
          record.update(val_frame_accuracy=val_accuracy, val_cell_accuracy=result['cell_accuracy'],
                        val_codes_used=result['num_codes_used'])
        history.append(dict(step=step, **record))
        writer.write(step, record)
        if val is not None and 'val_frame_accuracy' in record and val_accuracy >= target_accuracy:
          writer.message(f'validation frame accuracy {val_accuracy:.4f} >= {target_accuracy} at '
                         f'step {step}; stopping early.')
          break
  finally:
    writer.close()
  return VQTrainResult(params=jax.device_get(state.params), steps=step,
                       seconds=time.perf_counter() - start, val_accuracy=val_accuracy,
                       history=history)


def check_vq_settings(cfg) -> VQTrainSettings:
  """VQTrainSettings from a `config.vq_train` section, with its values checked."""
  s = VQTrainSettings(l1_weight=float(cfg.l1_weight), l2_weight=float(cfg.l2_weight),
                      beta=float(cfg.beta), restart_every=int(cfg.restart_every),
                      restart_min_usage=float(cfg.restart_min_usage),
                      ae_warmup_steps=int(cfg.ae_warmup_steps), kmeans_iters=int(cfg.kmeans_iters),
                      foreground_weight=float(cfg.foreground_weight))
  if s.l1_weight < 0 or s.l2_weight < 0 or s.l1_weight + s.l2_weight == 0:
    raise UserError('vq_train.l1_weight and vq_train.l2_weight must be >= 0 and not both 0; set '
                    'at least one reconstruction weight.')
  return s
