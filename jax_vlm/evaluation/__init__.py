"""Benchmarks: run a predictor, score it, write metrics, per-item records and a report.

One module per benchmark, each with `run(config, workdir) -> metrics`; eval.py dispatches on
`config.eval.benchmark`.
"""
