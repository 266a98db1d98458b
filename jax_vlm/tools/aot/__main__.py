"""Ahead-of-time compilation for TPU slices on a CPU host: will this config fit, and how fast?

  python -m jax_vlm.aot --config configs/anole_7b.py --topology v5e:16x16 [--config.mesh.fsdp=...]
      [--json FILE]
  python -m jax_vlm.aot --config configs/anole_7b.py --sweep --topology v5e:8x8,v5e:16x16 \
      [--points 'rules=fsdp;rules=fsdp_tp,tensor=4,mode=lora'] --markdown F.md --csv F.csv

The real train step (the trainer's pieces: mesh, logical rules, sharded `TrainState`, optimizer,
`train_step.train_step`, jitted with the same in/out shardings and donation) and one sampler decode
step (`DecoderLM` with a `KVCache`) are lowered with `ShapeDtypeStruct`s carrying shardings and
compiled by libtpu for a TPU topology description (`jax.experimental.topologies`), so no TPU is
needed; libtpu must be importable (`pip install "jax[tpu]==<jax version>"`, or on PYTHONPATH).

From the compiled program it reports, per chip: argument, output and temporary memory
(`memory_analysis()`) against the chip's HBM, the compiler's FLOP count and XLA's estimated step
time (`cost_analysis()['optimal_seconds']`; where libtpu has none, a roofline of the compiler's
FLOP and byte counts), and the MFU that estimate implies. The times are COMPILE-TIME ESTIMATES,
not measurements, and leave out communication: use them to rank meshes, not to quote throughput.
With `--topology cpu` the same code path compiles against this host's CPU devices (tests).
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import flags
from ml_collections import config_flags

from jax_vlm.core import cli
from jax_vlm.core.errors import require
from jax_vlm.core.files import write_json
from jax_vlm.tools.aot.chips import set_tpu_env
from jax_vlm.tools.aot.compile import _SHORT_KEYS, DEFAULT_POINTS, analyze_topology, run_sweep
from jax_vlm.tools.aot.tables import JSON_OPTIONS, format_report, sweep_csv, sweep_markdown


def main(argv=None) -> int:
  config_flag = config_flags.DEFINE_config_file('config', None, 'configs/NAME.py[:ARG]')
  topology_flag = flags.DEFINE_list('topology', ['v5e:16x16'],
                                    "TPU topology, e.g. v5e:16x16, v5p:4x4x4; several for --sweep;"
                                    " 'cpu' = this host's devices.")
  json_flag = flags.DEFINE_string('json', None, 'Write the report (or sweep rows) as JSON here.')
  sweep_flag = flags.DEFINE_bool('sweep', False, 'Compile every --points entry on each topology.')
  points_flag = flags.DEFINE_string('points', ';'.join(DEFAULT_POINTS),
                                    "Sweep points separated by ';', each 'key=value,...' with keys "
                                    f"{', '.join(_SHORT_KEYS)} or dotted config keys.")
  md_flag = flags.DEFINE_string('markdown', None, 'Sweep: write the markdown table here.')
  csv_flag = flags.DEFINE_string('csv', None, 'Sweep: write the CSV table here.')
  name_flag = flags.DEFINE_string('name', None, 'Sweep: config name in the table.')
  decode_flag = flags.DEFINE_bool('decode', True, 'Also compile one sampler decode step.')
  seq_flag = flags.DEFINE_integer('seq_len', None, 'Tokens per row (default data.max_seq_len).')

  def run(_):
    # Errors: jax_vlm/core/cli.py (one sentence; exit 2 for the command, 1 for input).
    config = config_flag.value
    require(config is not None, 'No config given; pass --config configs/NAME.py.')
    topologies = topology_flag.value
    if topologies and topologies[0] != 'cpu':
      set_tpu_env(topologies[0])
    if 'JAX_PLATFORMS' not in os.environ:
      jax.config.update('jax_platforms', 'cpu')  # the host compiles; TPUs are descriptions
    if sweep_flag.value:
      points = [p for p in points_flag.value.split(';') if p.strip()]
      name = name_flag.value or os.path.splitext(os.path.basename(
          config_flags.get_config_filename(flags.FLAGS['config'])))[0]
      def save(rows):
        if md_flag.value:
          with open(md_flag.value, 'w') as f:
            f.write(sweep_markdown(rows))
        if csv_flag.value:
          with open(csv_flag.value, 'w') as f:
            f.write(sweep_csv(rows))
        if json_flag.value:
          write_json(json_flag.value, rows, **JSON_OPTIONS)

      t0 = time.perf_counter()
      rows = run_sweep(config, topologies, points, name=name, decode=decode_flag.value,
                       log=lambda s: print(s, flush=True), on_row=save)
      print(sweep_markdown(rows))
      print(f'sweep took {time.perf_counter() - t0:.0f} s')
      return
    require(len(topologies) == 1, 'Several --topology values need --sweep; pass one topology.')
    result = analyze_topology(config, topologies[0], decode=decode_flag.value,
                              seq_len=seq_flag.value)
    print(format_report(result))
    if json_flag.value:
      write_json(json_flag.value, result, **JSON_OPTIONS)

  return cli.run(run, flags.FLAGS, __doc__, argv, config_flag=config_flag)


if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  sys.exit(main())
