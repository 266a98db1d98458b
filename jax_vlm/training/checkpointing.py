"""Orbax checkpoints of the training state, and params-only checkpoints for export and later stages.

A training checkpoint (one Orbax step directory) holds the train state (params, optimizer state,
step, RNG) and the data iterator's state as JSON, so a restarted run continues exactly where it
stopped. Restoring takes the target shardings, so a run can continue on a different mesh. A latest
checkpoint that cannot be read (truncated, corrupt) is reported in one sentence, moved aside, and
the one before it is used.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
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
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, abstract_state: Any) -> tuple[int, Any, Any] | None:
    """(step, state, data_state) from the newest readable checkpoint, or None when there is none.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with target shardings.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
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
        shutil.move(src, os.path.join(aside, f'{step}'))
    self.manager.close()
    self._open()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(path: str, params: Any) -> None:
  """Writes a params-only Orbax checkpoint (what later stages and `export` read)."""
  path = os.path.abspath(path)
  if os.path.exists(path) and jax.process_index() == 0:
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
    ckptr.wait_until_finished()


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
