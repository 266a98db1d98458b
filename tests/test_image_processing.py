"""Chameleon's image pre/post-processing: modes, transparency, resize + crop, round trip."""

import numpy as np
import pytest
from PIL import Image

from jax_vlm.core.errors import UserError
from jax_vlm.tokens.image_processing import load_image, postprocess, preprocess, to_rgb


def _scaled(values) -> np.ndarray:
  """uint8 pixel values -> the [-1, 1] floats preprocess produces."""
  return (np.asarray(values, np.float64) / 255.0 * 2 - 1).astype(np.float32)


def test_rgba_is_composited_on_white():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
  rgba[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
  rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue -> light blue
  rgba[1:] = (10, 20, 30, 255)
  out = preprocess(rgba, 4)  # 4x4 at resolution 4: no resampling
  np.testing.assert_array_equal(out[0, 0], _scaled([255, 0, 0]))
  np.testing.assert_array_equal(out[0, 1], _scaled([255, 255, 255]))
  # (1 - 128/255) * 255 = 127 of white plus 128/255 of the blue channel's 255 -> 255.
  np.testing.assert_allclose(out[0, 2], _scaled([127, 127, 255]), atol=1.01 * 2 / 255)
  np.testing.assert_array_equal(out[1:], np.broadcast_to(_scaled([10, 20, 30]), (3, 4, 3)))


def test_la_and_palette_transparency():
  la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), 'LA')
  np.testing.assert_array_equal(np.asarray(to_rgb(la)), [[[255] * 3, [50] * 3]])

  palette = Image.new('P', (2, 1))
  palette.putpalette([0, 200, 0] + [9, 9, 9] * 255)
  palette.putpixel((0, 0), 0)
  palette.putpixel((1, 0), 1)
  palette.info['transparency'] = 0  # palette entry 0 is transparent
  np.testing.assert_array_equal(np.asarray(to_rgb(palette)), [[[255] * 3, [9] * 3]])

  opaque = Image.fromarray(np.full((2, 2, 4), 77, np.uint8), 'RGBA')
  opaque.putalpha(255)
  np.testing.assert_array_equal(np.asarray(to_rgb(opaque)), np.full((2, 2, 3), 77))


def test_grayscale_and_16_bit_become_8_bit_rgb():
  gray = np.array([[0, 128], [255, 7]], np.uint8)
  out = preprocess(gray, 2)
  assert out.shape == (2, 2, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.repeat(_scaled(gray)[..., None], 3, axis=-1))

  sixteen = np.array([[0, 65535], [257 * 100, 257 * 3]], np.uint16)  # 'I;16'
  expected = np.repeat(_scaled([[0, 255], [100, 3]])[..., None], 3, axis=-1)
  np.testing.assert_array_equal(preprocess(sixteen, 2), expected)
  # PIL opens 16-bit PNGs as mode 'I' (32-bit ints).
  as_i = Image.fromarray(sixteen.astype(np.int32))
  assert as_i.mode == 'I'
  np.testing.assert_array_equal(preprocess(as_i, 2), expected)

  with pytest.raises(UserError, match='float64'):
    preprocess(np.zeros((4, 4, 3)), 4)


def test_output_shape_and_range():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
  out = preprocess(Image.fromarray(image), 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  assert out.min() >= -1 and out.max() <= 1 and out.std() > 0.1


def test_resize_and_center_crop_by_hand():
  rng = np.random.default_rng(1)
  # 12 wide x 4 high at resolution 4: shorter side already 4, so no resize; crop x0 = (12-4)//2.
  wide = rng.integers(0, 256, (4, 12, 3), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess(wide, 4), _scaled(wide[:, 4:8]))

  # 10 wide x 7 high at resolution 4: scale 4/7, new size (round(5.71), 4) = (6, 4); x0 = 1.
  image = Image.fromarray(rng.integers(0, 256, (7, 10, 3), dtype=np.uint8))
  resized = np.asarray(image.resize((6, 4), Image.LANCZOS))
  np.testing.assert_array_equal(preprocess(image, 4), _scaled(resized[:, 1:5]))

  # 8 wide x 16 high at resolution 4: new size (4, 8); y0 = 2.
  tall = Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8))
  resized = np.asarray(tall.resize((4, 8), Image.LANCZOS))
  np.testing.assert_array_equal(preprocess(tall, 4), _scaled(resized[2:6]))

  # Upscaling: a flat colour stays flat.
  flat = np.full((3, 5, 3), (200, 100, 50), np.uint8)
  np.testing.assert_array_equal(preprocess(flat, 6), np.broadcast_to(_scaled([200, 100, 50]),
                                                                     (6, 6, 3)))


def test_postprocess_exact_values_and_inverse():
  x = np.array([-1.0, 1.0, 0.0, -3.0, 2.0, 0.5, -0.5], np.float32)
  # (x + 1) / 2 * 255 = 0, 255, 127.5 (rounds to even: 128), clipped 0, clipped 255, 191.25, 63.75
  np.testing.assert_array_equal(postprocess(x[None, None, :3]), [[[0, 255, 128]]])
  np.testing.assert_array_equal(postprocess(x[None, None, 3:6]), [[[0, 255, 191]]])
  assert postprocess(x[None, None, 4:7]).tolist() == [[[255, 191, 64]]]
  all_values = np.arange(256, dtype=np.uint8).reshape(4, 64)
  image = np.stack([all_values, all_values[::-1], all_values.T.reshape(4, 64)], axis=-1)
  batch = np.stack([preprocess(image[:, :4], 4), preprocess(image[:, 4:8], 4)])
  np.testing.assert_array_equal(postprocess(batch), np.stack([image[:, :4], image[:, 4:8]]))
  assert postprocess(batch).dtype == np.uint8


def test_load_image(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    load_image(str(tmp_path / 'missing.png'))
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\n but not really')
  with pytest.raises(UserError, match='not a readable image'):
    load_image(str(corrupt))

  good = tmp_path / 'frame.png'
  pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 4), dtype=np.uint8)
  Image.fromarray(pixels, 'RGBA').save(good)
  truncated = tmp_path / 'truncated.png'
  truncated.write_bytes(good.read_bytes()[:200])
  with pytest.raises(UserError, match='truncated.png is not a readable image'):
    load_image(str(truncated))

  loaded = load_image(str(good))
  assert loaded.mode == 'RGBA' and loaded.size == (48, 32)
  np.testing.assert_array_equal(np.asarray(loaded), pixels)
  sixteen = tmp_path / 'depth.png'
  Image.fromarray(np.full((4, 4), 257 * 200, np.uint16)).save(sixteen)
  np.testing.assert_array_equal(preprocess(load_image(str(sixteen)), 4), np.full((4, 4, 3),
                                                                                 _scaled(200)))
