"""XLA compiler options the project's hot programs are compiled with, by target platform.

`jax.jit(fn, compiler_options=compiler_options(platform))` on the train step (training.step_builder)
and the sampler's decode loop (inference.sampler). The platform is the one the program is compiled
for (the mesh's devices), so an ahead-of-time TPU compile on a CPU host gets the TPU options.

CPU: XLA's YNNPACK fusions are turned off ('xla_cpu_experimental_ynn_fusion_type' empty), so dots
go to XLA:CPU's own kernels. On the development VM (2-core AMD EPYC, jax 0.10.2) YNNPACK ran the
thin matmuls of decoding ([8, 1024] x [1024, 2816]) at 3.5 GB/s of weights against 8-10 GB/s
without it. Measured in alternated runs (docs/benchmarks.md, "XLA:CPU without YNNPACK"): a K = 8
world-size frame 125 -> 91 ms, a mid-size decode step 264 -> 202 ms, the world-size train step
+10-25%; the mid-size and `train_dynamics`-size train steps within the noise. TPU and GPU: none.
"""

from __future__ import annotations

_BY_PLATFORM: dict[str, dict[str, str]] = {
    'cpu': {'xla_cpu_experimental_ynn_fusion_type': ''},
}


def compiler_options(platform: str) -> dict[str, str]:
  """The options for a program compiled for `platform` ('cpu', 'tpu', 'gpu', 'cuda', ...); a fresh
  dict, empty where the project sets none."""
  return dict(_BY_PLATFORM.get(platform, {}))
