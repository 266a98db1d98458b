"""Orbax checkpoints of the training state, and params-only checkpoints for export and later stages.

A training checkpoint (one Orbax step directory) holds the train state (params, optimizer state,
step, RNG) and the data iterator's state as JSON, so a restarted run continues exactly where it
stopped. Restoring takes the target shardings, so a run can continue on a different mesh. A latest
checkpoint that cannot be read (truncated, corrupt), whose files no longer match the content
checksum written when it was saved (a changed byte: Orbax reads such a flip without complaint), or
whose restored arrays hold NaN or inf, is reported in one sentence, moved aside to
`../corrupt_checkpoints/<step>`, and the one before it is used.

Checksums: `../checkpoint_checksums/<step>.json` (CRC-32 and size of every file of the step),
written
once the step's save has finished (at the next save, `wait` or `close`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jax_vlm.core.errors import UserError


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s carrying the shardings to restore onto."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


class TrainCheckpoints:
  """Periodic training checkpoints under `directory` (one sub-directory per step)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._async = async_save
    self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep if self._keep and self._keep > 0 else None,
        enable_async_checkpointing=self._async, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'data'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts writing `state` (a pytree of arrays) and `data_state` (JSON-able) as `step`."""
    self.manager.wait_until_finished()
    self._write_checksums()
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  @property
  def checksum_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), 'checkpoint_checksums')

  def _write_checksums(self) -> None:
    """Checksums of the finished steps that have none yet (process 0)."""
    if jax.process_index() != 0:
      return
    for step in self.all_steps():
      path = os.path.join(self.checksum_dir, f'{step}.json')
      if os.path.exists(path):
        continue
      os.makedirs(self.checksum_dir, exist_ok=True)
      with open(path + '.tmp', 'w') as f:
        json.dump(_step_checksums(os.path.join(self.directory, str(step))), f, indent=0)
      os.replace(path + '.tmp', path)

  def _verify_checksums(self, step: int) -> None:
    """ValueError naming the first file that differs from the checksums written at save."""
    path = os.path.join(self.checksum_dir, f'{step}.json')
    if not os.path.exists(path):
      return  # saved before checksums existed, or killed before they were written
    with open(path) as f:
      expected = json.load(f)
    actual = _step_checksums(os.path.join(self.directory, str(step)))
    for name, value in expected.items():
      if actual.get(name) != value:
        raise ValueError(f'content checksum mismatch in {name} (a changed or missing byte)')

  def restore(self, abstract_state: Any) -> tuple[int, Any, Any] | None:
    """(step, state, data_state) from the newest good checkpoint, or None when there is none.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with target shardings. A checkpoint that
    fails to read, fails its checksum or holds non-finite arrays is moved aside (`_set_aside`).
    """
    for step in reversed(self.all_steps()):
      try:
        self._verify_checksums(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        bad = non_finite_leaf(restored['state'])
        if bad:
          raise ValueError(f'it holds NaN or inf values in {bad}')
        return step, restored['state'], restored['data']
      except Exception as e:  # noqa: BLE001 - any failure to read means: use an older one.
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    text = str(error).strip()
    reason = text.splitlines()[0][:200] if text else type(error).__name__
    logging.warning('Checkpoint step %d in %s is unreadable (%s); it is moved aside and the '
                    'previous checkpoint is used.', step, self.directory, reason)
    print(f'Checkpoint step {step} in {self.directory} is unreadable ({reason}); using the '
          'previous checkpoint.', flush=True)
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), 'corrupt_checkpoints')
      os.makedirs(aside, exist_ok=True)
      src = os.path.join(self.directory, str(step))
      if os.path.exists(src):
        dst = os.path.join(aside, f'{step}')
        n = 1
        while os.path.exists(dst):  # an earlier corrupt copy of the same step is kept too
          dst, n = os.path.join(aside, f'{step}.{n}'), n + 1
        shutil.move(src, dst)
      checksum = os.path.join(self.checksum_dir, f'{step}.json')
      if os.path.exists(checksum):
        os.remove(checksum)
    self.manager.close()
    self._open()

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._write_checksums()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self._write_checksums()
    self.manager.close()


def _step_checksums(step_dir: str) -> dict[str, list[int]]:
  """{relative path: [size, crc32]} of every file under `step_dir`."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      path = os.path.join(root, name)
      crc = 0
      with open(path, 'rb') as f:
        while chunk := f.read(1 << 22):
          crc = zlib.crc32(chunk, crc)
      out[os.path.relpath(path, step_dir)] = [os.path.getsize(path), crc]
  return out


