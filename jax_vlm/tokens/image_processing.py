"""Frames in and out of the VQGAN: Chameleon's image pre- and post-processing.

`preprocess` follows chameleon/inference/image_tokenizer.py so that our image codes match the
reference tokenizer's: transparency composited on white, shorter side resized to the target
resolution with Lanczos, centre crop, pixels scaled to [-1, 1]. We also accept grayscale and
16-bit images (converted to 8-bit RGB first), which the reference does not handle.
`postprocess` maps decoder output back to uint8 RGB; `frames_to_pixels` is the on-device input
conversion of uint8 frame batches (the world tokenizer's).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from data.images import resize_and_center_crop, to_rgb
from jax_vlm.core.errors import UserError


def load_image(path: str) -> Image.Image:
  """Opens and fully decodes an image file (so a corrupt file fails here, not later)."""
  if not os.path.isfile(path):
    raise UserError(f'image file {path} does not exist; check the path.')
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()  # detached from the file, palette and transparency kept
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise UserError(f'image file {path} is not a readable image ({e}); replace or remove '
                    'it.') from None


def _as_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[-1] not in (3, 4)) or (
          array.dtype == np.uint16 and array.ndim == 3):
    raise UserError(f'image array of dtype {array.dtype} and shape {array.shape} is not an image '
                    'we read; pass uint8 [h, w], [h, w, 3] or [h, w, 4], or uint16 [h, w].')
  return Image.fromarray(array)  # uint16 [h, w] becomes mode 'I;16'


def preprocess(image, resolution: int = 512) -> np.ndarray:
  """A PIL image or uint8/uint16 array -> `[resolution, resolution, 3]` float32 in [-1, 1]."""
  image = resize_and_center_crop(to_rgb(_as_pil(image)), resolution)
  pixels = np.asarray(image, np.float64) / 255.0
  return (pixels * 2 - 1).astype(np.float32)


def frames_to_pixels(frames) -> jax.Array:
  """uint8 frames `[b, h, w, 3]` -> float32 pixels in [-1, 1] on the device, inside jitted code
  (the tokenizer's training and round trips; `preprocess` is the reference's float64 host path)."""
  return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def postprocess(images) -> np.ndarray:
  """Decoder output `[..., h, w, 3]` in [-1, 1] -> uint8 RGB `[..., h, w, 3]`."""
  x = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  return np.round((x + 1.0) / 2.0 * 255.0).astype(np.uint8)
