"""The AOT tool's output: a text report of one compile, sweep rows as a markdown table and a CSV
(JSON files: core/files.write_json with JSON_OPTIONS)."""

from __future__ import annotations

import csv
import io
from typing import Any

# Reports and sweep rows as JSON: sorted keys, and any value JSON has no type for as text.
JSON_OPTIONS = dict(indent=2, sort_keys=True, default=str)
SWEEP_COLUMNS = ('config', 'topology', 'chips', 'rules', 'mesh', 'mode', 'remat', 'global_batch',
                 'fits', 'memory_per_chip_gib', 'hbm_per_chip_gib', 'argument_gib', 'output_gib',
                 'temp_gib', 'estimated_step_s', 'mfu', 'decode_memory_gib',
                 'decode_estimated_s', 'compile_s', 'error')


def fmt(value, digits=2) -> str:
  if value is None:
    return '-'
  if isinstance(value, bool):
    return 'yes' if value else 'NO'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def format_report(r: dict[str, Any]) -> str:
  """Human-readable lines for one compiled point."""
  lines = [f'{r["topology"]} ({r["chips"]} x {r["chip"]}), mesh {r["mesh"]}, rules {r["rules"]}, '
           f'mode {r["mode"]}, remat {r["remat"]}, global batch {r["global_batch"]} x '
           f'{r["seq_len"]} tokens',
           'train step, per chip:',
           f'  arguments {r["argument_gib"]:.2f} GiB, outputs {r["output_gib"]:.2f} GiB '
           f'(donated/aliased {r["alias_gib"]:.2f}), temporaries {r["temp_gib"]:.2f} GiB',
           f'  total {r["memory_per_chip_gib"]:.2f} GiB of {fmt(r["hbm_per_chip_gib"], 0)} GiB '
           f'HBM: {"fits" if r["fits"] else "does NOT fit" if r["fits"] is False else "n/a"}',
           f'  compiler FLOPs {r["compiler_flops"]:.3e} per chip; model FLOPs '
           f'{r["model_flops_per_step"]:.3e} per step',
           f'  COMPILER-ESTIMATED step time {r["estimated_step_s"] or 0:.3g} s '
           f'-> MFU {fmt(r["mfu"] and 100 * r["mfu"], 1)}% (an estimate, not a measurement; '
           f'{r["estimate_source"] or "no estimate"})']
  d = r.get('decode')
  if d:
    lines += [f'decode step (batch {d["batch"]}, cache {d["max_len"]} slots), per chip:',
              f'  total {d["memory_per_chip_gib"]:.2f} GiB '
              f'({"fits" if d["fits"] else "does NOT fit" if d["fits"] is False else "n/a"}), '
              f'COMPILER-ESTIMATED {fmt(d["estimated_step_s"] and 1e3 * d["estimated_step_s"])}'
              ' ms per token step']
  lines.append(f'compiled in {r["compile_s"]:.0f} s')
  return '\n'.join(lines)


def sweep_row(name: str, r: dict[str, Any]) -> dict[str, Any]:
  """One table row (SWEEP_COLUMNS) from a report, or from {'error': ...} for a failed point."""
  mesh = r.get('mesh')
  row = {'config': name, 'topology': r.get('topology'), 'chips': r.get('chips'),
         'rules': r.get('rules'), 'mode': r.get('mode'), 'remat': r.get('remat'),
         'mesh': 'x'.join(str(mesh[a]) for a in ('data', 'fsdp', 'tensor')) if mesh else
         r.get('mesh_text'), 'global_batch': r.get('global_batch'), 'fits': r.get('fits'),
         'error': r.get('error', '')}
  for key in ('memory_per_chip_gib', 'hbm_per_chip_gib', 'argument_gib', 'output_gib',
              'temp_gib', 'estimated_step_s', 'mfu', 'compile_s'):
    row[key] = r.get(key)
  d = r.get('decode') or {}
  row['decode_memory_gib'] = d.get('memory_per_chip_gib')
  row['decode_estimated_s'] = d.get('estimated_step_s')
  return row


def _estimate_note(mfu: float | None) -> str:
  """A warning for a time estimate no chip can reach (the roofline undercounted the work)."""
  if mfu is not None and mfu > 1.0:
    return 'time estimate implausible (MFU > 100%): ignore est. step s'
  return ''


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
  head = ['config', 'topology', 'chips', 'rules', 'mesh d×f×t', 'mode', 'remat', 'batch', 'fits',
          'GiB/chip', 'HBM', 'temp GiB', 'est. step s', 'est. MFU', 'decode GiB',
          'est. decode ms', 'compile s', 'note']
  out = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    mfu = None if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
    dec = None if r['decode_estimated_s'] is None else 1e3 * r['decode_estimated_s']
    cells = [r['config'], r['topology'], r['chips'], r['rules'], r['mesh'], r['mode'],
             r['remat'], r['global_batch'], r['fits'], r['memory_per_chip_gib'],
             r['hbm_per_chip_gib'], r['temp_gib'], r['estimated_step_s'], mfu,
             r['decode_memory_gib'], dec, r['compile_s'] and round(r['compile_s']),
             (r['error'] or '').replace('|', '/') or _estimate_note(r['mfu'])]
    out.append('| ' + ' | '.join(fmt(c) for c in cells) + ' |')
  return '\n'.join(out) + '\n'


def sweep_csv(rows: list[dict[str, Any]]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(SWEEP_COLUMNS))
  w.writeheader()
  for r in rows:
    w.writerow({k: r.get(k) for k in SWEEP_COLUMNS})
  return buf.getvalue()


