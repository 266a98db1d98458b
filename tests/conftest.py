"""Test set-up: eight simulated CPU devices (for the sharding tests), fp32 matmuls, no network."""

import os

# Must be set before jax is imported anywhere in the test process.
# Backend optimisation off: the tiny test programs compile 2-4x faster and compute the same values.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Threads enough for XLA:CPU's collectives among the 8 devices, as every entry point gives itself
# (cli.use_collective_threads); the child processes of tests inherit it.
from jax_vlm.core import cli  # noqa: E402

cli.use_collective_threads()
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