@jax.jit
def _finite_flags(leaves):
  return [jnp.isfinite(x).all() for x in leaves]


def non_finite_leaf(tree: Any) -> str | None:
  """The key path of the first floating-point leaf of `tree` holding NaN or inf, else None."""
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not flat:
    return None
  flags = _finite_flags([x for _, x in flat])
  for (path, _), ok in zip(flat, flags):
    if not bool(np.asarray(ok)):
      return jax.tree_util.keystr(path)
  return None


MODEL_FILE = 'model_config.json'
# What a params checkpoint must agree on with the model it is loaded into.
ARCH_KEYS = ('family', 'vocab_size', 'd_model', 'num_layers', 'num_heads', 'num_kv_heads',
             'head_dim', 'mlp_dim', 'tie_embeddings', 'qk_norm', 'swin_norm', 'scan_layers')


def save_params(path: str, params: Any, model_config: Any = None) -> None:
  """Writes a params-only Orbax checkpoint (what later stages and `export` read); with
  `model_config` (a TransformerConfig) also PATH/model_config.json: its ARCH_KEYS, which a load
  into another family or shape is checked against (`check_model_record`)."""
  path = os.path.abspath(path)
  if os.path.exists(path) and jax.process_index() == 0:
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
    ckptr.wait_until_finished()
  if model_config is not None and jax.process_index() == 0:
    record = {k: getattr(model_config, k) for k in ARCH_KEYS if hasattr(model_config, k)}
    record['leaves'] = len(jax.tree.leaves(params))
    with open(os.path.join(path, MODEL_FILE + '.tmp'), 'w') as f:
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(os.path.join(path, MODEL_FILE + '.tmp'), os.path.join(path, MODEL_FILE))


def check_model_record(path: str, model_config: Any) -> None:
  """UserError (one sentence) when the params at `path` were saved for another model (family,
  vocabulary or shape); params without a record (older, or converted) are not checked here."""
  record_path = os.path.join(os.path.abspath(path), MODEL_FILE)
  if not os.path.exists(record_path):
    return
  try:
    with open(record_path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{record_path} is unreadable ({e}); restore it or re-export the params.'
                    ) from None
  differ = [k for k in ARCH_KEYS if k in record and hasattr(model_config, k)
            and record[k] != getattr(model_config, k)]
  if differ:
    pairs = ', '.join(f'model.{k}={record[k]!r} (config: {getattr(model_config, k)!r})'
                      for k in differ)
    raise UserError(f'The params in {path} were trained for another model: {pairs}; set '
                    'config.model to match them or pass params of this model.')


def load_params(path: str, abstract_params: Any | None = None) -> Any:
  """Reads a params-only Orbax checkpoint; with `abstract_params` (ShapeDtypeStructs with shardings)
  the arrays land on those shardings, and the tree may be a sub-tree's superset check-free."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f'params checkpoint {path} does not exist; pass a directory written by '
                    'train.py or jax_vlm.tools.export.')
  with ocp.StandardCheckpointer() as ckptr:
    try:
      if abstract_params is None:
        return ckptr.restore(path)
      return ckptr.restore(path, abstract_params)
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise UserError(f'params checkpoint {path} could not be read ({str(e)[:160]}); check that it '
                      'was written for this model config.') from e
