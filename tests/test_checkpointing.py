"""Checkpoints: exact resume after SIGKILL, clean exit on SIGTERM, corrupt checkpoints, NaN stop."""

import json
import os
import random
import signal
import subprocess
import time

import numpy as np

from jax_vlm.training import checkpointing
from jax_vlm.training.metrics_writer import read_jsonl
from tests.test_train import FLAGS, STEPS, run_python, subprocess_env, train_cmd


def _logged_step(workdir) -> int:
  path = os.path.join(workdir, 'train_dynamics', 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  steps = [0]
  for line in open(path):
    try:
      steps.append(json.loads(line)['step'])
    except ValueError:
      pass
  return max(steps)


def _saved_steps(workdir) -> list[int]:
  """Finished checkpoints (Orbax renames a step's temporary folder to its number when done)."""
  path = os.path.join(workdir, 'train_dynamics', 'checkpoints')
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _start_and_signal(workdir, env, at_step: int, sig) -> subprocess.CompletedProcess:
  """Runs train.py and sends `sig` once this process has saved a new checkpoint and logged
  `at_step`; returns the finished process."""
  before = max(_saved_steps(workdir), default=0)
  proc = subprocess.Popen(train_cmd(workdir, *FLAGS), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 200
  while ((max(_saved_steps(workdir), default=0) <= before or _logged_step(workdir) < at_step)
         and proc.poll() is None and time.time() < deadline):
    time.sleep(0.005)
  if proc.poll() is not None:
    _, err = proc.communicate()
    raise AssertionError(f'train.py ended (exit {proc.returncode}) before it could be interrupted; '
                         f'its stderr ends:\n{err[-3000:]}')
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _final(workdir):
  stage = os.path.join(workdir, 'train_dynamics')
  params = checkpointing.load_params(os.path.join(stage, 'params'))
  losses = {m['step']: m['loss'] for m in read_jsonl(os.path.join(stage, 'metrics.jsonl'))}
  return params, losses


def test_resume_after_sigkill_and_sigterm_is_exact(tmp_path):
  env = subprocess_env(tmp_path)
  reference, interrupted = tmp_path / 'reference', tmp_path / 'interrupted'
  r = subprocess.run(train_cmd(reference, *FLAGS), env=env, capture_output=True, text=True,
                     timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]

  seed = random.randrange(1 << 30)
  kill_at = random.Random(seed).randint(3, 8)
  print(f'SIGKILL at step {kill_at} (seed {seed})')
  r = _start_and_signal(interrupted, env, kill_at, signal.SIGKILL)
  assert r.returncode == -signal.SIGKILL
  stage = interrupted / 'train_dynamics'
  assert not (stage / 'DONE').exists()

  # Restarted, then preempted: finishes its step, saves, exits 0 without marking the stage done.
  r = _start_and_signal(interrupted, env, kill_at + 2, signal.SIGTERM)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resuming from step' in r.stdout + r.stderr
  assert 'Preempted: saved step' in r.stdout + r.stderr
  saved = int((r.stdout + r.stderr).split('Preempted: saved step ')[1].split()[0])
  assert saved > kill_at and saved < STEPS
  assert (stage / 'checkpoints' / str(saved)).is_dir()
  assert not (stage / 'DONE').exists()

  r = subprocess.run(train_cmd(interrupted, *FLAGS), env=env, capture_output=True, text=True,
                     timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (stage / 'DONE').exists()

  ref_params, ref_losses = _final(reference)
  got_params, got_losses = _final(interrupted)
  assert sorted(got_losses) == list(range(1, STEPS + 1))  # every step logged once
  assert got_losses == ref_losses
  flat_ref, flat_got = (dict(_flatten(p)) for p in (ref_params, got_params))
  assert flat_ref.keys() == flat_got.keys()
  for k in flat_ref:
    np.testing.assert_array_equal(flat_got[k], flat_ref[k], err_msg=k)
  # Only the last `keep_checkpoints` (3) remain.
  assert _saved_steps(interrupted) == [STEPS - 4, STEPS - 2, STEPS]


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, f'{prefix}/{k}')
  else:
    yield prefix, np.asarray(tree)


CORRUPT_RUN = """
import glob, os
from configs import train_smoke
from jax_vlm.training import trainer
from jax_vlm.training.metrics_writer import read_jsonl

workdir = WORKDIR
config = train_smoke.get_config('fsdp')
config.train.update(num_steps=4, checkpoint_every=2, tensorboard=False)
assert trainer.Trainer(config, workdir).run()['status'] == 'done'
# Truncate every data file of the latest checkpoint's train state.
for f in glob.glob(os.path.join(workdir, 'checkpoints', '4', 'state', '**', '*'), recursive=True):
  if os.path.isfile(f) and os.path.getsize(f) > 0:
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 3)
config.train.num_steps = 6
result = trainer.Trainer(config, workdir).run()
print('STATUS', result['status'], result['step'])
print('STEPS', [m['step'] for m in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))])
print('CKPTS', sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))))
"""


def test_corrupt_latest_checkpoint_is_reported_and_previous_used(tmp_path):
  r = run_python(CORRUPT_RUN.replace('WORKDIR', repr(str(tmp_path / 'w'))), tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout + r.stderr
  assert 'Checkpoint step 4 in' in out and 'is unreadable' in out and 'using the previous' in out
  assert 'Resuming from step 2' in out
  assert 'STATUS done 6' in out
  assert 'STEPS [1, 2, 3, 4, 5, 6]' in out
  assert 'CKPTS [2, 4, 6]' in out  # step 4 was written again after the resume
  assert (tmp_path / 'w' / 'corrupt_checkpoints' / '4').is_dir()


NAN_RUN = """
import os
import numpy as np
from configs import train_smoke
from jax_vlm.input import sources
from jax_vlm.training import checkpointing
from jax_vlm.training import trainer
import jax

class NaNAtStep3(sources.SyntheticSource):
  def __next__(self):
    batch = super().__next__()
    if self.step == 3:
      batch['loss_weights'] = np.full_like(batch['loss_weights'], np.nan)
    return batch

workdir = WORKDIR
config = train_smoke.get_config('fsdp')
config.train.update(num_steps=6, checkpoint_every=2, log_every=4, tensorboard=False)
t = trainer.Trainer(config, workdir, batch_source=NaNAtStep3(config, 8))
try:
  t.run()
except trainer.NonFiniteLoss as e:
  print('ERROR', e)
print('CKPTS', sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))))
ckpts = checkpointing.TrainCheckpoints(os.path.join(workdir, 'checkpoints'))
abstract = checkpointing.abstract_with_shardings(t.abstract_state, t.state_shardings)
step, state, data = ckpts.restore(abstract)
ok = all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(state.params))
print('RESTORED', step, data, ok)
"""


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  r = run_python(NAN_RUN.replace('WORKDIR', repr(str(tmp_path / 'w'))), tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  line = next(x for x in r.stdout.splitlines() if x.startswith('ERROR'))
  assert 'non-finite (nan) at step 3' in line and 'last good checkpoint is step 2' in line
  assert 'CKPTS [2]' in r.stdout
  assert "RESTORED 2 {'step': 2} True" in r.stdout


PAUSE_RUN = """
import os
import jax
import numpy as np
from configs import train_smoke
from jax_vlm.training import trainer

config = train_smoke.get_config('fsdp')
config.train.update(num_steps=5, checkpoint_every=4, tensorboard=False)
whole = trainer.Trainer(config, os.path.join(WORKDIR, 'whole'))
assert whole.run()['status'] == 'done'
paused = trainer.Trainer(config, os.path.join(WORKDIR, 'paused'))
r = paused.run(until=3)
print('FIRST', r['status'], r['step'], int(paused.final_state.step))
print('CKPTS', sorted(int(d) for d in os.listdir(os.path.join(WORKDIR, 'paused', 'checkpoints'))))
r = paused.run(until=2)  # restored past `until`: no step trained
print('AGAIN', r['status'], r['step'], int(paused.final_state.step))
r = paused.run()
same = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                    whole.final_params, paused.final_params))
print('LAST', r['status'], r['step'], all(same))
"""


def test_paused_run_resumes_to_the_params_of_an_unpaused_one(tmp_path):
  """Trainer.run(until=n) saves step n and returns 'paused' (pretrain checks its first phase
  there); the next run() resumes and ends where an uninterrupted run ends, bit for bit."""
  r = run_python(PAUSE_RUN.replace('WORKDIR', repr(str(tmp_path))), tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'FIRST paused 3 3' in r.stdout
  assert 'CKPTS [3]' in r.stdout  # the pause is saved though 3 is no checkpoint_every step
  assert 'AGAIN paused 3 3' in r.stdout
  assert 'LAST done 5 True' in r.stdout
