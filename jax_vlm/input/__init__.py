"""Record sets on disk -> per-process training batches: path templates and splits (`datasets`),
the Grain pipeline that lays examples out with tokens.sequences and batches them (`pipeline`)."""

from jax_vlm.input.datasets import open_split, resolve_paths
from jax_vlm.input.pipeline import make_dynamics_iterator, make_eval_dataset

__all__ = ['make_dynamics_iterator', 'make_eval_dataset', 'open_split', 'resolve_paths']
