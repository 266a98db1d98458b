"""The train step, objectives, optimizer and the train.py entry point (8 simulated CPU devices)."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import train_smoke
from jax_vlm.input import sources
from jax_vlm.training import optim
from jax_vlm.training import train_step as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One compilation cache for all child processes of this test session: children that build the same
# programs (same config) skip most of the compile time.
_COMPILE_CACHE = tempfile.mkdtemp(prefix='jax_vlm_test_compile_cache_')
# Steps and checkpoint interval shared by the train.py tests (same programs, so cache hits).
STEPS = 16
FLAGS = (f'--config.train.num_steps={STEPS}', '--config.train.checkpoint_every=2')


def subprocess_env(tmp_path) -> dict:
  """Env for child processes: 8 CPU devices (set before jax is imported there), fast compiles
  (XLA's backend optimisations off) and a compilation cache shared by the session's children."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                      '--xla_backend_optimization_level=0')
  env['JAX_PLATFORMS'] = 'cpu'
  del tmp_path
  env['JAX_COMPILATION_CACHE_DIR'] = _COMPILE_CACHE
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_DEFAULT_MATMUL_PRECISION'] = 'highest'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def train_cmd(workdir, *overrides, arg='fsdp'):
  return [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={REPO}/configs/train_smoke.py:{arg}',
          f'--workdir={workdir}', '--config.train.tensorboard=False', *overrides]


def run_python(code: str, tmp_path, timeout=240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=subprocess_env(tmp_path),
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


# --- pure pieces ------------------------------------------------------------------------------


def _batch(rng, b=4, s=12, vocab=256, tasks=(0, 1, 0, 1)):
  token_ids = rng.integers(1, vocab, size=(b, s)).astype(np.int32)
  w = np.zeros((b, s), np.float32)
  w[:, 6:] = rng.uniform(0.5, 1.5, size=(b, s - 6))
  return {'token_ids': token_ids, 'positions': np.tile(np.arange(s, dtype=np.int32), (b, 1)),
          'segment_ids': np.ones((b, s), np.int32), 'loss_weights': w,
          'task': np.asarray(tasks, np.int32)}


@pytest.mark.parametrize('tasks', [(0, 1, 0, 1), (0, 0, 0, 0), (1, 1, 1, 0)])
def test_objective_normalisation(tasks):
  """'tokens': one mean over all loss tokens; 'objective': each objective's own mean, averaged
  over the objectives present (weighted by the objective weights)."""
  rng = np.random.default_rng(3)
  batch = _batch(rng, tasks=tasks)
  batch['loss_weights'][np.asarray(tasks) == 0, :9] = 0.0  # IDP rows carry fewer loss tokens
  logits = jnp.asarray(rng.normal(size=(4, 12, 256)).astype(np.float32))
  ow = (1.0, 2.0)
  stats = jax.device_get(ts.token_statistics(logits, batch, ow))
  present = [name for t, name in enumerate(('idp', 'fdp')) if t in tasks]
  means = {n: stats[f'{n}_nll'] / stats[f'{n}_weight'] for n in present}
  w = {'idp': ow[0], 'fdp': ow[1]}
  want_objective = sum(w[n] * means[n] for n in present) / sum(w[n] for n in present)
  want_tokens = (sum(w[n] * stats[f'{n}_nll'] for n in present)
                 / sum(w[n] * stats[f'{n}_weight'] for n in present))
  for norm, want in (('objective', want_objective), ('tokens', want_tokens)):
    scales = ts.objective_scales(batch, ow, norm)
    got = jax.device_get(ts.token_statistics(logits, batch, scales))['weighted_nll']
    np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match='unknown loss normalization'):
    ts.objective_scales(batch, ow, 'rows')


def test_cross_entropy_matches_optax_value_and_gradient():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 7, 50)).astype(np.float32) * 3)
  targets = jnp.asarray(rng.integers(0, 50, size=(3, 7)), jnp.int32)
  g = jnp.asarray(rng.uniform(size=(3, 7)).astype(np.float32))
  nll, hit = ts.cross_entropy(logits, targets)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(hit, jnp.argmax(logits, -1) == targets)
  ours = jax.grad(lambda x: jnp.sum(ts.cross_entropy(x, targets)[0] * g))(logits)
  ref = jax.grad(lambda x: jnp.sum(
      optax.softmax_cross_entropy_with_integer_labels(x, targets) * g))(logits)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_token_statistics_separate_objectives():
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  logits = rng.normal(size=(4, 12, 256)).astype(np.float32)
  stats = jax.device_get(ts.token_statistics(jnp.asarray(logits), batch, (1.0, 2.0)))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp[:, :-1], batch['token_ids'][:, 1:, None], -1)[..., 0]
  w = batch['loss_weights'][:, 1:]
  hits = logits[:, :-1].argmax(-1) == batch['token_ids'][:, 1:]
  for task, name in enumerate(('idp', 'fdp')):
    rows = batch['task'] == task
    np.testing.assert_allclose(stats[f'{name}_nll'], (w * nll)[rows].sum(), rtol=1e-5)
    np.testing.assert_allclose(stats[f'{name}_weight'], w[rows].sum(), rtol=1e-6)
    assert stats[f'{name}_correct'] == (hits & (w > 0))[rows].sum()
  np.testing.assert_allclose(stats['weighted_nll'], stats['idp_nll'] + 2 * stats['fdp_nll'],
                             rtol=1e-6)


