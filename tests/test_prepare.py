"""Preparing real data: AURORA-layout triplets and rendered videos -> tokenized records.

A tiny random VQGAN (16 px, 8x8 codes, 16 codes) saved with save_vqgan stands in for Chameleon's;
the records must hold exactly the codes a direct VQGAN encode of the preprocessed images gives.
"""

import json
import os

import cv2
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from data import keyframes
from data.images import load_rgb
from data.records import RecordSource
from jax_vlm.core.errors import UserError
from jax_vlm.input.datasets import open_split
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens.image_processing import preprocess
from jax_vlm.tokens.sequences import recognition_weights
from jax_vlm.tools import prepare
from jax_vlm.weights import vqgan_files

CFG = VQGANConfig(resolution=16, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1,
                  z_channels=8, embed_dim=8, num_embeddings=16)


def _random_params(rng):
  """Random full VQGAN params from the abstract shapes (no init FLOPs: a real init of even this
  tiny model compiles for seconds): scaled normal kernels, zero biases, unit norm scales."""
  import flax

  from jax_vlm.weights.vqgan import expected_param_shapes
  flat = {}
  for path, shape in expected_param_shapes(CFG).items():
    if path[-1] == 'kernel':
      value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
    elif path[-1] == 'scale':
      value = np.ones(shape)
    elif path[-1] == 'embedding':
      value = rng.normal(0, 1, shape)
    else:
      value = np.zeros(shape)
    flat[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat)


@pytest.fixture(scope='module')
def vqgan(tmp_path_factory):
  """(directory, params, jitted encode) of a random VQGAN whose codebook spans its features."""
  model = VQGAN(CFG)
  rng = np.random.default_rng(0)
  params = _random_params(rng)
  encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method=VQGAN.encode))
  # A codebook drawn from encoder features, so random images use many codes (a codebook far
  # from the features lets one code win everywhere, which would make code equality a weak check).
  _, feats = encode(params, rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32))
  flat = np.asarray(feats).reshape(-1, CFG.embed_dim)
  params['quantizer']['embedding'] = flat[rng.choice(len(flat), 16, replace=False)]
  directory = str(tmp_path_factory.mktemp('vq') / 'vqgan')
  vqgan_files.save_vqgan(directory, params, CFG)
  return directory, params, encode


def _direct(vqgan, rgb_frames):
  """Codes [n, 64] and features of preprocessed frames, encoded directly (no prepare code)."""
  _, params, encode = vqgan
  images = np.stack([preprocess(f, CFG.resolution) for f in rgb_frames])
  codes, feats = encode(params, images)
  return np.asarray(codes).reshape(len(images), -1), np.asarray(feats)


def _image(path, seed, size=(28, 20), mode='RGB'):
  rng = np.random.default_rng(seed)
  array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  image = Image.fromarray(array)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.convert(mode).save(path)


@pytest.fixture
def aurora_root(tmp_path):
  """data/<task>/train.json for two tasks: 5 good items, one corrupt source image, one missing
  target, one empty instruction."""
  root = tmp_path / 'aurora'
  entries = {
      'magicbrush': [
          dict(input='data/magicbrush/images/0.png', output='data/magicbrush/images/0o.png',
               instruction='put a hat on the cat'),
          dict(input='data/magicbrush/images/1.jpg', output='data/magicbrush/images/1o.png',
               instruction='  make   it snowy '),
          dict(input='data/magicbrush/images/bad.png', output='data/magicbrush/images/0o.png',
               instruction='corrupt source'),
          dict(input='data/magicbrush/images/0.png', output='data/magicbrush/images/gone.png',
               instruction='missing target'),
      ],
      'something': [
          dict(input='data/something/images/a.png', output='data/something/images/b.png',
               instruction='pushing the cup left'),
          dict(input='data/something/images/b.png', output='data/something/images/a.png',
               instruction=''),
          dict(input='data/something/images/g.png', output='data/something/images/a.png',
               instruction='grayscale source'),
          dict(input='data/something/images/a.png', output='data/something/images/g.png',
               instruction='grayscale target'),
      ],
  }
  for seed, name in enumerate(['magicbrush/images/0.png', 'magicbrush/images/0o.png',
                               'magicbrush/images/1.jpg', 'magicbrush/images/1o.png',
                               'something/images/a.png', 'something/images/b.png']):
    _image(str(root / 'data' / name), seed, size=(28 + 4 * seed, 20))
  _image(str(root / 'data/something/images/g.png'), 9, size=(16, 24), mode='L')
  (root / 'data/magicbrush/images/bad.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')
  for task, items in entries.items():
    (root / 'data' / task / 'train.json').write_text(json.dumps(items))
  return root


