"""Image loading, AURORA / AURORA-BENCH and EPIC loaders, on fixtures in the released layouts."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import aurora, epic, images
from jax_vlm.core.errors import UserError

SAMPLE = '/work/shared/aurora_bench_sample'


def _save(path, array, mode=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
  image.save(path, **kwargs)
  return path


def _rgb(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- images ---------------------------------------------------------------------------------


def test_load_rgb_modes(tmp_path):
  rgb = _rgb(6, 5, 0)
  np.testing.assert_array_equal(images.load_rgb(_save(str(tmp_path / 'a.png'), rgb)), rgb)

  gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
  out = images.load_rgb(_save(str(tmp_path / 'g.png'), gray))
  assert out.shape == (5, 6, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))

  # RGBA: opaque pixels keep their colour, transparent ones become white, half-transparent blend.
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)
  rgba[0, 1] = (0, 0, 0, 0)
  rgba[1, 0] = (0, 0, 0, 128)
  out = images.load_rgb(_save(str(tmp_path / 'rgba.png'), rgba))
  assert out.shape == (2, 2, 3)
  np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
  np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
  assert 120 <= out[1, 0, 0] <= 135

  la = Image.fromarray(np.stack([np.full((3, 3), 0, np.uint8), np.zeros((3, 3), np.uint8)], -1),
                       'LA')
  la.save(tmp_path / 'la.png')
  np.testing.assert_array_equal(images.load_rgb(tmp_path / 'la.png'), 255)

  palette = Image.fromarray(rgb).convert('P', palette=Image.ADAPTIVE, colors=4)
  palette.save(tmp_path / 'p.png')
  out = images.load_rgb(tmp_path / 'p.png')
  assert out.shape == (6, 5, 3) and len(np.unique(out.reshape(-1, 3), axis=0)) <= 4

  # 16-bit grayscale: 65535 -> 255, 257 * k -> k.
  wide = np.array([[0, 257 * 10], [257 * 200, 65535]], np.uint16)
  Image.fromarray(wide).save(tmp_path / 'w16.png')
  with Image.open(tmp_path / 'w16.png') as probe:
    assert probe.mode in ('I;16', 'I')  # the case under test really is a 16-bit image
  out = images.load_rgb(tmp_path / 'w16.png')
  np.testing.assert_array_equal(out[..., 0], [[0, 10], [200, 255]])
  Image.fromarray(wide.astype(np.int32), 'I').save(tmp_path / 'i32.tif')
  with Image.open(tmp_path / 'i32.tif') as probe:
    assert probe.mode == 'I'
  np.testing.assert_array_equal(images.load_rgb(tmp_path / 'i32.tif')[..., 1], [[0, 10],
                                                                                 [200, 255]])

  jpeg = images.load_rgb(_save(str(tmp_path / 'j.jpg'), rgb, quality=95))
  assert jpeg.shape == (6, 5, 3)


def test_load_rgb_bad_files(tmp_path):
  with pytest.raises(UserError, match='missing.png does not exist'):
    images.load_rgb(tmp_path / 'missing.png')
  (tmp_path / 'junk.png').write_bytes(b'not an image at all')
  with pytest.raises(UserError, match='junk.png could not be decoded'):
    images.load_rgb(tmp_path / 'junk.png')
  # A truncated JPEG: the header parses, decoding the pixels fails.
  _save(str(tmp_path / 'full.jpg'), _rgb(64, 64, 1))
  data = (tmp_path / 'full.jpg').read_bytes()
  (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 3])
  with pytest.raises(UserError, match='cut.jpg'):
    images.load_rgb(tmp_path / 'cut.jpg')
  with pytest.raises(UserError, match='is not a file'):
    images.load_rgb(tmp_path)
  # The message is one sentence.
  with pytest.raises(UserError) as info:
    images.load_rgb(tmp_path / 'missing.png')
  assert str(info.value).count('.') <= 3 and '\n' not in str(info.value)


def test_read_rgb_bytes_keeps_rgb_and_reencodes_others(tmp_path):
  rgb = _rgb(7, 9, 2)
  path = _save(str(tmp_path / 'a.jpg'), rgb, quality=90)
  data, kind = images.read_rgb_bytes(path)
  assert kind == 'jpeg' and data == open(path, 'rb').read()
  gray = _save(str(tmp_path / 'g.png'), rgb[..., 0])
  data, kind = images.read_rgb_bytes(gray)
  assert kind == 'png'
  np.testing.assert_array_equal(images.decode_rgb(data), np.repeat(rgb[..., :1], 3, -1))
  crop = images.resize_and_center_crop(rgb, 4)
  assert crop.shape == (4, 4, 3) and crop.dtype == np.uint8


# --- AURORA-BENCH ---------------------------------------------------------------------------


def make_bench(root):
  """A small AURORA-BENCH in the released layout: test.json + data/<task>/images/..."""
  root = str(root)
  _save(f'{root}/data/magicbrush/images/70491/70491-input.png', _rgb(50, 50, 1))
  _save(f'{root}/data/magicbrush/images/70491/70491-output1.png', _rgb(64, 64, 2))
  _save(f'{root}/data/something/images/215668/first.jpg', _rgb(27, 48, 3))
  _save(f'{root}/data/something/images/215668/last.jpg', _rgb(27, 48, 4))
  _save(f'{root}/data/something/images/213316/first.jpg', _rgb(27, 48, 5))  # last.jpg not shipped
  _save(f'{root}/data/clevr/images/CLEVR_default_019598.png', _rgb(32, 48, 6))
  _save(f'{root}/data/emu/images/980.png', _rgb(40, 40, 7)[..., 0])  # grayscale PNG
  items = [
      {'input': 'data/magicbrush/images/70491/70491-input.png',
       'output': 'data/magicbrush/images/70491/70491-output1.png',
       'instruction': 'let the remote turn into a VR headset', 'task': 'magicbrush'},
      {'id': '215668', 'instruction': 'Moving cup away from pen',
       'input': 'data/something/images/215668/first.jpg',
       'output': 'data/something/images/215668/last.jpg', 'task': 'something'},
      {'id': '019598', 'instruction': 'add a red large sphere',
       'input': 'data/clevr/images/CLEVR_default_019598.png', 'task': 'clevr'},
      {'instruction': 'Change the background in oil painting.', 'input': 'data/emu/images/980.png',
       'type': 'style', 'task': 'emu'},
      {'id': '213316', 'instruction': 'Remove the lid of the left bottle with the hand',
       'input': 'data/something/images/213316/first.jpg',
       'output': 'data/something/images/213316/last.jpg', 'task': 'something'},
      # Bad entries: counted, never fatal.
      {'instruction': '   ', 'input': 'data/emu/images/980.png', 'task': 'emu'},
      {'instruction': 'no such input', 'input': 'data/emu/images/404.png', 'task': 'emu'},
      {'instruction': 'no task', 'input': 'data/emu/images/980.png'},
      'not an object',
  ]
  with open(f'{root}/test.json', 'w') as f:
    json.dump(items, f, indent=1)
  return root


def test_load_aurora_bench(tmp_path):
  root = make_bench(tmp_path / 'bench')
  items, report = aurora.load_aurora_bench(root)
  assert [i.index for i in items] == [0, 1, 2, 3, 4]
  assert [i.task for i in items] == ['magicbrush', 'something', 'clevr', 'emu', 'something']
  assert items[1].id == '215668' and items[0].id is None
  assert items[2].output_path is None and not items[2].has_target
  assert items[4].output_path.endswith('213316/last.jpg') and not items[4].has_target
  assert items[0].has_target and os.path.isabs(items[0].input_path)
  something = report.tasks['something']
  assert (something.items, something.with_target, something.no_target) == (2, 2, 0)
  assert something.target_missing == [os.path.join(root, 'data/something/images/213316/last.jpg')]
  assert something.scorable == 1
  assert (report.tasks['clevr'].no_target, report.tasks['emu'].no_target) == (1, 1)
  assert report.skipped == {'empty instruction': 1, 'input image missing': 1, 'no task': 1,
                            'entry is not an object': 1}
  assert report.num_items == 5
  text = report.summary()
  assert 'missing target' in text and 'skipped 1: empty instruction' in text
  # Mixed sizes and formats all load as RGB.
  shapes = {images.load_rgb(i.input_path).shape for i in items}
  assert shapes == {(50, 50, 3), (27, 48, 3), (32, 48, 3), (40, 40, 3)}
  # An instruction length limit, when asked for, skips and counts.
  items, report = aurora.load_aurora_bench(root, max_instruction_chars=30)
  assert [i.task for i in items] == ['something', 'clevr']
  assert report.skipped['instruction longer than 30 characters'] == 3


def test_bench_root_errors(tmp_path):
  with pytest.raises(UserError, match='has no test.json'):
    aurora.load_aurora_bench(tmp_path)
  (tmp_path / 'test.json').write_text('{"input": 1}')
  with pytest.raises(UserError, match='not a list'):
    aurora.load_aurora_bench(tmp_path)
  (tmp_path / 'test.json').write_text('[{"input": ')
  with pytest.raises(UserError, match='not valid JSON'):
    aurora.load_aurora_bench(tmp_path)


@pytest.mark.skipif(not os.path.isfile(os.path.join(SAMPLE, 'test.json')),
                    reason='the shared AURORA-BENCH sample is not on this machine')
def test_real_bench_sample():
  items, report = aurora.load_aurora_bench(SAMPLE)
  assert len(items) == 17 and len(report.tasks) == 8 and not report.skipped
  for task in ('clevr', 'emu', 'epic'):
    assert report.tasks[task].with_target == 0 and report.tasks[task].no_target == 2
  assert [os.path.basename(p) for p in report.tasks['something'].target_missing] == ['last.jpg']
  assert sum(c.scorable for c in report.tasks.values()) == 10
  for item in items:
    assert images.load_rgb(item.input_path).ndim == 3


# --- AURORA training data -------------------------------------------------------------------


def make_train(root):
  root = str(root)
  entries = []
  for k in range(3):
    _save(f'{root}/data/ag/images/X{k}.mp4_4_left.png', _rgb(20, 30, k))
    _save(f'{root}/data/ag/images/X{k}.mp4_4_right.png', _rgb(20, 30, 10 + k))
    entries.append({'instruction': f'Open the door {k}',
                    'input': f'data/ag/images/X{k}.mp4_4_left.png',
                    'output': f'data/ag/images/X{k}.mp4_4_right.png'})
  entries.append({'instruction': 'x' * 300, 'input': 'data/ag/images/X0.mp4_4_left.png',
                  'output': 'data/ag/images/X0.mp4_4_right.png'})
  entries.append({'instruction': 'target gone', 'input': 'data/ag/images/X0.mp4_4_left.png',
                  'output': 'data/ag/images/gone.png'})
  os.makedirs(f'{root}/data/ag', exist_ok=True)
  with open(f'{root}/data/ag/train.json', 'w') as f:
    json.dump(entries, f)
  _save(f'{root}/data/magicbrush/images/0-input.png', _rgb(24, 24, 5))
  _save(f'{root}/data/magicbrush/images/0-output.png', _rgb(24, 24, 6)[..., 0])
  with open(f'{root}/data/magicbrush/images/1-input.png', 'wb') as f:
    f.write(b'corrupt')
  _save(f'{root}/data/magicbrush/images/1-output.png', _rgb(24, 24, 7))
  with open(f'{root}/data/magicbrush/train.json', 'w') as f:
    json.dump([{'input': 'data/magicbrush/images/0-input.png', 'mask': '0-mask.png',
                'output': 'data/magicbrush/images/0-output.png',
                'instruction': 'change the table for a dog', 'img_id': '327726'},
               {'input': 'data/magicbrush/images/1-input.png', 'mask': '1-mask.png',
                'output': 'data/magicbrush/images/1-output.png',
                'instruction': 'leave only words', 'img_id': '435242'}], f)
  os.makedirs(f'{root}/data/something', exist_ok=True)
  _save(f'{root}/data/something/frames_validation_2K/36/first.jpg', _rgb(16, 16, 8))
  _save(f'{root}/data/something/frames_validation_2K/36/last.jpg', _rgb(16, 16, 9))
  with open(f'{root}/data/something/valid.json', 'w') as f:
    json.dump([{'id': '36', 'prompt': 'Make remote fall down', 'pos': 'Make remote stand up',
                'input': 'data/something/frames_validation_2K/36/first.jpg',
                'output': 'data/something/frames_validation_2K/36/last.jpg'}], f)
  return root


def test_load_aurora_train(tmp_path):
  root = make_train(tmp_path / 'aurora')
  assert aurora.aurora_tasks(root) == ['ag', 'magicbrush']
  items, report = aurora.load_aurora_train(root)
  assert [(i.task, i.index) for i in items] == [('ag', 0), ('ag', 1), ('ag', 2),
                                                 ('magicbrush', 0), ('magicbrush', 1)]
  assert all(i.has_target for i in items)
  assert report.skipped == {'instruction longer than 256 characters': 1,
                            'target image missing': 1}
  # The corrupt magicbrush input exists on disk, so the loader keeps it; reading it is what fails
  # (the TFDS builder counts that, see test_records.py).
  with pytest.raises(UserError, match='1-input.png'):
    images.load_rgb(items[-1].input_path)
  valid, report = aurora.load_aurora_train(root, split='valid')
  assert len(valid) == 1 and valid[0].instruction == 'Make remote fall down' and valid[0].id == '36'
  with pytest.raises(UserError, match='does not exist'):
    aurora.load_aurora_train(root, tasks=['kubric'])
  with pytest.raises(UserError, match='No data/<task>/train.json'):
    aurora.load_aurora_train(tmp_path / 'empty')


# --- EPIC-KITCHENS --------------------------------------------------------------------------


def test_load_epic_triplets(tmp_path):
  frames = tmp_path / 'frames'
  for video, frame in [('P01_01', 10), ('P01_01', 40), ('P02_03', 5), ('P02_03', 9),
                       ('P01_01', 100)]:
    _save(epic.frame_path(frames, video.split('_')[0], video, frame), _rgb(9, 16, frame))
  assert str(frames / 'P01' / 'rgb_frames' / 'P01_01' / 'frame_0000000010.jpg') == epic.frame_path(
      frames, 'P01', 'P01_01', 10)
  rows = [
      ('P01_01_0', 'P01', 'P01_01', 10, 40, 'open drawer', 'open'),
      ('P02_03_0', 'P02', 'P02_03', 5, 9, '  take   cup ', 'take'),
      ('P01_01_1', 'P01', 'P01_01', 40, 70, 'close drawer', 'close'),  # last frame missing
      ('P01_01_2', 'P01', 'P01_01', 40, 10, 'backwards', 'x'),  # stop before start
      ('P01_01_3', 'P01', 'P01_01', 10, 100, '', 'x'),  # empty narration
      ('P01_01_4', 'P01', 'P01_01', 10, 100, 'y' * 400, 'x'),  # over-long narration
      ('P01_01_5', 'P01', 'P01_01', 'ten', 100, 'bad number', 'x'),
      ('P03_01_0', 'P03', 'P03_01', 1, 2, 'missing video', 'x'),  # first frame missing
  ]
  csv_path = tmp_path / 'EPIC_100_train.csv'
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['narration_id', 'participant_id', 'video_id', 'narration_timestamp',
                     'start_timestamp', 'stop_timestamp', 'start_frame', 'stop_frame',
                     'narration', 'verb', 'verb_class', 'noun', 'noun_class', 'all_nouns',
                     'all_noun_classes'])
    for nid, pid, vid, start, stop, narration, verb in rows:
      writer.writerow([nid, pid, vid, '', '', '', start, stop, narration, verb, 0, '', 0, '', ''])
  triplets, report = epic.load_epic_triplets(csv_path, frames)
  assert [t.narration_id for t in triplets] == ['P01_01_0', 'P02_03_0']
  assert triplets[1].narration == 'take cup' and triplets[1].verb == 'take'
  assert triplets[0].src_path.endswith('frame_0000000010.jpg')
  assert triplets[0].tgt_path.endswith('frame_0000000040.jpg')
  assert (report.rows, report.kept) == (8, 2)
  assert report.skipped == {'last frame missing': 1, 'stop_frame not after start_frame': 1,
                            'empty action': 1, 'action longer than 256 characters': 1,
                            'start_frame/stop_frame not integers': 1, 'first frame missing': 1}
  # EPIC-55 style: no participant column (taken from video_id), 'uid' instead of narration_id.
  csv55 = tmp_path / 'EPIC_train_action_labels.csv'
  csv55.write_text('uid,video_id,narration,start_frame,stop_frame\n7,P02_03,put cup,5,9\n')
  triplets, report = epic.load_epic_triplets(csv55, frames)
  assert [(t.narration_id, t.participant_id, t.verb) for t in triplets] == [('7', 'P02', '')]
  bad = tmp_path / 'bad.csv'
  bad.write_text('video_id,narration\nP01_01,x\n')
  with pytest.raises(UserError, match='lacks the columns start_frame, stop_frame'):
    epic.load_epic_triplets(bad, frames)
  with pytest.raises(UserError, match='does not exist'):
    epic.load_epic_triplets(tmp_path / 'nope.csv', frames)
