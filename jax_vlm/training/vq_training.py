"""Training a small VQGAN image tokenizer from scratch (the action world's 40x40 frames).

Pure part (jit-able functions of arrays):
  `vq_loss`            reconstruction (L1 + L2) + codebook + commitment loss of one batch
  `restart_dead_codes` codebook entries that were (almost) never picked move onto encoder features,
                       drawn in proportion to their squared distance from the nearest code
                       (k-means++ style), so badly served features (rare shapes) get codes first
  `train_step`         one Adam update, the codebook usage count, and a restart every
                       `restart_every` steps; the very first step restarts every code, which
                       initialises the codebook from encoder outputs instead of U(-1/n, 1/n)
The quantizer is the model's own nearest-codebook lookup (no normalisation, no EMA): the restart
only moves codebook rows, so what `encode` does at inference is what training shaped.

Shell part (I/O, clocks):
  `train_vqgan`        the loop: fresh random scenes every step, a tqdm bar, metrics.jsonl, a check
                       on validation frames every `eval_every` steps that stops early at the
                       target accuracy
  `evaluate_frames`    decode(encode(frame)) parsed back to scenes: frame and cell accuracy, codes
  `save_vqgan` / `load_vqgan`  a directory with `vqgan_config.json` and `params.msgpack`
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data.action_world import parse_frame, random_scene, render
from jax_vlm.core.errors import UserError, require
from jax_vlm.models.vqgan import VQGAN, VQGANConfig, vq_losses
from jax_vlm.tokens.image_processing import frames_to_pixels, postprocess
from jax_vlm.training.metrics_writer import MetricsWriter

PARAMS_FILE = 'params.msgpack'
CONFIG_FILE = 'vqgan_config.json'


# ------------------------------------------------------------------------------------------------
# Pure part.


@dataclasses.dataclass(frozen=True)
class VQTrainSettings:
  """Loss weights and codebook-restart settings (hashable: a static argument of the step)."""
  l1_weight: float = 1.0
  l2_weight: float = 1.0
  beta: float = 0.25  # commitment weight
  # Extra reconstruction weight on pixels that are not background: shapes cover a small share of
  # a frame, and without it the decoder first learns to paint everything white.
  foreground_weight: float = 4.0
  # Steps of plain autoencoder training (the decoder reads the features, no codebook) before the
  # codebook is set by k-means on encoder features and quantisation starts.
  ae_warmup_steps: int = 100
  kmeans_iters: int = 10
  restart_every: int = 25  # steps between dead-code restarts once quantising (0: never)
  restart_min_usage: float = 1.0  # codes picked fewer times than this since the last restart


@flax.struct.dataclass
class VQTrainState:
  step: jax.Array  # [] int32
  params: Any
  opt_state: Any
  usage: jax.Array  # [num_embeddings] f32, times each code was picked since the last restart


def make_optimizer(learning_rate: float, num_steps: int, warmup_steps: int = 20,
                   grad_clip_norm: float = 1.0) -> optax.GradientTransformation:
  """Adam with linear warmup and cosine decay to 10% of the peak, gradients clipped."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(warmup_steps, 1), max(num_steps, warmup_steps + 1),
      end_value=0.1 * learning_rate)
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optax.adam(schedule))


def init_state(model: VQGAN, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: Sequence[int]) -> VQTrainState:
  """Fresh params for images of `image_shape` `[h, w, 3]`, optimizer state, zero usage."""
  params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))['params']
  return VQTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      usage=jnp.zeros((model.config.num_embeddings,), jnp.float32))


def _forward(module: VQGAN, images: jax.Array, quantize: jax.Array):
  features = module.quant_conv(module.encoder(images)).astype(jnp.float32)
  quantized, codes = module.quantizer(features)
  straight_through = features + jax.lax.stop_gradient(quantized - features)
  decoder_input = jnp.where(quantize, straight_through, features)
  return module.decode_quantized(decoder_input), features, quantized, codes


