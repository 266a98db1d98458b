"""Where training progress goes: a tqdm bar, TensorBoard event files and a JSON-lines file.

Only process 0 writes (other processes get a writer that does nothing). Every logged metric goes to
`metrics.jsonl` (one object per line, with `step`) and to TensorBoard; the bar shows step, losses,
tokens/s and the ETA. The lines are strict JSON: a non-finite value is written as null and named
with its reason under `non_finite` ({"loss": null, "non_finite": {"loss": "nan"}}). On resume the
JSON-lines file is cut back to the restored step, so it reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax

from jax_vlm.training import sharding

BAR_KEYS = ('loss', 'idp_loss', 'fdp_loss', 'tokens_per_s', 'mfu')


class MetricsWriter:
  """Writes scalar metrics to JSON lines + TensorBoard and drives the progress bar."""

  def __init__(self, log_dir: str, total_steps: int, initial_step: int = 0,
               progress_bar: bool = True, tensorboard: bool = True, enabled: bool | None = None):
    self.enabled = sharding.is_main_process() if enabled is None else enabled
    self.jsonl_path = os.path.join(log_dir, 'metrics.jsonl')
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    os.makedirs(log_dir, exist_ok=True)
    truncate_jsonl(self.jsonl_path, initial_step)
    self._jsonl = open(self.jsonl_path, 'a')
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(log_dir, 'tensorboard'), purge_step=initial_step + 1)
      except ImportError:  # TensorBoard output is optional; the JSON lines carry everything.
        self._tb = None
    if progress_bar:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, desc='train', unit='step',
                       dynamic_ncols=True)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: _to_py(v) for k, v in metrics.items()}
    self._jsonl.write(json_line({'step': int(step), **clean}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
    if self._bar is not None:
      self._bar.set_postfix({k: f'{clean[k]:.4g}' for k in BAR_KEYS if k in clean}, refresh=False)

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def _to_py(v: Any) -> Any:
  if isinstance(v, (jax.Array,)) or hasattr(v, 'item'):
    v = v.item()
  return float(v) if isinstance(v, float) else v


def json_line(record: dict[str, Any]) -> str:
  """One strict-JSON line: non-finite floats (also inside lists/dicts) become null, named under
  `non_finite` with 'nan', 'inf' or '-inf' (json.dumps would write bare NaN, which strict readers
  reject)."""
  reasons: dict[str, str] = {}

  def clean(v: Any, key: str) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
      reasons[key] = 'nan' if v != v else ('inf' if v > 0 else '-inf')
      return None
    if isinstance(v, dict):
      return {k: clean(x, f'{key}.{k}') for k, x in v.items()}
    if isinstance(v, (list, tuple)):
      return [clean(x, f'{key}[{i}]') for i, x in enumerate(v)]
    return v

  out = {k: clean(v, str(k)) for k, v in record.items()}
  if reasons:
    out['non_finite'] = reasons
  return json.dumps(out, allow_nan=False, default=str)


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops lines logged after `last_step` (they are replayed after a restore)."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= last_step:
          keep.append(line if line.endswith('\n') else line + '\n')
      except (ValueError, KeyError):
        continue  # a line cut short by a kill
  with open(path + '.tmp', 'w') as f:
    f.writelines(keep)
  os.replace(path + '.tmp', path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
