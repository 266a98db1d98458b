"""Ahead-of-time compilation for TPU / GPU meshes on a CPU host (`python -m jax_vlm.aot`).

  chips.py     chip generations and topology descriptions
  compile.py   the trainer's step (training/step_builder.py) lowered and compiled, read back
  tables.py    text report, sweep markdown / CSV
  __main__.py  the command line
"""

from jax_vlm.core.files import write_json
from jax_vlm.tools.aot import chips, compile, tables
from jax_vlm.tools.aot.chips import (
    CHIPS,
    GIB,
    ChipSpec,
    chip_spec,
    devices_per_chip,
    libtpu_available,
    set_tpu_env,
    topology_devices,
)
from jax_vlm.tools.aot.compile import (
    DEFAULT_POINTS,
    PAPER_GLOBAL_BATCH,
    PAPER_LORA_RANK,
    PAPER_SEQ_LEN,
    TrainStepParts,
    _cost,
    abstract_train_step,
    analyze_topology,
    aot_global_batch,
    apply_point,
    estimate_mfu,
    lower_decode_step,
    lower_train_step,
    memory_report,
    out_of_memory,
    parse_point,
    per_layer_counts,
    roofline_seconds,
    run_sweep,
)
from jax_vlm.tools.aot.tables import (
    JSON_OPTIONS,
    SWEEP_COLUMNS,
    format_report,
    sweep_csv,
    sweep_markdown,
    sweep_row,
)

__all__ = [
    'CHIPS', 'DEFAULT_POINTS', 'GIB', 'JSON_OPTIONS', 'PAPER_GLOBAL_BATCH', 'PAPER_LORA_RANK',
    'PAPER_SEQ_LEN', 'SWEEP_COLUMNS', 'ChipSpec', 'TrainStepParts', '_cost', 'abstract_train_step',
    'analyze_topology', 'aot_global_batch', 'apply_point', 'chip_spec', 'chips', 'compile',
    'devices_per_chip', 'estimate_mfu', 'format_report', 'libtpu_available', 'lower_decode_step',
    'lower_train_step', 'memory_report', 'out_of_memory', 'parse_point', 'per_layer_counts',
    'roofline_seconds', 'run_sweep', 'set_tpu_env', 'sweep_csv', 'sweep_markdown', 'sweep_row',
    'tables', 'topology_devices', 'write_json',
]
