"""The pure training step: loss on the completion tokens, per-objective metrics, one update.

`train_step(state, batch)` is a function of arrays only (no I/O, no clocks), so the trainer can
`jax.jit` it with explicit shardings and donate the old state. The loss is the token cross-entropy
weighted by `loss_weights` (action tokens for IDP; target image tokens, with recognition weights,
for FDP), normalised as `objective_scales` says (by the batch's total weight, or per objective),
and each objective's loss and accuracy are
reported separately from `task` (0 = IDP, 1 = FDP), so one step handles 'alternate' (one objective
per batch) and 'mixed' batches alike. Gradient accumulation scans over micro-batches and sums
gradients of (scaled loss sums, with scales from the whole batch), so it equals the
un-accumulated step exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_vlm.tokens import sequences
from jax_vlm.training import optim

# Objective names, in task-id order; the ids are tokens/sequences.py's.
OBJECTIVES = tuple(sequences.TASK_NAMES.values())


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint needs to continue training exactly."""
  step: jax.Array  # [] int32, number of optimizer updates done
  params: Any
  opt_state: Any
  rng: jax.Array  # [2] uint32, base key; each step folds in its step number


def init_train_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                     seq_len: int = 8) -> TrainState:
  """Random params (still `nn.Partitioned`-boxed, for sharding) and a fresh optimizer state."""
  init_rng, state_rng = jax.random.split(rng)
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  params = model.init({'params': init_rng}, tokens)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng)


