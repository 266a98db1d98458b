"""Plots for the HTML reports, drawn off-screen with matplotlib and returned as RGB arrays."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from PIL import Image


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
              title: str, xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0, 1)
              ) -> np.ndarray:
  """`uint8 [h, w, 3]` image of one line per series: label -> (x, per-seed y rows).

  Each line is the mean over its seeds, with the range of the seeds shaded when there are
  several; seeds with a missing value at a point are left out there.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for label, (x, rows) in series.items():
    y = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], float)
    if y.size == 0:
      continue
    with np.errstate(all='ignore'):
      mean = np.nanmean(y, axis=0)
    line, = ax.plot(x, mean, marker='o', label=label)
    if len(y) > 1:
      ax.fill_between(x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), alpha=0.2,
                      color=line.get_color())
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  ax.legend(loc='best', fontsize='small')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  plt.close(fig)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))
