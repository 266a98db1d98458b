"""Benchmarks: run a predictor, score it, write metrics, per-item records and a report.

One module per benchmark, each registering `run(config, workdir) -> metrics` as a 'benchmark' in
`jax_vlm.core.registry` (eval.py dispatches on `config.eval.benchmark`); AURORA-BENCH predictors
register as 'predictor'. A new benchmark or predictor is a module here plus an import line below.
"""

from jax_vlm.evaluation import aurora, aurora_models, world
from jax_vlm.evaluation.aurora import Prediction, evaluate_aurora_bench, make_predictor
from jax_vlm.evaluation.world import evaluate_world

__all__ = ['Prediction', 'aurora', 'aurora_models', 'evaluate_aurora_bench', 'evaluate_world',
           'make_predictor', 'world']