@jax.custom_vjp
def cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 logits `[..., vocab]`, int targets `[...]` -> (nll `[...]`, target is a top logit).

  Each pass over the logits costs as much as a matmul on CPU at a 65,536-way vocabulary, so this
  makes two forward (max, exp-sum) and one backward pass, where autodiff of optax's version also
  scatters the label term and an argmax makes another. A hit counts ties with the top logit.
  """
  return _cross_entropy_fwd(logits, targets)[0]


def _cross_entropy_fwd(logits, targets):
  top = jnp.max(logits, axis=-1)
  lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return (lse - target_logit, target_logit >= top), (logits, targets, lse)


def _cross_entropy_bwd(residuals, cotangents):
  logits, targets, lse = residuals
  g = cotangents[0][..., None]
  label = jnp.arange(logits.shape[-1], dtype=targets.dtype) == targets[..., None]
  grad = (jnp.exp(logits - lse[..., None]) - label.astype(logits.dtype)) * g
  return grad, None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _next(x: jax.Array) -> jax.Array:
  """`[batch, seq]` -> the value of the next position, 0 after the last (whose weight is then 0)."""
  return jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)


def token_statistics(logits: jax.Array, batch: dict[str, jax.Array],
                     objective_weights) -> dict[str, jax.Array]:
  """Sums over a batch that losses and accuracies are made of.

  Args:
    logits: `[batch, seq, vocab]`; position t predicts token t + 1.
    batch: `token_ids`, `loss_weights` `[batch, seq]` (weight aligned with the target token) and
      `task` `[batch]`.
    objective_weights: (IDP, FDP) multipliers on the summed token loss (the train step passes
      `objective_scales`, which also normalise).
  Returns:
    scalars: `weighted_nll` (objective-weighted), and per objective `{idp,fdp}_nll` (sum of
    weight * nll), `_weight` (sum of weights), `_correct` and `_tokens` (top-1 hits and count over
    tokens with weight > 0).
  """
  # Targets are shifted rather than the logits sliced: slicing [b, s, vocab] costs a copy forward
  # and a pad backward; the last position gets target 0 with weight 0 instead.
  targets = _next(batch['token_ids'])
  weights = _next(batch['loss_weights']).astype(jnp.float32)
  nll, hit = cross_entropy(logits.astype(jnp.float32), targets)  # [b, s]
  correct = hit.astype(jnp.float32)
  counted = (weights > 0).astype(jnp.float32)
  task = batch['task']
  out = {}
  weighted = jnp.zeros((), jnp.float32)
  for task_id, name in sequences.TASK_NAMES.items():
    is_task = (task == task_id).astype(jnp.float32)[:, None]
    w = weights * is_task
    # where(): a zero weight must also silence a non-finite nll on padding.
    out[f'{name}_nll'] = jnp.sum(jnp.where(w > 0, w * nll, 0.0))
    out[f'{name}_weight'] = jnp.sum(w)
    out[f'{name}_correct'] = jnp.sum(correct * counted * is_task)
    out[f'{name}_tokens'] = jnp.sum(counted * is_task)
    weighted = weighted + objective_weights[task_id] * out[f'{name}_nll']
  out['weighted_nll'] = weighted
  return out


LOSS_NORMALIZATIONS = ('tokens', 'objective')


def objective_scales(batch: dict[str, jax.Array], objective_weights: tuple[float, float],
                     normalization: str = 'tokens') -> jax.Array:
  """`[num_objectives]` multipliers that turn each objective's summed token nll into the loss.

  'tokens': one token-weighted mean over the whole batch, so an objective's share of the loss is
    its share of the loss tokens (FDP's 26 target tokens outweigh IDP's ~6 action tokens).
  'objective': each objective's own weighted mean, then their objective-weighted average over
    the objectives present in the batch, so IDP and FDP pull equally whatever their lengths.
  Computed on the whole batch before any micro-batching, so accumulation stays exact.
  """
  w = batch['loss_weights'][:, 1:].astype(jnp.float32)
  ow = jnp.asarray(objective_weights, jnp.float32)
  per_objective = jnp.stack([jnp.sum(w * (batch['task'] == t)[:, None])
                             for t in range(len(OBJECTIVES))])
  if normalization == 'tokens':
    return ow / jnp.maximum(jnp.sum(ow * per_objective), 1e-8)
  if normalization == 'objective':
    present = (per_objective > 0).astype(jnp.float32)
    return ow * present / jnp.maximum(per_objective, 1e-8) / jnp.maximum(jnp.sum(ow * present),
                                                                          1e-8)
  raise ValueError(f'unknown loss normalization {normalization!r}; use one of '
                   f'{LOSS_NORMALIZATIONS}')


def _micro_batches(batch: dict[str, jax.Array], accum_steps: int) -> dict[str, jax.Array]:
  """`[accum * micro, ...]` -> `[accum, micro, ...]` such that each micro-batch is spread over the
  same devices as the whole batch (rows i * accum + j go to micro-batch j)."""
  def split(x):
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, mask: Any, accum_steps: int = 1,
               objective_weights: tuple[float, float] = (1.0, 1.0),
               schedule: optax.Schedule | None = None,
               loss_normalization: str = 'tokens') -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch` (`[global_batch, seq]` arrays); returns (state, metrics).

  Only leaves where `mask` is True are differentiated; frozen ones get zero updates.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  train_leaves, frozen_leaves, join = optim.split_trainable(state.params, mask)
  scales = objective_scales(batch, objective_weights, loss_normalization)

  def loss_fn(train, micro, rng):
    params = join(train, frozen_leaves)
    logits = model.apply({'params': params}, micro['token_ids'], positions=micro['positions'],
                         segment_ids=micro['segment_ids'], deterministic=False,
                         rngs={'dropout': rng})
    stats = token_statistics(logits, micro, scales)
    return stats['weighted_nll'], stats

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, stats), grads = grad_fn(train_leaves, batch, step_rng)
  else:
    micro = _micro_batches(batch, accum_steps)

    def body(carry, xs):
      grads_acc, loss_acc, stats_acc = carry
      mb, i = xs
      (micro_loss, micro_stats), g = grad_fn(train_leaves, mb, jax.random.fold_in(step_rng, i))
      add = functools.partial(jax.tree.map, jnp.add)
      return (add(grads_acc, g), loss_acc + micro_loss, add(stats_acc, micro_stats)), None

    zeros_g = jax.tree.map(jnp.zeros_like, train_leaves)
    zeros_s = jax.eval_shape(lambda: token_statistics(
        jnp.zeros((1, 2, 1)), {'token_ids': jnp.zeros((1, 2), jnp.int32),
                               'loss_weights': jnp.zeros((1, 2)),
                               'task': jnp.zeros((1,), jnp.int32)}, scales))
    zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros_s)
    (grads, loss, stats), _ = jax.lax.scan(
        body, (zeros_g, jnp.zeros((), jnp.float32), zeros_s),
        (micro, jnp.arange(accum_steps)))

  grad_norm = optax.global_norm([g for g in grads if g is not None])
  # Frozen leaves get zero gradients, which optax.set_to_zero ignores (XLA drops them).
  full_grads = join(grads, [None if f is None else jnp.zeros_like(f) for f in frozen_leaves])
  updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)

  metrics = {'loss': loss, 'grad_norm': grad_norm,
             # One reduction per leaf: the trainer saves no checkpoint whose params are not finite.
             'params_finite': jnp.all(jnp.stack(
                 [jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))}
  if schedule is not None:
    metrics['learning_rate'] = schedule(state.step)
  for name in OBJECTIVES:
    metrics[f'{name}_loss'] = stats[f'{name}_nll'] / jnp.maximum(stats[f'{name}_weight'], 1e-8)
    metrics[f'{name}_accuracy'] = stats[f'{name}_correct'] / jnp.maximum(stats[f'{name}_tokens'], 1)
    metrics[f'{name}_tokens'] = stats[f'{name}_tokens']
  return new_state, metrics


def eval_logits(params: Any, batch: dict[str, jax.Array], *, model: nn.Module) -> jax.Array:
  """Deterministic forward pass: `[batch, seq, vocab]` logits (for tests and evaluation)."""
  return model.apply({'params': params}, batch['token_ids'], positions=batch.get('positions'),
                     segment_ids=batch.get('segment_ids'), deterministic=True)
