"""The pure part of training a small VQGAN image tokenizer from scratch (jit-able functions of
arrays); the loop around it is training/vq_training.py.

  `vq_loss`            reconstruction (L1 + L2) + codebook + commitment loss of one batch
  `restart_dead_codes` codebook entries that were (almost) never picked move onto encoder features,
                       drawn in proportion to their squared distance from the nearest code
                       (k-means++ style), so badly served features (rare shapes) get codes first
  `train_step`         one Adam update, the codebook usage count, and a restart every
                       `restart_every` steps; the very first step restarts every code, which
                       initialises the codebook from encoder outputs instead of U(-1/n, 1/n)
The quantizer is the model's own nearest-codebook lookup (no normalisation, no EMA): the restart
only moves codebook rows, so what `encode` does at inference is what training shaped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import optax

from jax_vlm.models.vqgan import VQGAN, vq_losses


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
  # Jitted, init is one compiled program; run eagerly, it compiled each of its ~170 primitives on
  # its own (the truncated-normal initialisers alone took 1-3 s each on 2 CPU cores).
  params = jax.jit(model.init)(rng, jnp.zeros((1, *image_shape), jnp.float32))['params']
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