def test_learning_rate_warmup_and_cosine():
  t = train_smoke.get_config().train
  t.update(learning_rate=1.0, warmup_steps=2, num_steps=10, end_lr_ratio=0.1)
  lr = optim.learning_rate_schedule(t)
  np.testing.assert_allclose([lr(0), lr(1), lr(2), lr(10)], [0.0, 0.5, 1.0, 0.1], atol=1e-6)


@pytest.mark.parametrize('schedule, shares, want', [
    ('alternate', (1, 1), [[0] * 8, [1] * 8, [0] * 8]),
    ('alternate', (2, 1), [[0] * 8, [0] * 8, [1] * 8]),
    ('alternate', (1, 0), [[0] * 8, [0] * 8, [0] * 8]),
    ('mixed', (1, 1), [[0, 1] * 4] * 3),
])
def test_synthetic_source_follows_the_objective_schedule(schedule, shares, want):
  config = train_smoke.get_config()
  config.objectives.update(schedule=schedule, idp_share=shares[0], fdp_share=shares[1])
  source = sources.SyntheticSource(config, 8)
  got = [next(source)['task'].tolist() for _ in range(3)]
  assert got == want
  state = source.get_state()
  again = next(source)
  source.set_state(state)
  np.testing.assert_array_equal(next(source)['token_ids'], again['token_ids'])


# --- the entry point --------------------------------------------------------------------------


def test_train_py_runs_stages_logs_objectives_and_skips_done(tmp_path):
  workdir = tmp_path / 'run'
  env = subprocess_env(tmp_path)
  r = subprocess.run(train_cmd(workdir, *FLAGS, '--config.train.peak_flops=1e9'),
                     env=env, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  stage = workdir / 'train_dynamics'
  assert (stage / 'DONE').exists() and (stage / 'params').is_dir()
  lines = [json.loads(x) for x in open(stage / 'metrics.jsonl')]
  assert [m['step'] for m in lines] == list(range(1, STEPS + 1))
  # 'alternate' 1:1: IDP on odd steps, FDP on even ones, each logged under its own name.
  assert 'idp_loss' in lines[0] and 'fdp_loss' not in lines[0]
  assert 'fdp_loss' in lines[1] and 'fdp_accuracy' in lines[1] and 'idp_loss' not in lines[1]
  assert all(np.isfinite(m['loss']) and m['loss'] > 0 for m in lines)
  assert 0 < lines[-1]['tokens_per_s'] and 0 < lines[-1]['mfu']
  # A rerun finds the stage done and does not train again.
  before = (stage / 'metrics.jsonl').read_text()
  r = subprocess.run(train_cmd(workdir, *FLAGS), env=env,
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (stage / 'metrics.jsonl').read_text() == before
  assert 'is done' in r.stderr


def test_train_py_refuses_a_negative_augmentation_with_one_sentence(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'),
                      f'--config={REPO}/configs/action_world.py:smoke',
                      f'--workdir={tmp_path / "run"}', '--config.data.augment_copies=-1'],
                     env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last == ('error: data.augment_copies=-1 must be >= 0; set 0 for no augmentation.'), last
  assert not (tmp_path / 'run').exists()


def test_train_py_rejects_unknown_key_with_one_sentence(tmp_path):
  r = subprocess.run(train_cmd(tmp_path / 'run', '--config.train.lerning_rate=0.1'),
                     env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2  # a mistake in the command (jax_vlm/core/cli.py)
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --config.train.lerning_rate names a config key that does not '
                         'exist') and last.endswith('did you mean train.learning_rate?'), last
  assert not (tmp_path / 'run' / 'train_dynamics').exists()
