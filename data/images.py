"""Reading image files of any common kind into 8-bit RGB arrays.

Data sets mix PNG and JPEG, grayscale, palette and RGBA files, and the odd 16-bit PNG; the image
tokenizer wants `uint8 [h, w, 3]`. Everything that reads a frame from disk goes through `load_rgb`,
so a bad file fails the same way everywhere: a `UserError` that names the file.

EXIF orientation is deliberately not applied: the reference pipelines (PIL `convert('RGB')`) do not
apply it either, and a benchmark's inputs and targets must be read the way its authors read them.
"""

import io
import os
from typing import Union

import numpy as np
from PIL import Image

from data.errors import UserError

PathLike = Union[str, os.PathLike]
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def _to_8bit(image: Image.Image) -> Image.Image:
  """16-bit and 32-bit integer / float grayscale -> 8-bit 'L' (full range kept)."""
  values = np.asarray(image)
  if image.mode in _SIXTEEN_BIT_MODES:
    values = values.astype(np.float64) / 257.0  # 65535 -> 255
  elif image.mode == 'I':
    # PIL opens 16-bit PNGs as 'I'; 8-bit data stored as 'I' keeps its values.
    values = values.astype(np.float64) / (257.0 if values.max(initial=0) > 255 else 1.0)
  else:  # 'F'
    values = values.astype(np.float64)
  return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), 'L')


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL image -> 8-bit RGB, with transparent pixels composited on a white background."""
  if image.mode == 'RGB':
    return image
  if image.mode in _SIXTEEN_BIT_MODES + ('I', 'F'):
    image = _to_8bit(image)
  rgba = np.asarray(image.convert('RGBA'))
  if not (rgba[..., 3] < 255).any():
    return image.convert('RGB')
  # Blend on white exactly as the reference does (float64, then truncation to uint8).
  alpha = rgba[..., 3:] / 255.0
  rgb = (1 - alpha) * 255 + alpha * rgba[..., :3]
  return Image.fromarray(rgb.astype(np.uint8), 'RGB')



def _to_rgb(image: Image.Image) -> np.ndarray:
  """PIL image of any mode -> uint8 [h, w, 3], the one conversion the image tokenizer uses too."""
  return np.asarray(to_rgb(image), dtype=np.uint8)


def load_rgb(path: PathLike) -> np.ndarray:
  """Reads an image file as 8-bit RGB.

  Grayscale is replicated to three channels, RGBA/LA/P-with-transparency are composited on white,
  16-bit grayscale is scaled to 8 bits.

  Args:
    path: an image file PIL can read (PNG, JPEG, ...).

  Returns:
    `uint8 [h, w, 3]`.

  Raises:
    UserError: the file is missing, is not a file, or cannot be decoded as an image.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f'Image file {path} does not exist; check the path or remove the item.')
  if not os.path.isfile(path):
    raise UserError(f'Image path {path} is not a file; point it at an image file.')
  try:
    with Image.open(path) as image:
      image.load()  # decode now, so truncated files fail here and not later
      return _to_rgb(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(
        f'Image file {path} could not be decoded ({type(e).__name__}: {e}); '
        'replace it or remove the item.') from e


def decode_rgb(data: bytes, name: str = '<bytes>') -> np.ndarray:
  """Decodes encoded image bytes (PNG, JPEG, ...) as `uint8 [h, w, 3]`; `name` goes in errors."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return _to_rgb(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(
        f'Image {name} could not be decoded ({type(e).__name__}: {e}); re-create it.') from e


def encode_png(image: np.ndarray) -> bytes:
  """`uint8 [h, w, 3]` -> PNG bytes (lossless)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def read_rgb_bytes(path: PathLike) -> tuple[bytes, str]:
  """Encoded bytes of an image whose decoding is 8-bit RGB, and their format ('png' or 'jpeg').

  8-bit RGB PNG and JPEG files are returned as they are (no re-encoding loss, no time spent);
  anything else (grayscale, alpha, palette, 16-bit, other formats) is converted with `load_rgb`
  and re-encoded as PNG. Raises UserError like `load_rgb`.
  """
  image = load_rgb(path)  # validates the file and gives the canonical pixels
  path = os.fspath(path)
  with Image.open(path) as probe:
    kind, mode = probe.format, probe.mode
  if mode == 'RGB' and kind in ('PNG', 'JPEG'):
    with open(path, 'rb') as f:
      return f.read(), kind.lower()
  return encode_png(image), 'png'


def resize_and_center_crop(image, size: int):
  """Shorter side -> `size` (Lanczos, aspect kept), then the centred square.

  A PIL image gives a PIL image (the image tokenizer's preprocessing); a `[h, w, 3]` array gives a
  `[size, size, 3]` uint8 array.
  """
  if not isinstance(image, Image.Image):
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(resize_and_center_crop(pil, size), dtype=np.uint8)
  width, height = image.size
  scale = size / min(width, height)
  image = image.resize((round(scale * width), round(scale * height)), Image.LANCZOS)
  x0 = (image.width - size) // 2
  y0 = (image.height - size) // 2
  return image.crop((x0, y0, x0 + size, y0 + size))