def vq_loss(params: Any, images: jax.Array, model: VQGAN, settings: VQTrainSettings,
            quantize: jax.Array | bool = True):
  """images `[b, h, w, 3]` in [-1, 1] -> (loss, aux) with aux = (metrics, features
  `[b, h', w', c]`, codes `[b, h', w']`).

  With `quantize` False the decoder reads the features themselves (autoencoder warm-up) and the
  codebook terms are left out; True is the model's own training pass (`VQGAN.__call__`).
  """
  quantize = jnp.asarray(quantize)
  reconstruction, features, quantized, codes = model.apply({'params': params}, images, quantize,
                                                           method=_forward)
  error = reconstruction - images
  foreground = jnp.any(images < 0.99, axis=-1, keepdims=True)  # white background is 1.0
  weight = 1.0 + settings.foreground_weight * foreground.astype(jnp.float32)
  l1 = jnp.mean(weight * jnp.abs(error))
  l2 = jnp.mean(weight * jnp.square(error))
  codebook_loss, commitment_loss = vq_losses(features, quantized, settings.beta)
  on = quantize.astype(jnp.float32)
  loss = settings.l1_weight * l1 + settings.l2_weight * l2 + on * (codebook_loss + commitment_loss)
  metrics = dict(loss=loss, l1=l1, l2=l2, codebook_loss=codebook_loss,
                 commitment_loss=commitment_loss)
  return loss, (metrics, features, codes)


def code_distances(codebook: jax.Array, flat_features: jax.Array) -> jax.Array:
  """Squared distances `[n, k]` between features `[n, c]` and codes `[k, c]`."""
  d = (jnp.sum(flat_features ** 2, 1, keepdims=True) + jnp.sum(codebook ** 2, 1)
       - 2 * jnp.dot(flat_features, codebook.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.maximum(d, 0.0)


def restart_dead_codes(codebook: jax.Array, dead: jax.Array, features: jax.Array,
                       rng: jax.Array) -> jax.Array:
  """Moves the `dead` rows ([k] bool) of `codebook` `[k, c]` onto encoder features.

  Each dead row takes a feature of `features` `[..., c]` drawn with probability proportional to
  its squared distance from the nearest live code (all codes count as live when none is), plus a
  little noise so codes drawn onto one feature split apart again.
  """
  flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  d = code_distances(codebook.astype(jnp.float32), flat)
  ignore = dead & jnp.any(~dead)
  dist = jnp.min(jnp.where(ignore[None, :], jnp.inf, d), axis=1)  # [n]
  logits = jnp.log(dist + 1e-6 * (1.0 + jnp.mean(dist)))
  pick_rng, noise_rng = jax.random.split(rng)
  picks = jax.random.categorical(pick_rng, logits, shape=(codebook.shape[0],))
  scale = jnp.std(flat) * 1e-2 + 1e-6
  new = flat[picks] + scale * jax.random.normal(noise_rng, codebook.shape)
  return jnp.where(dead[:, None], new, codebook)


def kmeans_codebook(features: jax.Array, num_codes: int, rng: jax.Array, iters: int
                    ) -> jax.Array:
  """k-means++ seeding plus `iters` Lloyd steps on features `[..., c]` -> codebook `[k, c]`."""
  flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  n, c = flat.shape
  first_rng, rng = jax.random.split(rng)
  codebook = jnp.zeros((num_codes, c), jnp.float32).at[0].set(
      flat[jax.random.randint(first_rng, (), 0, n)])

  def seed(i, carry):
    codebook, rng = carry
    rng, pick_rng = jax.random.split(rng)
    d = jnp.where(jnp.arange(num_codes)[None, :] < i, code_distances(codebook, flat), jnp.inf)
    dist = jnp.min(d, axis=1)
    pick = jax.random.categorical(pick_rng, jnp.log(dist + 1e-12))
    return codebook.at[i].set(flat[pick]), rng

  codebook, rng = jax.lax.fori_loop(1, num_codes, seed, (codebook, rng))

  def lloyd(_, codebook):
    assign = jnp.argmin(code_distances(codebook, flat), axis=1)
    one_hot = jax.nn.one_hot(assign, num_codes, dtype=jnp.float32)  # [n, k]
    counts = one_hot.sum(0)
    sums = one_hot.T @ flat
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], codebook)

  codebook = jax.lax.fori_loop(0, iters, lloyd, codebook)
  noise = 1e-3 * (jnp.std(flat) + 1e-6) * jax.random.normal(rng, codebook.shape)
  return codebook + noise


