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

from jax_vlm import image_processing
from jax_vlm.errors import UserError

PathLike = Union[str, os.PathLike]

def _to_rgb(image: Image.Image) -> np.ndarray:
  """PIL image of any mode -> uint8 [h, w, 3], the one conversion the image tokenizer uses too."""
  return np.asarray(image_processing.to_rgb(image), dtype=np.uint8)


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


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Scales the short side to `size`, crops the centre: `[h, w, 3]` -> `[size, size, 3]` uint8.

  The same resize (Lanczos) and crop as the image tokenizer's preprocessing.
  """
  pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
  return np.asarray(image_processing.resize_and_center_crop(pil, size), dtype=np.uint8)
