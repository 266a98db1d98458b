"""Tests of the VQGAN training step: loss goes down, k-means codebook start, dead-code restarts,
usage counts, save/load, and the loop's round-trip evaluation on a tiny world."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.action_world import WorldConfig
from jax_vlm.core.errors import UserError
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens.image_processing import frames_to_pixels, postprocess
from jax_vlm.training import vq_step
from jax_vlm.training import vq_training as vt
from jax_vlm.weights import vqgan_files

# 2x2 cells of 8 px: 16x16 frames, 2x2 codes.
WORLD = WorldConfig(rows=2, cols=2, colors=('red', 'blue'), shapes=('square', 'cross'),
                    min_objects=1, max_objects=2)
CFG = VQGANConfig(resolution=16, base_channels=32, channel_multiplier=(1, 1, 1, 1),
                  num_res_blocks=0, z_channels=32, embed_dim=8, num_embeddings=16)


def _frames(n, seed=0):
  return vt.random_frames(WORLD, n, np.random.default_rng(seed))


def _step_fn(model, tx, settings):
  return jax.jit(lambda s, x, r: vq_step.train_step(s, frames_to_pixels(x), r, model=model, tx=tx,
                                               settings=settings))


def test_train_step_reduces_loss_and_sets_codebook_from_features():
  model = VQGAN(CFG)
  tx = vq_step.make_optimizer(3e-3, 40, warmup_steps=2)
  settings = vq_step.VQTrainSettings(ae_warmup_steps=3, restart_every=0)
  state = vq_step.init_state(model, tx, jax.random.PRNGKey(0), WORLD.frame_shape)
  frames, _ = _frames(8)
  step = _step_fn(model, tx, settings)
  losses = []
  for i in range(12):
    before = state.params['quantizer']['embedding']
    state, metrics = step(state, frames, jax.random.PRNGKey(i))
    losses.append(float(metrics['l1'] + metrics['l2']))
    if i < 2:  # autoencoder warm-up: the codebook is untouched, no usage is counted
      np.testing.assert_array_equal(state.params['quantizer']['embedding'], before)
      assert float(state.usage.sum()) == 0
    if i == 3:
      # The first quantising step replaced the codebook by k-means centres of encoder features.
      _, features = model.apply({'params': state.params}, frames_to_pixels(frames),
                                method=VQGAN.encode)
      codebook = np.asarray(state.params['quantizer']['embedding'])
      flat = np.asarray(features).reshape(-1, CFG.embed_dim)
      spread = np.abs(flat).max()
      assert np.abs(codebook).max() < 3 * spread  # on the features' scale, not U(-1/n, 1/n)
      assert not np.allclose(codebook, before)
  assert int(state.step) == 12
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(state.usage.sum()) > 0  # quantising steps count code usage


def test_kmeans_codebook_finds_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 3)).astype(np.float32) * 10
  points = centres[rng.integers(0, 4, 400)] + rng.normal(size=(400, 3)).astype(np.float32) * 0.01
  codebook = np.asarray(vq_step.kmeans_codebook(jnp.asarray(points), 4, jax.random.PRNGKey(1), 5))
  # Every true centre has a code next to it.
  d = np.linalg.norm(centres[:, None] - codebook[None], axis=-1).min(1)
  assert (d < 0.1).all(), d


def test_restart_moves_only_dead_codes_onto_features():
  codebook = jnp.asarray(np.arange(12, dtype=np.float32).reshape(6, 2))
  dead = jnp.asarray([False, True, False, False, True, True])
  features = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 2)).astype(np.float32)
                         + 100.0)
  new = np.asarray(vq_step.restart_dead_codes(codebook, dead, features, jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(new[~np.asarray(dead)], np.asarray(codebook)[~np.asarray(dead)])
  flat = np.asarray(features).reshape(-1, 2)
  for row in new[np.asarray(dead)]:
    assert np.abs(flat - row).sum(1).min() < 0.1  # sits on one of the features


def test_dead_codes_restart_on_schedule():
  model = VQGAN(CFG)
  tx = vq_step.make_optimizer(1e-3, 10, warmup_steps=1)
  settings = vq_step.VQTrainSettings(ae_warmup_steps=0, restart_every=2, restart_min_usage=1e9)
  state = vq_step.init_state(model, tx, jax.random.PRNGKey(0), WORLD.frame_shape)
  frames, _ = _frames(4)
  step = _step_fn(model, tx, settings)
  restarted = []
  for i in range(5):
    state, metrics = step(state, frames, jax.random.PRNGKey(i))
    restarted.append(int(metrics['restarted_codes']))
  # Step 0 starts the codebook (k-means), then every 2 steps all codes (usage < 1e9) restart.
  assert restarted == [0, 0, CFG.num_embeddings, 0, CFG.num_embeddings]


def test_save_and_load_round_trip(tmp_path):
  model = VQGAN(CFG)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
  vqgan_files.save_vqgan(str(tmp_path / 'vq'), params, CFG, extra=dict(note=1))
  config, loaded = vqgan_files.load_vqgan(str(tmp_path / 'vq'))
  assert config == CFG
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), loaded)
  with pytest.raises(UserError, match='train_tokenizer'):
    vqgan_files.load_vqgan(str(tmp_path / 'missing'))


def test_frames_images_round_trip():
  frames, _ = _frames(3)
  np.testing.assert_array_equal(postprocess(frames_to_pixels(frames)), frames)


def test_train_vqgan_loop_logs_and_evaluates(tmp_path):
  settings = vq_step.VQTrainSettings(ae_warmup_steps=4, restart_every=3)
  result = vt.train_vqgan(CFG, WORLD, num_steps=6, batch_size=4, learning_rate=3e-3,
                          settings=settings, eval_every=3, val_frames=8, log_dir=str(tmp_path),
                          progress_bar=False, log_every=3)
  assert result.steps == 6
  logged = [h['step'] for h in result.history]
  assert logged == [1, 3, 6]
  assert 0.0 <= result.val_accuracy <= 1.0
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 3
  frames, scenes = _frames(5, seed=9)
  ev = vt.evaluate_frames(result.params, frames, scenes, WORLD, VQGAN(CFG), batch_size=4)
  assert ev['codes'].shape == (5, 2, 2) and ev['num_frames'] == 5
  assert 0.0 <= ev['frame_accuracy'] <= ev['cell_accuracy'] <= 1.0


def test_evaluate_frames_counts_exact_reads():
  # A "model" that returns the input frames exactly reads back every scene; a blank one reads
  # back none of the (non-empty) scenes.
  frames, scenes = _frames(6)
  identity = lambda p, f: (jnp.zeros((len(f), 2, 2), jnp.int32), None,
                           frames_to_pixels(f))
  ev = vt.evaluate_frames(None, frames, scenes, WORLD, None, batch_size=4, fn=identity)
  assert ev['frame_accuracy'] == 1.0 and ev['cell_accuracy'] == 1.0
  blank = lambda p, f: (jnp.zeros((len(f), 2, 2), jnp.int32), None, jnp.ones(f.shape))
  ev = vt.evaluate_frames(None, frames, scenes, WORLD, None, batch_size=4, fn=blank)
  assert ev['frame_accuracy'] == 0.0 and ev['cell_accuracy'] < 1.0


def test_settings_check():
  import ml_collections

  from configs import action_world
  cfg = action_world.get_config('smoke').vq_train
  assert vt.check_vq_settings(cfg).beta == 0.25
  bad = ml_collections.ConfigDict(cfg.to_dict())
  bad.l1_weight = bad.l2_weight = 0.0
  with pytest.raises(UserError, match='reconstruction'):
    vt.check_vq_settings(bad)
