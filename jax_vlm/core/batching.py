"""Fixed-size batches: the last batch of a pass is padded, so one compiled program serves all."""

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar('T')


def pad_rows(rows: Sequence[T] | np.ndarray, size: int) -> list[T] | np.ndarray:
  """`rows` (a list, or an array with rows on axis 0) padded to `size` rows with copies of the last
  row; the caller keeps the first `len(rows)` results."""
  missing = size - len(rows)
  if missing <= 0:
    return rows
  if isinstance(rows, np.ndarray):
    return np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)])
  return list(rows) + [rows[-1]] * missing
