"""Training: the pure train step and optimiser, meshes and sharding rules, Orbax checkpoints, the
metrics writer, the Trainer loop (the shell around the step) and the image tokenizer's training."""

from jax_vlm.training.step_builder import TrainStep, build_train_step
from jax_vlm.training.train_step import TrainState
from jax_vlm.training.trainer import Trainer, validate_config

__all__ = ['TrainState', 'TrainStep', 'Trainer', 'build_train_step', 'validate_config']
