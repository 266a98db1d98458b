"""The method: IDP labels unlabelled pairs (`bootstrap`) and a stratified top-K keeps the best
(`selection`); the trajectory preference probe (`probe`)."""

from jax_vlm.method.bootstrap import run_bootstrap
from jax_vlm.method.probe import run_probe
from jax_vlm.method.selection import stratified_top_k

__all__ = ['run_bootstrap', 'run_probe', 'stratified_top_k']
