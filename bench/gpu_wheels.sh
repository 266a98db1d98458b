#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the pure-Python and binary wheels that bench/gpu.py needs and the
# GPU machine's image lacks (it has JAX, flax, optax, orbax, transformers, torch, einops, absl-py,
# PyYAML, protobuf, cloudpickle, etils, psutil; docs: the device machine's package list). Run it
# here, where PyPI is reachable; bench/gpu.sh installs them there with no network.
#
#   bash bench/gpu_wheels.sh            # for the GPU image's Python 3.12 on x86_64
#   GPU_PYTHON=3.11 bash bench/gpu_wheels.sh
#
# Why each: configs/ and the trainer import ml_collections; the trainer's input pipeline imports
# grain, which imports array_record, portpicker and googleapis-common-protos (google.api).
# The versions are the ones this project's venv runs its tests with.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${GPU_PYTHON:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl \
  ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 \
  googleapis-common-protos==1.76.0
ls -l .whl
