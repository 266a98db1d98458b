"""Evaluates a model (or a baseline) on a benchmark and writes metrics, per-item records, a report.

  python eval.py --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value ...]

The benchmark is `config.eval.benchmark`. Short flag names: `--config.model=NAME` and
`--config.bench_root=DIR` mean `--config.eval.model` and `--config.eval.bench_root` (the
top-level `config.model` is the transformer's config and cannot hold a name).
Errors (jax_vlm/core/cli.py): a mistake in the command or config is one sentence with exit code 2,
a runtime input error one sentence with exit code 1; results already written to the workdir are
kept and a rerun continues from them. SIGTERM stops the run (exit 0).
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from jax_vlm import evaluation  # noqa: F401  (registers the benchmarks)
from jax_vlm.core import cli, registry

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, configs/NAME.py[:ARG].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (metrics, records, report).')

_FLAG_ALIASES = {'--config.model': '--config.eval.model',
                 '--config.bench_root': '--config.eval.bench_root'}


def rewrite_aliases(argv: list[str]) -> list[str]:
  """Maps the short flag names onto their eval.* fields (`--a=b` and `--a b` forms)."""
  out = []
  for arg in argv:
    name, sep, value = arg.partition('=')
    out.append(_FLAG_ALIASES[name] + sep + value if name in _FLAG_ALIASES else arg)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise cli.ConfigError('No config given; pass --config configs/NAME.py.')
  if not _WORKDIR.value:
    raise cli.ConfigError('No workdir given; pass --workdir DIR for the outputs.')
  # A world config (it has a `world` section) names no benchmark: the world is the benchmark.
  benchmark = config.eval.get('benchmark', '') or ('action_world' if 'world' in config else '')
  names = registry.names('benchmark')
  if benchmark not in names:
    raise cli.ConfigError(f'Unknown eval.benchmark {benchmark!r}; use one of {names}.')
  metrics = registry.get('benchmark', benchmark)(config, _WORKDIR.value)
  overall = metrics.get('all', {}) if isinstance(metrics, dict) else {}
  print(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                 for k, v in overall.items() if not isinstance(v, list)))


if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  logging.set_verbosity(logging.INFO)
  # config_flags reads the overrides from sys.argv itself, so the aliases are rewritten there.
  sys.argv = rewrite_aliases(sys.argv)
  sys.exit(cli.run(main, flags.FLAGS, __doc__, config_flag=_CONFIG))
