"""`build_train_step(config, devices)`: the jitted train step with its mesh, rules and shardings.

The one place the train step is put together (model, optimiser, abstract state, state shardings,
trainable mask, `jax.jit` with in/out shardings and a donated state). The Trainer runs it; the AOT
tool (jax_vlm/tools/aot.py) lowers it for a TPU topology. Nothing here touches a device: the state
is traced from an abstract key, so the devices may exist only as a topology description.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jax_vlm.core.compile_options import compiler_options
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.training import optim, sharding
from jax_vlm.training import train_step as ts


@dataclasses.dataclass
class TrainStep:
  """The compiled-to-be train step and what it was built with."""
  mesh: jax.sharding.Mesh
  rules: Any  # logical-axis rules
  model_config: TransformerConfig
  model: DecoderLM
  tx: optax.GradientTransformation
  schedule: Callable  # step -> learning rate
  mask: Any  # pytree of bools: which params train
  abstract_state: ts.TrainState  # of ShapeDtypeStructs, unboxed
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding
  init_fn: Callable  # jitted rng -> TrainState, created sharded
  step_fn: Callable  # jitted (state, batch) -> (state, metrics); the state is donated

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical rules, so the model's activation constraints resolve while tracing."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def build_train_step(config: ml_collections.ConfigDict, devices: Sequence | None = None
                     ) -> TrainStep:
  """The train step of `config` (model, train, objectives, mesh) on `devices` (default all)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.mesh)
  model_config = TransformerConfig.from_config(config.model)
  model = DecoderLM(model_config)
  accum_steps = int(config.train.grad_accum_steps)
  mode = config.train.mode
  tx, schedule = optim.make_optimizer(config.train, lambda p: optim.trainable_mask(p, mode))
  init = lambda rng: ts.init_train_state(rng, model, tx)  # noqa: E731
  # An abstract key: no device is touched, so this also works for AOT topology meshes.
  abstract_key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init, abstract_key)
    state_shardings = sharding.state_shardings(abstract_boxed, mesh, rules)
  abstract_state = nn.unbox(abstract_boxed)
  sharding.check_divisible(abstract_state, state_shardings)
  mask = optim.trainable_mask(abstract_state.params, mode)
  init_fn = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=state_shardings)
  step = lambda state, batch: ts.train_step(  # noqa: E731
      state, batch, model=model, tx=tx, mask=mask, accum_steps=accum_steps,
      objective_weights=(float(config.objectives.idp_loss_weight),
                         float(config.objectives.fdp_loss_weight)),
      schedule=schedule, loss_normalization=str(config.objectives.loss_normalization))
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                    out_shardings=(state_shardings, sharding.replicated(mesh)),
                    donate_argnums=(0,),
                    compiler_options=compiler_options(mesh.devices.flat[0].platform))
  return TrainStep(mesh, rules, model_config, model, tx, schedule, mask, abstract_state,
                   state_shardings, batch_sharding, init_fn, step_fn)
