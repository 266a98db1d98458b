"""Pipelines of stages: the stage runner, the action world's data stages, the FDP variants, and the
reproduction (run every stage per seed, then the table of claims)."""

from jax_vlm.pipeline.stages import run_stages

__all__ = ['run_stages']