def test_aurora_records_hold_the_direct_codes(vqgan, aurora_root, tmp_path):
  directory = vqgan[0]
  triplets, loader = prepare.aurora_triplets(aurora_root)
  assert dict(loader.skipped) == {'target image missing': 1, 'empty instruction': 1}
  out = tmp_path / 'out'
  report = prepare.prepare_triplets(triplets, directory, out / 'train', batch_size=2,
                                    source='aurora', loader_skipped=dict(loader.skipped),
                                    progress_bar=False, num_workers=2)
  good = [t for t in triplets if not t.src.endswith('bad.png')]
  assert report.items == 6 and report.written == 5 == len(good)
  assert dict(report.skipped) == {'source image unreadable': 1}
  assert report.skipped_items[0][:2] == ('magicbrush/train/2', 'source image unreadable')
  saved = json.loads((out / f'train{prepare.REPORT_SUFFIX}').read_text())
  assert saved['written'] == 5 and saved['skipped'] == {'source image unreadable': 1}
  assert saved['loader_skipped'] == {'target image missing': 1, 'empty instruction': 1}
  assert saved['code_grid'] == [8, 8] and saved['resolution'] == 16

  source = RecordSource.from_prefix(str(out / 'train'))
  examples = list(source)
  assert [e['example_id'] for e in examples] == [t.example_id for t in good]
  src_codes, src_feats = _direct(vqgan, [load_rgb(t.src) for t in good])
  tgt_codes, tgt_feats = _direct(vqgan, [load_rgb(t.tgt) for t in good])
  assert len(np.unique(src_codes)) > 4  # the check below compares informative codes
  for i, (ex, t) in enumerate(zip(examples, good)):
    assert ex['src_codes'].dtype == np.int32 and ex['src_codes'].shape == (64,)
    np.testing.assert_array_equal(ex['src_codes'], src_codes[i])
    np.testing.assert_array_equal(ex['tgt_codes'], tgt_codes[i])
    rw = ex['recognition_weights']
    assert rw.dtype == np.float32 and rw.shape == (64,)
    np.testing.assert_allclose(rw.mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(rw, recognition_weights(src_feats[i], tgt_feats[i]), rtol=1e-4,
                               atol=1e-5)
    assert ex['action'] == ' '.join(t.action.split()) and ex['action_type'] == t.action_type
    assert ex['split'] == 'train' and ex['source'] == 'aurora'
  assert examples[1]['action'] == 'make it snowy'
  assert saved['codes_used'] == len(np.unique(np.concatenate([src_codes, tgt_codes])))

  # The trainer finds it under data.dir with train_splits=('train',).
  data_cfg = ml_collections.ConfigDict(dict(dir=str(out), train_splits=('train',)))
  assert len(open_split(data_cfg, 'train')) == 5
  with pytest.raises(UserError, match='already holds a record set'):
    prepare.prepare_triplets(triplets, directory, out / 'train', progress_bar=False)


def test_tuples_arrays_and_bad_actions(vqgan, tmp_path):
  rng = np.random.default_rng(1)
  frames = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
  items = [
      (frames[0], frames[1], 'open the drawer', 'open', 'a'),
      (frames[1], frames[1], 'x' * 300, 'open', 'too-long'),
      (frames[1], str(tmp_path / 'nope.png'), 'close it', 'close', 'missing'),
      (frames[1], frames[1], 'nothing changes', 'wait', 'same', dict(src_frame_index=7)),
      (frames[2], frames[0]),  # malformed
      dict(src=frames[2], tgt=frames[0], action='turn', action_type='t', example_id='dict'),
  ]
  report = prepare.prepare_triplets(iter(items), vqgan[0], tmp_path / 'o' / 'train',
                                    batch_size=4, progress_bar=False, num_workers=0)
  assert report.written == 3
  assert dict(report.skipped) == {'action longer than 256 characters': 1,
                                  'target image missing': 1, 'malformed item': 1}
  a, same, from_dict = RecordSource.from_prefix(str(tmp_path / 'o' / 'train'))
  codes, _ = _direct(vqgan, [frames[0], frames[1], frames[2]])
  np.testing.assert_array_equal(a['src_codes'], codes[0])
  np.testing.assert_array_equal(a['tgt_codes'], codes[1])
  # Identical frames: every position weighs 1.
  np.testing.assert_array_equal(same['recognition_weights'], np.ones(64, np.float32))
  assert same['src_frame_index'] == 7
  assert from_dict['example_id'] == 'dict'
  np.testing.assert_array_equal(from_dict['src_codes'], codes[2])


def _render_video(path, moving=((15, 23), (55, 63), (95, 103)), num_frames=120, size=64):
  rng = np.random.default_rng(0)
  texture = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, (size, size))
  if not writer.isOpened():
    pytest.skip('this OpenCV build cannot write MJPG avi files')
  x = 4
  for t in range(num_frames):
    if any(a <= t < b for a, b in moving):
      x += 2 if (t // 40) % 2 == 0 else -2
    frame = np.full((size, size, 3), 40, np.uint8)
    frame[20:32, x:x + 12] = texture
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


def test_videos_to_unlabelled_pairs(vqgan, tmp_path):
  videos = tmp_path / 'videos'
  videos.mkdir()
  clip = str(videos / 'clip.avi')
  _render_video(clip)
  (videos / 'broken.mp4').write_bytes(b'not a video')
  # The streaming two-pass extraction picks what the in-memory one picks.
  result, frames = prepare.video_key_frames(clip, 6, 20, min_motion=0.1)
  reference = keyframes.extract_key_frame_pairs(clip, 6, 20, min_motion=0.1)
  assert result.key_frames == reference.key_frames and len(result.key_frames) == 3
  np.testing.assert_array_equal(result.scores, reference.scores)
  for k in result.key_frames:
    np.testing.assert_array_equal(frames[k], reference.frames[k])

  out = tmp_path / 'out'
  assert prepare.main(['videos', '--videos', str(videos), '--vqgan', vqgan[0], '--out', str(out),
                       '--kf', '6', '--if', '20', '--min-motion', '0.1', '--batch-size', '1',
                       '--no-progress']) == 0
  saved = json.loads((out / f'unlabelled{prepare.REPORT_SUFFIX}').read_text())
  assert saved['skipped'] == {'video unreadable': 1} and saved['videos'] == 1
  assert saved['pairs'] == 2 and saved['written'] == 2
  examples = list(RecordSource.from_prefix(str(out / 'unlabelled')))
  k0, k1, k2 = result.key_frames
  assert [(e['src_frame_index'], e['tgt_frame_index']) for e in examples] == [(k0, k1), (k1, k2)]
  assert all(e['action'] == '' and e['action_type'] == '' for e in examples)
  assert all(e['split'] == 'unlabelled' and e['video'] == clip for e in examples)
  codes, _ = _direct(vqgan, [frames[k] for k in result.key_frames])
  np.testing.assert_array_equal(examples[0]['src_codes'], codes[0])
  np.testing.assert_array_equal(examples[1]['src_codes'], codes[1])
  np.testing.assert_array_equal(examples[1]['tgt_codes'], codes[2])


def test_cli_aurora_and_errors(vqgan, aurora_root, tmp_path, capsys):
  out = tmp_path / 'out'
  args = ['aurora', '--root', str(aurora_root), '--vqgan', vqgan[0], '--out', str(out),
          '--tasks', 'something', '--no-progress']
  assert prepare.main(args) == 0
  assert len(RecordSource.from_prefix(str(out / 'train'))) == 3
  capsys.readouterr()

  def error(argv):
    assert prepare.main(argv) == 1  # runtime input errors exit 1 (jax_vlm/core/cli.py)
    message = capsys.readouterr().err.strip()
    assert message.startswith('error: ') and message.count('\n') == 0
    return message

  assert 'already holds a record set' in error(args)
  assert 'AURORA root' in error(['aurora', '--root', str(tmp_path / 'none'), '--vqgan',
                                 vqgan[0], '--out', str(out)])
  message = error(['aurora', '--root', str(aurora_root), '--vqgan', str(tmp_path), '--out',
                   str(out)])
  assert f'VQGAN directory {tmp_path}' in message and 'jax_vlm.convert vqgan' in message
  assert 'does not exist' in error(['epic', '--csv', str(tmp_path / 'x.csv'), '--frames-root',
                                    str(tmp_path), '--vqgan', vqgan[0], '--out', str(out)])
  assert 'Video path' in error(['videos', '--videos', str(tmp_path / 'v.mp4'), '--vqgan',
                                vqgan[0], '--out', str(out)])
  # EPIC: a segment's first and last frame, in the EPIC-KITCHENS layout.
  frames_root = tmp_path / 'epic'
  for n, seed in ((1, 1), (30, 2), (31, 3)):
    _image(str(frames_root / f'P01/rgb_frames/P01_11/frame_{n:010d}.jpg'), seed, size=(32, 18))
  csv = tmp_path / 'EPIC_100_train.csv'
  csv.write_text('narration_id,video_id,start_frame,stop_frame,narration,verb\n'
                 'P01_11_0,P01_11,1,30,open fridge,open\n'
                 'P01_11_1,P01_11,30,99,close fridge,close\n'  # last frame missing
                 'P01_11_2,P01_11,30,31,,take\n')  # no narration
  assert prepare.main(['epic', '--csv', str(csv), '--frames-root', str(frames_root), '--vqgan',
                       vqgan[0], '--out', str(out), '--name', 'epic', '--no-progress']) == 0
  (ex,) = RecordSource.from_prefix(str(out / 'epic'))
  assert (ex['example_id'], ex['action'], ex['action_type']) == ('P01_11_0', 'open fridge', 'open')
  assert (ex['src_frame_index'], ex['tgt_frame_index'], ex['source']) == (1, 30, 'epic')
  codes, _ = _direct(vqgan, [load_rgb(frames_root / f'P01/rgb_frames/P01_11/frame_{n:010d}.jpg')
                             for n in (1, 30)])
  np.testing.assert_array_equal(np.stack([ex['src_codes'], ex['tgt_codes']]), codes)
  saved = json.loads((out / f'epic{prepare.REPORT_SUFFIX}').read_text())
  assert saved['loader_skipped'] == {'last frame missing': 1, 'empty action': 1}
  capsys.readouterr()

  # Params that do not fit the config fail before any data is read.
  bad = tmp_path / 'badvq'
  vqgan_files.save_vqgan(str(bad), {'encoder': {}}, CFG)
  assert 'do not fit' in error(['aurora', '--root', str(aurora_root), '--vqgan', str(bad),
                                '--out', str(tmp_path / 'o2')])


def test_convert_cli_writes_a_vqgan_directory(vqgan, tmp_path):
  torch = pytest.importorskip('torch')
  yaml = pytest.importorskip('yaml')
  from jax_vlm.tools import convert as convert_cli
  from jax_vlm.weights.vqgan import vqgan_params_to_torch_state_dict
  _, params, _ = vqgan
  ckpt = str(tmp_path / 'vqgan.ckpt')
  torch.save({'state_dict': vqgan_params_to_torch_state_dict(params)}, ckpt)
  ddconfig = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
                  ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
  yaml_path = str(tmp_path / 'vqgan.yaml')
  with open(yaml_path, 'w') as f:
    yaml.safe_dump({'model': {'params': {'embed_dim': 8, 'n_embed': 16, 'ddconfig': ddconfig}}}, f)
  dst = str(tmp_path / 'converted')
  assert convert_cli.main(['vqgan', '--ckpt', ckpt, '--yaml', yaml_path, dst]) == 0
  config, loaded = vqgan_files.load_vqgan(dst)
  assert config == CFG
  jax.tree.map(np.testing.assert_allclose, jax.tree.map(np.asarray, params), loaded)
  assert prepare.load_vqgan_dir(dst)[0] == CFG
