#!/usr/bin/env bash
# The GPU benchmark on a machine with no network: installs the wheels carried in .whl/ (filled by
# bench/gpu_wheels.sh) into a side folder, checks the imports, then runs bench/gpu.py with this
# script's arguments.
#
#   bash bench/gpu.sh                       # about 7.5 min on one GPU; runs/gpu_bench/gpu_bench.md
#   bash bench/gpu.sh --dry-run             # tiny sizes on CPU
#   PYTHON=/path/to/python3 bash bench/gpu.sh --budget_s 300
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  site=${GPU_BENCH_SITE:-/tmp/jax_vlm_wheels}
  if "$py" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$site" .whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench/gpu.sh: could not install .whl/ (wheels for another Python?); going on" >&2
  fi
fi
"$py" - <<'PY'
import importlib, sys
missing = []
for name in ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'grain', 'einops',
             'torch', 'transformers'):
  try:
    importlib.import_module(name)
  except Exception as e:  # noqa: BLE001
    missing.append(f'{name} ({type(e).__name__}: {e})')
if missing:
  sys.exit('bench/gpu.sh: cannot import ' + '; '.join(missing) + '. Fill .whl/ with '
           'bench/gpu_wheels.sh on a machine with network (GPU_PYTHON=<its python version>).')
import jax, torch
print(f'python {sys.version.split()[0]}, jax {jax.__version__} {jax.devices()}, torch '
      f'{torch.__version__} cuda {torch.cuda.is_available()}', flush=True)
PY
exec "$py" bench/gpu.py "$@"
