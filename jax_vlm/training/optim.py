"""The optimizer: AdamW with warmup + cosine decay and gradient clipping, full or LoRA fine-tuning.

In LoRA mode the base weights are frozen with `optax.multi_transform`: only the adapter leaves go
through AdamW, the rest through `optax.set_to_zero()`, which keeps no state, so the optimizer
state holds no moments for the (large) frozen weights. `trainable_mask` says which leaves train.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax

from jax_vlm.core.errors import require
from jax_vlm.models import lora

TRAIN_MODES = ('full', 'lora')
LR_SCHEDULES = ('cosine', 'constant')


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine decay to `learning_rate * end_lr_ratio`
  at `num_steps` ('cosine'), or constant after warmup ('constant')."""
  peak = float(train_config.learning_rate)
  warmup = int(train_config.warmup_steps)
  total = max(int(train_config.num_steps), warmup + 1)
  require(train_config.lr_schedule in LR_SCHEDULES,
          f'train.lr_schedule={train_config.lr_schedule!r} is unknown; use one of {LR_SCHEDULES}.')
  if train_config.lr_schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total,
      end_value=peak * float(train_config.end_lr_ratio))


def trainable_mask(params: Any, mode: str) -> Any:
  """A tree of bools like `params` (unboxed): everything in 'full' mode, adapters only in 'lora'."""
  require(mode in TRAIN_MODES, f'train.mode={mode!r} is unknown; use one of {TRAIN_MODES}.')
  # A plain tree of bools even for boxed params: it is then a prefix of the boxed tree too.
  params = nn.unbox(params)
  if mode == 'full':
    return jax.tree.map(lambda _: True, params)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: lora.is_lora_param(p), params)
  require(any(jax.tree.leaves(mask)),
          "train.mode='lora' but the model has no LoRA adapters; set model.lora_rank > 0.")
  return mask


def make_optimizer(train_config, mask: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ clipping) on the leaves where `mask` is True; frozen leaves get no state.

  `mask` may be a tree of bools or a function of the params returning one.
  """
  schedule = learning_rate_schedule(train_config)
  parts = []
  if train_config.grad_clip_norm and train_config.grad_clip_norm > 0:
    # Inside the trainable group, so frozen weights do not count towards the norm.
    parts.append(optax.clip_by_global_norm(float(train_config.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=float(train_config.b1), b2=float(train_config.b2),
                           weight_decay=float(train_config.weight_decay)))
  adamw = optax.chain(*parts)

  def labels(params):
    m = mask(params) if callable(mask) else mask
    return jax.tree.map(lambda t: 'trainable' if t else 'frozen', m)

  tx = optax.multi_transform({'trainable': adamw, 'frozen': optax.set_to_zero()}, labels)
  return tx, schedule


def split_trainable(params: Any, mask: Any) -> tuple[list, list, Callable[[list, list], Any]]:
  """Splits params into (trainable leaves, frozen leaves, join) so gradients skip frozen weights.

  Leaves that are not in a part are None; `join(trainable, frozen)` rebuilds the params tree.
  """
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(mask)
  train = [x if f else None for x, f in zip(leaves, flags)]
  frozen = [None if f else x for x, f in zip(leaves, flags)]

  def join(train_leaves, frozen_leaves):
    return treedef.unflatten([t if f else z for t, z, f in zip(train_leaves, frozen_leaves, flags)])

  return train, frozen, join
