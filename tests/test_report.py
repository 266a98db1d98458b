"""The HTML report: tables first, then items with embedded frames and the chosen one marked."""

import base64
import html.parser
import io

import numpy as np
from PIL import Image

from jax_vlm.evaluation import report


class _Collector(html.parser.HTMLParser):
  """Collects tables' cell text, images (src, enclosing figure class) and figure captions."""

  def __init__(self):
    super().__init__()
    self.cells, self.images, self.captions, self.order = [], [], [], []
    self._figure_class, self._in_cell, self._in_caption = None, False, False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.order.append(tag)
    if tag == 'figure':
      self._figure_class = attrs.get('class', '')
    elif tag == 'img':
      self.images.append((attrs['src'], self._figure_class))
    elif tag in ('td', 'th'):
      self._in_cell = True
    elif tag == 'figcaption':
      self._in_caption = True

  def handle_endtag(self, tag):
    if tag in ('td', 'th'):
      self._in_cell = False
    elif tag == 'figcaption':
      self._in_caption = False

  def handle_data(self, data):
    if self._in_cell:
      self.cells.append(data)
    if self._in_caption:
      self.captions.append(data)


def _decode(src: str) -> np.ndarray:
  assert src.startswith('data:image/png;base64,')
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))))


def test_report_tables_items_and_chosen_candidate(tmp_path):
  rng = np.random.default_rng(0)
  tiny = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
  big = rng.integers(0, 256, (500, 1000, 3), dtype=np.uint8)
  path = report.write_html_report(
      str(tmp_path / 'sub' / 'r.html'), 'My <run>',
      {'per task': [{'task': 'ag', 'L1': 0.125, '#sample': 3},
                    {'task': 'all', 'L1': 0.25, '#sample': 7}]},
      [report.ReportItem(title='ag #0', action='Open the <b>door</b>', src_frame=tiny[0],
                         tgt_frame=tiny[1], candidates=tiny[2:5],
                         verifier_scores=[-3.0, -1.5, -2.0], chosen=1, fields={'L1': 0.5}),
       {'title': 'big #1', 'action': 'x', 'src_frame': big, 'tgt_frame': None}],
      notes=['DINO skipped.'])
  text = open(path, encoding='utf-8').read()
  parsed = _Collector()
  parsed.feed(text)

  # Tables come before any item; values and escaped text are there.
  assert parsed.order.index('table') < parsed.order.index('section')
  assert {'ag', '0.1250', '3', 'all', '0.2500', '7'} <= set(parsed.cells)
  assert '&lt;b&gt;door&lt;/b&gt;' in text and '<b>door</b>' not in text
  assert 'My &lt;run&gt;' in text and 'DINO skipped.' in text

  # 5 frames of item 0 (source, target, 3 candidates) and the big source of item 1.
  assert len(parsed.images) == 6
  chosen = [src for src, cls in parsed.images if 'chosen' in cls.split()]
  assert len(chosen) == 1
  assert any('candidate 1 · -1.500 · chosen' in c for c in parsed.captions)
  assert 'none' in text  # item 1 has no target

  # Tiny frames are upscaled by an integer factor with nearest neighbour: 8 -> 128 (x16).
  shown = _decode(chosen[0])
  assert shown.shape == (128, 128, 3)
  np.testing.assert_array_equal(shown[::16, ::16], tiny[3])
  np.testing.assert_array_equal(shown[15::16, 15::16], tiny[3])
  # Large frames are shrunk to the display size, keeping the aspect ratio.
  assert _decode(parsed.images[-1][0]).shape == (report.MAX_DISPLAY_SIDE // 2,
                                                 report.MAX_DISPLAY_SIDE, 3)


def test_report_reads_paths_and_survives_a_missing_file(tmp_path):
  image = np.full((4, 6, 3), 200, dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / 'a.png')
  path = report.write_html_report(
      str(tmp_path / 'r.html'), 't', {},
      [report.ReportItem(title='i', src_frame=str(tmp_path / 'a.png'),
                         tgt_frame=str(tmp_path / 'missing.png'))])
  text = open(path, encoding='utf-8').read()
  parsed = _Collector()
  parsed.feed(text)
  assert len(parsed.images) == 1
  # Longer side 6 -> the smallest integer factor reaching 128 is 22.
  assert _decode(parsed.images[0][0]).shape == (4 * 22, 6 * 22, 3)
  assert 'missing.png does not exist' in text