def train_step(state: VQTrainState, images: jax.Array, rng: jax.Array, *, model: VQGAN,
               tx: optax.GradientTransformation, settings: VQTrainSettings):
  """One update on images `[b, h, w, 3]` -> (new state, metrics dict of scalars).

  Steps before `settings.ae_warmup_steps` train a plain autoencoder; at that step the codebook is
  set by k-means on the batch's features; from then on dead codes restart every
  `restart_every` steps.
  """
  warmup = settings.ae_warmup_steps
  quantize = state.step >= warmup
  grad_fn = jax.value_and_grad(vq_loss, has_aux=True)
  (_, (metrics, features, codes)), grads = grad_fn(state.params, images, model, settings,
                                                   quantize)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  k = model.config.num_embeddings
  counts = jnp.zeros((k,), jnp.float32).at[codes.reshape(-1)].add(1.0)
  usage = state.usage + counts * quantize
  metrics['codes_in_batch'] = jnp.sum(counts > 0)

  features = jax.lax.stop_gradient(features)
  codebook = params['quantizer']['embedding']
  start = state.step == warmup
  every = settings.restart_every
  restart = (state.step > warmup) & ((state.step - warmup) % every == 0) if every > 0 else False
  kmeans_rng, restart_rng = jax.random.split(rng)

  def init_codebook(cb):
    return kmeans_codebook(features, k, kmeans_rng, settings.kmeans_iters).astype(cb.dtype)

  def restart_codes(cb):
    dead = usage < settings.restart_min_usage
    return restart_dead_codes(cb, dead, features, restart_rng).astype(cb.dtype)

  codebook = jax.lax.cond(start, init_codebook, lambda cb: cb, codebook)
  codebook = jax.lax.cond(restart, restart_codes, lambda cb: cb, codebook)
  metrics['restarted_codes'] = jnp.where(restart, jnp.sum(usage < settings.restart_min_usage), 0)
  usage = jnp.where(restart | start, jnp.zeros_like(usage), usage)
  params = dict(params)
  params['quantizer'] = dict(params['quantizer'], embedding=codebook)
  return VQTrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      usage=usage), metrics


def encode_decode(params: Any, images: jax.Array, model: VQGAN):
  """images -> (codes `[b, h', w']`, features `[b, h', w', c]`, reconstruction `[b, h, w, 3]`)."""
  codes, features = model.apply({'params': params}, images, method=VQGAN.encode)
  return codes, features, model.apply({'params': params}, codes, method=VQGAN.decode)


# ------------------------------------------------------------------------------------------------
# Shell: saving and loading.


def save_vqgan(directory: str, params: Any, config: VQGANConfig, extra: dict | None = None
               ) -> None:
  """Writes `directory/params.msgpack` and `directory/vqgan_config.json` (+ `extra` keys)."""
  os.makedirs(directory, exist_ok=True)
  cfg = dataclasses.asdict(config)
  cfg['dtype'] = jnp.dtype(config.dtype).name
  cfg['param_dtype'] = jnp.dtype(config.param_dtype).name
  cfg['channel_multiplier'] = list(config.channel_multiplier)
  cfg['attn_resolutions'] = list(config.attn_resolutions)
  host = jax.tree.map(np.asarray, jax.device_get(params))
  tmp = os.path.join(directory, PARAMS_FILE + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host)))
  os.replace(tmp, os.path.join(directory, PARAMS_FILE))
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(dict(cfg, **(extra or {})), f, indent=1)


def load_vqgan(directory: str) -> tuple[VQGANConfig, Any]:
  """(VQGANConfig, params) from a directory `save_vqgan` wrote."""
  params_path = os.path.join(directory, PARAMS_FILE)
  config_path = os.path.join(directory, CONFIG_FILE)
  require(os.path.isfile(params_path) and os.path.isfile(config_path),
          f'VQGAN directory {directory!r} has no {PARAMS_FILE} / {CONFIG_FILE}; run the '
          'train_tokenizer stage first or point checkpoint.vqgan_dir at its params directory.')
  with open(config_path) as f:
    raw = json.load(f)
  fields = {f.name for f in dataclasses.fields(VQGANConfig)}
  config = VQGANConfig(**{k: v for k, v in raw.items() if k in fields})
  with open(params_path, 'rb') as f:
    params = flax.serialization.msgpack_restore(f.read())
  return config, params


# ------------------------------------------------------------------------------------------------
# Shell: evaluation and the training loop.


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
    chunk = frames[start:end]
    pad = batch_size - len(chunk)  # one compiled shape
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
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
