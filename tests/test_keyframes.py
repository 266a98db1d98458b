"""Key-frame pairs from a rendered video: a textured square moving only in known frame ranges."""

import os

import cv2
import numpy as np
import pytest

from data import keyframes
from jax_vlm.core.errors import UserError

NUM_FRAMES = 120
# The square's position changes at frames t in [start, stop) (from frame t - 1 to frame t).
MOVING = [(15, 23), (55, 63), (95, 103)]


def render(num_frames=NUM_FRAMES, size=64):
  rng = np.random.default_rng(0)
  texture = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
  x, frames = 4, []
  for t in range(num_frames):
    if any(a <= t < b for a, b in MOVING):
      x += 2 if (t // 40) % 2 == 0 else -2
    frame = np.full((size, size, 3), 40, np.uint8)
    frame[20:32, x:x + 12] = texture
    frames.append(frame)
  return frames


def moving(t, slack=0):
  return any(a - slack <= t < b + slack for a, b in MOVING)


def check_spacing(key_frames, min_gap):
  assert key_frames == sorted(key_frames)
  assert all(b - a >= min_gap for a, b in zip(key_frames[:-1], key_frames[1:]))


def test_motion_scores_follow_the_motion():
  scores = keyframes.motion_scores(render())
  assert scores.shape == (NUM_FRAMES,) and scores.dtype == np.float32 and scores[0] == 0
  for t in range(NUM_FRAMES):
    if moving(t):
      assert scores[t] > 0.2, t
    else:
      assert scores[t] < 0.01, t


def test_key_frames_fall_in_moving_ranges_and_respect_spacing():
  frames = render()
  result = keyframes.extract_key_frame_pairs(frames, num_key_frames=6, min_gap=20)
  # Only three separated moving bursts, each shorter than the gap: one key frame each, and the
  # static frames (score 0) are never taken to fill up to six.
  assert len(result.key_frames) == 3
  for k, (a, b) in zip(result.key_frames, MOVING):
    assert a <= k < b
  check_spacing(result.key_frames, 20)
  assert result.pairs == list(zip(result.key_frames[:-1], result.key_frames[1:]))
  assert result.frames is None
  # A small gap allows several key frames per burst; all still move, all still spaced.
  result = keyframes.extract_key_frame_pairs(frames, num_key_frames=6, min_gap=3)
  assert len(result.key_frames) == 6 and all(moving(k) for k in result.key_frames)
  check_spacing(result.key_frames, 3)
  assert len(result.pairs) == 5
  # Fewer key frames than bursts: the highest-scoring ones.
  result = keyframes.extract_key_frame_pairs(frames, num_key_frames=2, min_gap=20)
  assert len(result.key_frames) == 2 and all(moving(k) for k in result.key_frames)
  assert len(result.pairs) == 1


def test_select_key_frames_greedy():
  scores = np.array([0, 5, 9, 8, 0, 0, 7, 1, 6, 0], np.float32)
  # Best first: 2 (9); 3 too close; 6 (7); 8 too close to 6 with gap 3; 1 too close to 2;
  # then only zero scores are left.
  assert keyframes.select_key_frames(scores, num_key_frames=4, min_gap=3) == [2, 6]
  assert keyframes.select_key_frames(scores, num_key_frames=4, min_gap=2) == [2, 6, 8]
  assert keyframes.select_key_frames(scores, num_key_frames=2, min_gap=1) == [2, 3]
  # min_motion keeps weak frames out; ties go to the earlier frame.
  assert keyframes.select_key_frames(scores, num_key_frames=9, min_gap=1, min_motion=5) == [2, 3,
                                                                                           6, 8]
  assert keyframes.select_key_frames(np.ones(5), num_key_frames=2, min_gap=2) == [0, 2]
  assert keyframes.select_key_frames(np.zeros(5), 3, 1) == []
  assert keyframes.pair_consecutive([3]) == []
  with pytest.raises(UserError):
    keyframes.select_key_frames(scores, num_key_frames=-1)


@pytest.mark.parametrize('suffix,fourcc', [('avi', 'MJPG'), ('mp4', 'mp4v')])
def test_video_file_round_trip(tmp_path, suffix, fourcc):
  frames = render()
  path = str(tmp_path / f'clip.{suffix}')
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10, (64, 64))
  if not writer.isOpened():
    pytest.skip(f'this OpenCV build cannot write {fourcc} {suffix} files')
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  decoded = keyframes.read_video(path)
  assert len(decoded) == NUM_FRAMES and decoded[0].shape == (64, 64, 3)
  assert np.abs(decoded[50].astype(int) - frames[50]).mean() < 8  # lossy, but the same picture
  # Compression noise gives static frames tiny scores; min_motion keeps them out.
  result = keyframes.extract_key_frame_pairs(path, num_key_frames=6, min_gap=20, min_motion=0.1)
  assert len(result.frames) == NUM_FRAMES
  assert len(result.key_frames) == 3 and all(moving(k, slack=1) for k in result.key_frames)
  check_spacing(result.key_frames, 20)
  assert len(keyframes.read_video(path, max_frames=10, stride=3)) == 10


def test_bad_videos(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    keyframes.read_video(tmp_path / 'none.mp4')
  (tmp_path / 'junk.mp4').write_bytes(b'\x00' * 100)
  with pytest.raises(UserError, match='junk.mp4'):
    keyframes.read_video(tmp_path / 'junk.mp4')
  with pytest.raises(UserError, match='share a size'):
    keyframes.motion_scores([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
  with pytest.raises(UserError, match='frames must be'):
    keyframes.motion_scores([np.zeros((8, 8, 4), np.uint8)])
  assert os.listdir(tmp_path) == ['junk.mp4']
