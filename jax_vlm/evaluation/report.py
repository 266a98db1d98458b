"""A self-contained HTML page to look at predictions: metric tables, then one block per item.

Each item shows the source frame, the action, the target frame, the prediction and the K candidates
with their verifier scores (the chosen one outlined). Images are embedded as base64 PNG so the file
can be mailed around; tiny frames (the action world's) are upscaled with nearest neighbour so the
pixels stay visible, and large ones are shrunk to keep the page light.
"""

import base64
import dataclasses
import html
import io
import os
from typing import Any, Mapping, Sequence, Union

import numpy as np
from PIL import Image

from data.images import load_rgb
from jax_vlm.core.errors import UserError

ImageLike = Union[np.ndarray, str, os.PathLike, None]

# Displayed frames are scaled so their longer side falls between these (pixels).
MIN_DISPLAY_SIDE = 128
MAX_DISPLAY_SIDE = 320


@dataclasses.dataclass
class ReportItem:
  """One item of the report. Images are `uint8 [h, w, 3]` arrays or paths to image files."""
  title: str
  action: str = ''
  src_frame: ImageLike = None
  tgt_frame: ImageLike = None
  prediction: ImageLike = None
  candidates: Sequence[ImageLike] = ()
  verifier_scores: Sequence[float] = ()
  chosen: int | None = None
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # e.g. L1, judge reply


def display_image(image: np.ndarray) -> np.ndarray:
  """Upscales tiny frames by an integer factor (nearest) and shrinks big ones (area)."""
  image = np.asarray(image, dtype=np.uint8)
  h, w = image.shape[:2]
  side = max(h, w)
  if side < MIN_DISPLAY_SIDE:
    factor = -(-MIN_DISPLAY_SIDE // side)  # ceil
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
  if side > MAX_DISPLAY_SIDE:
    scale = MAX_DISPLAY_SIDE / side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX), dtype=np.uint8)
  return image


def png_data_url(image: np.ndarray) -> str:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format='PNG')
  return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')


def _img_tag(image: ImageLike, caption: str, css_class: str = '') -> str:
  caption_html = html.escape(caption)
  if image is None:
    body = '<div class="missing">none</div>'
  else:
    try:
      if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image)
      body = f'<img src="{png_data_url(display_image(image))}" alt="{caption_html}">'
    except UserError as e:  # a page with one broken frame is still worth having
      body = f'<div class="missing">{html.escape(str(e))}</div>'
  cls = f'frame {css_class}'.strip()
  return f'<figure class="{cls}">{body}<figcaption>{caption_html}</figcaption></figure>'


def _format(value: Any) -> str:
  if value is None:
    return '–'
  if isinstance(value, float):
    return f'{value:.4f}'
  return str(value)


def _table(caption: str, rows: Sequence[Mapping[str, Any]]) -> str:
  columns: list[str] = []
  for row in rows:
    columns.extend(c for c in row if c not in columns)
  head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in columns)
  body = ''.join(
      '<tr>' + ''.join(f'<td>{html.escape(_format(row.get(c)))}</td>' for c in columns) + '</tr>'
      for row in rows)
  return (f'<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>'
          f'<tbody>{body}</tbody></table>')


def _item_block(item: ReportItem) -> str:
  frames = [_img_tag(item.src_frame, 'source'), _img_tag(item.tgt_frame, 'target')]
  if item.prediction is not None:
    frames.append(_img_tag(item.prediction, 'prediction'))
  for k, candidate in enumerate(item.candidates):
    score = item.verifier_scores[k] if k < len(item.verifier_scores) else None
    chosen = item.chosen == k
    caption = f'candidate {k}' + (f' · {score:.3f}' if score is not None else '')
    caption += ' · chosen' if chosen else ''
    frames.append(_img_tag(candidate, caption, 'candidate chosen' if chosen else 'candidate'))
  fields = ''.join(
      f'<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>'
      for k, v in item.fields.items())
  return (f'<section class="item"><h3>{html.escape(item.title)}</h3>'
          f'<p class="action">{html.escape(item.action)}</p>'
          f'<div class="frames">{"".join(frames)}</div>'
          + (f'<table class="fields">{fields}</table>' if fields else '') + '</section>')


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
caption { font-weight: bold; text-align: left; }
.item { border-top: 1px solid #ccc; padding: 0.5em 0; }
.action { font-style: italic; }
.frames { display: flex; flex-wrap: wrap; gap: 8px; }
.frame { margin: 0; text-align: center; }
.frame img { image-rendering: pixelated; border: 3px solid transparent; }
.candidate.chosen img { border-color: #d00; }
.missing { width: 128px; height: 128px; background: #eee; font-size: small; overflow: hidden; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.plot { margin: 0; }
.fields th, .fields td { text-align: left; font-weight: normal; max-width: 60em; }
"""


def write_html_report(path: str, title: str,
                      tables: Mapping[str, Sequence[Mapping[str, Any]]],
                      items: Sequence[Union[ReportItem, Mapping[str, Any]]],
                      notes: Sequence[str] = (),
                      figures: Mapping[str, np.ndarray] | None = None) -> str:
  """Writes the report and returns its path.

  Args:
    path: the .html file to write (its folder is created).
    title: page title.
    tables: caption -> rows, each row a mapping column -> value (e.g. one row per task).
    items: `ReportItem`s or mappings with the same keys.
    notes: sentences shown under the tables (skipped metrics, missing files, ...).
    figures: caption -> `uint8 [h, w, 3]` image (e.g. a plot), shown at its own size beside the
      tables.
  """
  items = [it if isinstance(it, ReportItem) else ReportItem(**it) for it in items]
  parts = [f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
           f'<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>']
  tables_html = ''.join(_table(caption, rows) for caption, rows in tables.items())
  if figures:
    figs = ''.join(f'<figure class="plot"><img src="{png_data_url(image)}" '
                   f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption>'
                   '</figure>' for caption, image in figures.items())
    parts.append(f'<div class="side"><div>{figs}</div><div>{tables_html}</div></div>')
  else:
    parts.append(tables_html)
  if notes:
    parts.append('<ul class="notes">' + ''.join(f'<li>{html.escape(n)}</li>' for n in notes)
                 + '</ul>')
  parts += [_item_block(item) for item in items]
  parts.append('</body></html>')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write('\n'.join(parts))
  os.replace(tmp, path)
  return path
