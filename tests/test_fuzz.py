"""Fuzz cases of issue 15: what a user can get wrong, and what a disk or a diverging run can break.

Each case asserts: no traceback, one sentence that names the thing (and a way out), the exit code
of jax_vlm/core/cli.py (2 for a mistake in the command or config, 1 for a runtime input error),
and that nothing written before is lost. Classes: bad configs on every entry point, stage
fingerprints, strict metrics.jsonl, checkpoint corruption (truncation, same-size byte flips,
non-finite contents), non-finite training.
"""

import json
import math
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_vlm.core import cli, registry
from jax_vlm.pipeline import reproduce, stages
from jax_vlm.tools import convert, prepare
from jax_vlm.training import checkpointing, trainer
from jax_vlm.training.metrics_writer import json_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, 'configs', 'train_smoke.py')
WORLD = os.path.join(ROOT, 'configs', 'reproduce.py') + ':smoke'


def _one_sentence(err: str, *names: str) -> str:
  """The error line: no traceback, one `error: ...` line naming every one of `names`."""
  assert 'Traceback' not in err, err[-2000:]
  lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
  assert len(lines) == 1, err[-2000:]
  for name in names:
    assert name in lines[0], lines[0]
  return lines[0]


# ------------------------------------------------------------------------------------------------
# Bad configs: the shared layer, in process (reproduce's main; config_flags reads sys.argv).


def _reproduce(monkeypatch, capsys, *args) -> tuple[int, str]:
  argv = ['jax_vlm.reproduce', '--config', WORLD, '--workdir', '/nonexistent/never_written',
          *args]
  monkeypatch.setattr(sys, 'argv', argv)
  code = reproduce.main(argv)
  return code, capsys.readouterr().err


@pytest.mark.parametrize('override,names', [
    ('--config.train.num_stepz=3', ['train.num_stepz', 'train.num_steps']),
    ('--config.trian.num_steps=3', ['trian.num_steps', 'train.num_steps']),
    ('--config.train.num_steps=abc', ['train.num_steps=abc', 'an integer']),
    ('--config.train.learning_rate=fast', ['train.learning_rate=fast', 'a number']),
    ('--config.train.tensorboard=maybe', ['train.tensorboard=maybe', 'true or false']),
    ('--config.train.global_batch_size=0', ['train.global_batch_size=0', 'positive']),
    ('--config.train.global_batch_size=-8', ['train.global_batch_size=-8', 'positive']),
    ('--config.train.num_steps=0', ['train.num_steps=0', 'positive']),
    ('--config.train.learning_rate=-0.1', ['train.learning_rate=-0.1', '>= 0']),
    ('--config.train.learning_rate=nan', ['train.learning_rate=nan', 'finite']),
    ('--config.mesh.fsdp=0', ['mesh.fsdp=0', '-1']),
    ('--config.mesh.tensor=-3', ['mesh.tensor=-3', '-1']),
    ('--config.train.grad_accum_steps=0', ['train.grad_accum_steps=0', 'positive']),
    ('--config.reproduce.curve_points=0', ['reproduce.curve_points=0', 'positive']),
    ('--config.reproduce.fdp_steps=-1', ['reproduce.fdp_steps=-1', '>= 0']),
    ('--config.reproduce.idp_self_training_from=scratch',
     ["reproduce.idp_self_training_from='scratch'", "'base' or 'train_dynamics'"]),
    ('--config.world_eval.k_list=0,2', ['world_eval.k_list', 'integers >= 1']),
    ('--seedz=1', ['--seedz', 'seeds']),
])
def test_reproduce_bad_command_is_one_sentence_exit_2(monkeypatch, capsys, override, names):
  code, err = _reproduce(monkeypatch, capsys, override)
  assert code == cli.EXIT_USAGE
  _one_sentence(err, *names)
  assert not os.path.exists('/nonexistent/never_written')


def test_reproduce_bad_seeds_exit_2(monkeypatch, capsys):
  code, err = _reproduce(monkeypatch, capsys, '--seeds=0,x')
  assert code == 2
  _one_sentence(err, '--seeds=0,x')


@pytest.mark.parametrize('spec,names', [
    ('configs/no_such_config.py', ['no_such_config.py', 'does not exist']),
    ('configs/action_world.py:huge', ['action_world.py:huge', 'failed to load', 'huge']),
])
def test_config_file_that_fails_to_load(monkeypatch, capsys, spec, names):
  argv = ['jax_vlm.reproduce', '--config', spec, '--workdir', '/nonexistent/x']
  monkeypatch.setattr(sys, 'argv', argv)
  assert reproduce.main(argv) == 2
  _one_sentence(capsys.readouterr().err, *names)


def test_config_file_that_raises(tmp_path, capsys):
  bad = tmp_path / 'broken.py'
  bad.write_text('def get_config():\n  return 1 / 0\n')
  with pytest.raises(cli.ConfigError, match='broken.py.*ZeroDivisionError'):
    cli.load_config_file(str(bad))
  bad.write_text('def get_config():\n  return {"a": 1}\n')
  with pytest.raises(cli.ConfigError, match='did not return a ConfigDict'):
    cli.load_config_file(str(bad))
  bad.write_text('this is not python(\n')
  with pytest.raises(cli.ConfigError, match='failed to load.*SyntaxError'):
    cli.load_config_file(str(bad))


def test_reproduce_help_exits_0_and_lists_keys(monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['jax_vlm.reproduce', '--help'])
  with pytest.raises(SystemExit) as e:
    reproduce.main(['jax_vlm.reproduce', '--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert '--rerun_stages' in out and 'train.global_batch_size = ' in out


@pytest.mark.parametrize('argv,code,names', [
    (['hf-to-flax'], 2, ['src', 'convert']),
    (['hf-to-flax', 'a', 'b', '--param-dtyp', 'x'], 2, ['--param_dtyp']),
    (['frobnicate', 'a'], 2, ['frobnicate']),
    (['hf-to-flax', '/nonexistent/src', '/nonexistent/dst'], 1, ['/nonexistent/src']),
])
def test_convert_errors(capsys, argv, code, names):
  assert convert.main(argv) == code
  _one_sentence(capsys.readouterr().err, *names)


def test_prepare_bad_batch_size_is_exit_2(tmp_path, capsys):
  argv = ['videos', '--videos', str(tmp_path), '--vqgan', str(tmp_path), '--out',
          str(tmp_path / 'out'), '--batch-size', '0']
  # --vqgan is checked first (a runtime input error: exit 1) ...
  assert prepare.main(argv) == 1
  _one_sentence(capsys.readouterr().err, str(tmp_path))
  assert prepare.main(['videos', '--videos']) == 2
  _one_sentence(capsys.readouterr().err, '--videos')


def test_help_of_argparse_tools_exits_0(capsys):
  assert convert.main(['--help']) == 0
  assert prepare.main(['-h']) == 0
  assert 'hf-to-flax' in capsys.readouterr().out


def test_entry_points_in_subprocesses(tmp_path):
  """train.py, eval.py, the aot and export tools and `python -m jax_vlm.reproduce` (started
  together)."""
  work = tmp_path / 'w'
  cases = [
      (['train.py', '--config', SMOKE, '--workdir', str(work),
        '--config.train.global_batch_size=0'], 2, ['train.global_batch_size=0']),
      (['eval.py', '--config', SMOKE, '--workdir', str(work), '--config.eval.no_such=1'],
       2, ['eval.no_such']),
      (['-m', 'jax_vlm.aot', '--config', SMOKE, '--config.mesh.data=0'], 2, ['mesh.data=0']),
      (['-m', 'jax_vlm.reproduce', '--help'], 0, []),
      (['-m', 'jax_vlm.export', '--config', SMOKE, '--workdir', str(work), '--out',
        str(tmp_path / 'o'), '--config.trian.steps=1'], 2, ['trian.steps']),
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  env.pop('PJRT_NPROC', None)  # conftest's threads are for its 8 devices
  procs = [subprocess.Popen([sys.executable, *a], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for a, _, _ in cases]
  for (args, code, names), p in zip(cases, procs):
    out, err = p.communicate(timeout=300)
    assert p.returncode == code, (args, err[-2000:])
    if code:
      _one_sentence(err, *names)
    else:
      assert 'Config keys' in out and 'Traceback' not in err
  assert not work.exists()  # nothing was started


# ------------------------------------------------------------------------------------------------
# Stage fingerprints.


@registry.register('stage', '_fuzz_stage')
def _fuzz_stage(config, stage_dir):
  with open(os.path.join(stage_dir, 'out.txt'), 'a') as f:
    f.write(f'{config.train.learning_rate}\n')


def _config(**train) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ('_fuzz_stage',)
  c.train = ml_collections.ConfigDict({'learning_rate': 1e-3, 'num_steps': 4, **train})
  c.world_eval = ml_collections.ConfigDict(dict(k_list=(1, 2)))
  return c


def test_stage_saves_config_and_fingerprint(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path))
  saved = json.loads((tmp_path / '_fuzz_stage' / 'config.json').read_text())
  marker = json.loads((tmp_path / '_fuzz_stage' / 'DONE').read_text())
  assert saved['train']['learning_rate'] == 1e-3 and 'stages' not in saved
  assert marker['fingerprint'] == stages.fingerprint(saved)


def test_changed_stage_config_refuses_naming_keys_and_flag(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path))
  with pytest.raises(cli.ConfigError) as e:
    stages.run_stages(_config(learning_rate=0.5), str(tmp_path))
  msg = str(e.value)
  assert 'train.learning_rate' in msg and '--rerun_stages=_fuzz_stage' in msg
  assert 'train.num_steps' not in msg
  assert (tmp_path / '_fuzz_stage' / 'out.txt').read_text() == '0.001\n'  # nothing lost


def test_added_key_is_a_change(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path))
  with pytest.raises(cli.ConfigError, match='train.warmup_steps'):
    stages.run_stages(_config(warmup_steps=3), str(tmp_path))


def test_rerun_flag_reruns_and_keeps_files(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path))
  assert stages.run_stages(_config(learning_rate=0.5), str(tmp_path), rerun=['_fuzz_stage'])
  assert (tmp_path / '_fuzz_stage' / 'out.txt').read_text() == '0.001\n0.5\n'
  assert (tmp_path / '_fuzz_stage' / 'DONE.previous').exists()
  assert stages.run_stages(_config(learning_rate=0.5), str(tmp_path))  # now it matches


def test_rerun_config_key_and_unknown_rerun_name(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path))
  c = _config(learning_rate=0.2)
  c.rerun_stages = ('_fuzz_stage',)
  assert stages.run_stages(c, str(tmp_path))
  with pytest.raises(cli.ConfigError, match='no_such_stage'):
    stages.run_stages(_config(), str(tmp_path), rerun=['no_such_stage'])


def test_unrelated_sections_and_shared_seed_do_not_refuse(tmp_path):
  assert stages.run_stages(_config(), str(tmp_path), shared=['_fuzz_stage'])
  c = _config()
  c.seed = 7  # another seed of the reproduction
  c.world_eval.k_list = (1,)  # read by `evaluate` only
  assert stages.run_stages(c, str(tmp_path), shared=['_fuzz_stage'])
  with pytest.raises(cli.ConfigError, match='seed'):  # not shared: the seed matters
    stages.run_stages(c, str(tmp_path))


def test_section_a_stage_does_not_read_leaves_its_fingerprint(tmp_path, monkeypatch):
  c = _config()
  c.pretrain = ml_collections.ConfigDict({'num_steps': 5})
  assert stages.run_stages(c, str(tmp_path))  # a marker from before the rule: covers `pretrain`
  monkeypatch.setitem(stages.NOT_READ_BY, 'pretrain', ('_fuzz_stage',))
  c.pretrain.num_steps = 9  # another base over the same world: the data stage is reused
  assert stages.run_stages(c, str(tmp_path))
  assert (tmp_path / '_fuzz_stage' / 'out.txt').read_text() == '0.001\n'
  c.train.learning_rate = 0.5  # a section it reads still refuses
  with pytest.raises(cli.ConfigError, match='train.learning_rate'):
    stages.run_stages(c, str(tmp_path))
  covered = stages.fingerprint_config(c, '_fuzz_stage', str(tmp_path))
  assert 'pretrain' not in covered and 'train' in covered


def test_key_a_stage_does_not_read_leaves_its_fingerprint(tmp_path, monkeypatch):
  c = _config()
  c.pretrain = ml_collections.ConfigDict({'continue_steps': 30})
  assert stages.run_stages(c, str(tmp_path))  # a marker from before the rule: covers num_steps
  monkeypatch.setitem(stages.NOT_READ_BY, 'train.num_steps', ('_fuzz_stage',))
  c.train.num_steps = 9
  assert stages.run_stages(c, str(tmp_path))  # a key it does not read is not a change
  assert 'num_steps' not in stages.fingerprint_config(c, '_fuzz_stage', str(tmp_path))['train']
  c.pretrain.continue_steps = 0  # at its default the key leaves the fingerprint, yet it changed
  with pytest.raises(cli.ConfigError, match='pretrain.continue_steps') as e:
    stages.run_stages(c, str(tmp_path))
  assert 'num_steps' not in str(e.value)  # the message names only keys the stage reads


def test_workdir_paths_compare_equal_across_seed_folders(tmp_path):
  a, b = tmp_path / 'seed_0', tmp_path / 'seed_1'
  c0, c1 = _config(), _config()
  c0.train.data = str(a / 'tokenize' / 'x')
  c1.train.data = str(b / 'tokenize' / 'x')
  assert stages.run_stages(c0, str(a))
  os.makedirs(b)
  os.symlink(a / '_fuzz_stage', b / '_fuzz_stage')
  assert stages.run_stages(c1, str(b))


def test_legacy_marker_without_fingerprint_is_accepted(tmp_path):
  os.makedirs(tmp_path / '_fuzz_stage')
  (tmp_path / '_fuzz_stage' / 'DONE').write_text('{"stage": "_fuzz_stage", "seconds": 1}')
  assert stages.run_stages(_config(learning_rate=9.0), str(tmp_path))
  assert not (tmp_path / '_fuzz_stage' / 'out.txt').exists()


# ------------------------------------------------------------------------------------------------
# metrics.jsonl is strict JSON.


def _strict(line: str) -> dict:
  def refuse(constant):
    raise ValueError(f'non-strict constant {constant}')
  return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize('value,reason', [(math.nan, 'nan'), (math.inf, 'inf'),
                                          (-math.inf, '-inf')])
def test_metrics_line_non_finite_is_null_with_reason(value, reason):
  rec = _strict(json_line({'step': 3, 'loss': value, 'grad_norm': 1.5}))
  assert rec == {'step': 3, 'loss': None, 'grad_norm': 1.5, 'non_finite': {'loss': reason}}


def test_metrics_line_nested_non_finite():
  rec = _strict(json_line({'step': 1, 'curve': [1.0, math.nan], 'm': {'a': math.inf}}))
  assert rec['curve'] == [1.0, None] and rec['m'] == {'a': None}
  assert rec['non_finite'] == {'curve[1]': 'nan', 'm.a': 'inf'}


# ------------------------------------------------------------------------------------------------
# Checkpoint corruption: TrainCheckpoints with a small state.


def _state(scale=1.0):
  return {'w': jnp.arange(64, dtype=jnp.float32).reshape(8, 8) * scale,
          'b': jnp.ones((8,), jnp.float32) * scale, 'step': jnp.array(1, jnp.int32)}


def _abstract():
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state())


def _saved(tmp_path, states=(1.0, 2.0)):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path / 'checkpoints'), keep=0, async_save=False)
  for i, s in enumerate(states, 1):
    ckpts.save(i, _state(s), {'step': i})
  ckpts.close()
  return tmp_path / 'checkpoints'


def _largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def _restore(tmp_path, capsys):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path / 'checkpoints'), keep=0, async_save=False)
  try:
    out = ckpts.restore(_abstract())
  finally:
    ckpts.close()
  return out, capsys.readouterr().out


def _flip(path, offset_from_end=20):
  data = bytearray(open(path, 'rb').read())
  i = max(len(data) - offset_from_end, 0)
  data[i] ^= 0x5A
  open(path, 'wb').write(bytes(data))


@pytest.mark.parametrize('damage', ['truncate', 'flip_end', 'flip_start', 'empty', 'delete'])
def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys, damage):
  d = _saved(tmp_path)
  target = _largest_file(d / '2')
  size = os.path.getsize(target)
  if damage == 'truncate':
    open(target, 'r+b').truncate(size // 2)
  elif damage == 'flip_end':
    _flip(target)
  elif damage == 'flip_start':
    _flip(target, size - 1)
    assert os.path.getsize(target) == size
  elif damage == 'empty':
    open(target, 'wb').close()
  else:
    os.remove(target)
  (step, state, data), out = _restore(tmp_path, capsys)
  assert step == 1 and data == {'step': 1}
  np.testing.assert_array_equal(np.asarray(state['w']), np.asarray(_state(1.0)['w']))
  assert 'Checkpoint step 2 in' in out and 'using the previous checkpoint' in out
  assert (tmp_path / 'corrupt_checkpoints' / '2').is_dir()  # kept for inspection


def test_non_finite_checkpoint_is_set_aside_and_named(tmp_path, capsys):
  _saved(tmp_path, states=(1.0, math.nan))
  (step, _, _), out = _restore(tmp_path, capsys)
  assert step == 1
  assert 'NaN or inf' in out and "['b']" in out
  assert (tmp_path / 'corrupt_checkpoints' / '2').is_dir()


def test_checksums_written_and_all_bad_gives_none(tmp_path, capsys):
  d = _saved(tmp_path, states=(1.0,))
  assert (tmp_path / 'checkpoint_checksums' / '1.json').exists()
  _flip(_largest_file(d / '1'))
  out, text = _restore(tmp_path, capsys)
  assert out is None and 'content checksum mismatch' in text


# ------------------------------------------------------------------------------------------------
# Non-finite training: the trainer's check before a save.


def _flush(metrics, last_saved=4):
  fake = types.SimpleNamespace()
  ckpts = types.SimpleNamespace(directory='/w/checkpoints')
  return trainer.Trainer._flush(fake, [(5, metrics)], None, (0.0, 0), 8, last_saved, ckpts)


@pytest.mark.parametrize('metrics,names', [
    ({'loss': np.float32('nan'), 'grad_norm': 1.0, 'params_finite': True}, ['loss', 'nan']),
    ({'loss': np.float32('inf'), 'grad_norm': 1.0, 'params_finite': True}, ['loss', 'inf']),
    ({'loss': 1.0, 'grad_norm': np.float32('nan'), 'params_finite': True}, ['gradient norm']),
    ({'loss': 1.0, 'grad_norm': 2.0, 'params_finite': False}, ['updated params']),
])
def test_non_finite_step_stops_before_a_save(metrics, names):
  with pytest.raises(trainer.NonFiniteLoss) as e:
    _flush(metrics)
  msg = str(e.value)
  for name in names:
    assert name in msg
  assert 'at step 5' in msg and 'last good checkpoint is step 4' in msg


# ------------------------------------------------------------------------------------------------
# Loading params checks what they are.


def _model(**kw):
  from jax_vlm.models.config import TransformerConfig
  return TransformerConfig(**{'family': 'chameleon', 'vocab_size': 256, 'd_model': 32,
                              'num_layers': 2, **kw})


@pytest.mark.parametrize('change,names', [
    ({'family': 'gemma'}, ["model.family='chameleon'", "'gemma'"]),
    ({'vocab_size': 512}, ['model.vocab_size=256', '512']),
    ({'d_model': 64, 'num_layers': 3}, ['model.d_model=32', 'model.num_layers=2']),
])
def test_params_of_another_model_are_refused(tmp_path, change, names):
  path = str(tmp_path / 'params')
  checkpointing.save_params(path, {'w': jnp.ones((2,))}, _model())
  checkpointing.check_model_record(path, _model())  # the same model: fine
  with pytest.raises(trainer.UserError) as e:
    checkpointing.check_model_record(path, _model(**change))
  for name in names:
    assert name in str(e.value)
  assert 'set config.model' in str(e.value)
  assert checkpointing.load_params(path)['w'].shape == (2,)  # nothing lost


def test_leaf_difference_names_missing_and_extra():
  fresh = {'a': {'kernel': 1, 'lora_a': 2, 'lora_b': 3}, 'b': {'scale': 1}}
  loaded = {'a': {'kernel': 1}, 'c': {'scale': 1}}
  assert trainer.leaf_difference(fresh, loaded) == (['b/scale'], ['c/scale'])
  assert trainer.leaf_difference(fresh, {'a': {'kernel': 1}, 'b': {'scale': 1}}) == ([], [])


def test_trainer_refuses_partial_params_unless_asked(tmp_path):
  from configs import train_smoke
  config = train_smoke.get_config('dp')
  config.train.update(num_steps=1, tensorboard=False, progress_bar=False)
  t = trainer.Trainer(config, str(tmp_path / 'a'))
  fresh = t.init_state().params
  params = dict(fresh)
  params['extra_head'] = {'kernel': np.zeros((3,), np.float32)}
  missing_one = sorted(params)[0]
  del params[missing_one]
  path = str(tmp_path / 'params')
  checkpointing.save_params(path, params)
  with pytest.raises(trainer.UserError) as e:
    t._load_params(path, fresh)  # what init_state does with train.init_from=path
  msg = str(e.value)
  assert 'missing' in msg and missing_one in msg and 'extra_head' in msg
  assert 'init_partial' in msg
  t.config.train.init_partial = True
  loaded = t._load_params(path, fresh)
  assert 'extra_head' not in loaded and missing_one in loaded
  assert os.path.isdir(path)  # nothing lost


# ------------------------------------------------------------------------------------------------
# The judge client takes whatever an endpoint sends.

KEY = 'sk-secret-0123456789'
GOOD = {'choices': [{'message': {'content': '{"score": [7, 5], "reasoning": "ok"}'}}]}
JSRC = np.zeros((4, 5, 3), np.uint8)


def _judge_client(script, **kw):
  """A JudgeClient whose transport answers from `script`: bytes (decoded as JSON like the real
  `_post`) or an exception to raise."""
  from jax_vlm.evaluation import judge
  client = judge.JudgeClient('http://judge.invalid/v1', 'gpt-4o', api_key=KEY, max_retries=2,
                             backoff_s=0.0, **kw)
  calls = []

  def post(payload):
    calls.append(payload)
    item = script.pop(0) if script else b'{"error": "no script"}'
    if isinstance(item, BaseException):
      raise item
    return json.loads(item.decode('utf-8'))

  client._post = post
  return client, calls


def _http_error(code, body=b'', headers=None):
  import io
  import urllib.error
  return urllib.error.HTTPError('http://judge.invalid/v1/chat/completions', code, 'err',
                                headers or {}, io.BytesIO(body))


@pytest.mark.parametrize('raw,reason', [
    (b'<html>502 Bad Gateway</html>', 'not JSON'),
    (b'\xff\xfe\x00garbage', 'not JSON'),
    (b'[1, 2, 3]', 'JSON list'),
    (b'"just a string"', 'JSON str'),
    (b'42', 'JSON int'),
    (b'{}', 'no "choices"'),
    (b'{"choices": "nope"}', 'no "choices"'),
    (b'{"choices": ["text"]}', '"choices"[0] is a str'),
    (b'{"choices": [{"message": null}]}', '"message" is NoneType'),
    (b'{"choices": [{"message": {"content": 7}}]}', '"content" is a int'),
    (b'{"choices": [{"message": {"content": null}}]}', 'empty "content"'),
    (b'{"choices": [{"message": {"content": "", "refusal": "I cannot"}}]}', 'refusal: I cannot'),
    (b'{"choices": [{"message": {"content": "score: high"}}]}', 'unparseable'),
    (b'{"error": {"message": "overloaded"}}', 'overloaded'),
])
def test_judge_reply_shapes_are_failed_attempts_then_invalid(raw, reason):
  client, calls = _judge_client([raw] * 3)
  result = client.judge('move the cup', JSRC, JSRC)
  assert not result.valid and result.final_score is None and result.attempts == 3
  assert reason in result.error and len(calls) == 3


def test_judge_bad_shape_then_good_reply_is_scored():
  client, calls = _judge_client([b'[]', b'{"choices": [{"message": "score = [6, 8]"}]}'])
  result = client.judge('x', JSRC, JSRC)
  assert result.valid and result.final_score == 6 and result.attempts == 2


def test_judge_429_waits_retry_after_then_scores(monkeypatch):
  from jax_vlm.evaluation import judge
  waits = []
  monkeypatch.setattr(judge.time, 'sleep', waits.append)
  client, _ = _judge_client([_http_error(429, b'slow down', {'Retry-After': '3'}),
                            json.dumps(GOOD).encode()])
  result = client.judge('x', JSRC, JSRC)
  assert result.valid and result.final_score == 5 and waits == [3.0]


def test_judge_outage_mid_reply_and_server_errors_are_counted_invalid():
  import http.client
  client, _ = _judge_client([http.client.IncompleteRead(b'{"cho'), _http_error(500, b'boom'),
                             _http_error(503)])
  result = client.judge('x', JSRC, JSRC)
  assert not result.valid and 'HTTP 503' in result.error and result.attempts == 3


def test_judge_key_echoed_by_endpoint_is_masked():
  echo = f'{{"error": "bad header Authorization: Bearer {KEY}"}}'.encode()
  client, _ = _judge_client([_http_error(500, echo), echo, echo])
  result = client.judge('x', JSRC, JSRC)
  assert KEY not in json.dumps(result.to_json()) and '***' in result.error
  client, _ = _judge_client([_http_error(401, echo)])
  with pytest.raises(trainer.UserError) as e:
    client.judge('x', JSRC, JSRC)
  assert KEY not in str(e.value) and 'HTTP 401' in str(e.value)


def test_judge_many_bounded_concurrency_in_order():
  import threading
  import time
  client, _ = _judge_client([], max_in_flight=3)
  lock, state = threading.Lock(), {'now': 0, 'peak': 0}

  def post(payload):
    with lock:
      state['now'] += 1
      state['peak'] = max(state['peak'], state['now'])
    time.sleep(0.02)
    with lock:
      state['now'] -= 1
    n = int(payload['messages'][0]['content'][0]['text'].rsplit(' ', 1)[-1])
    return {'choices': [{'message': {'content': f'{{"score": [{n % 11}, 10]}}'}}]}

  client._post = post
  items = [(str(n), JSRC, JSRC) for n in range(10)]  # the instruction ends the prompt
  results = client.judge_many(items)
  assert [r.final_score for r in results] == list(range(10))
  assert 1 < state['peak'] <= 3


def test_sigterm_inside_a_gc_callback_is_sent_again(monkeypatch):
  """A SIGTERM that lands in a garbage-collector callback (jax registers one) is not raised there,
  where Python would print a traceback and drop it: it is sent again a moment later."""
  import gc
  import signal
  sent, seen = [], []
  monkeypatch.setattr(cli.threading, 'Timer', lambda delay, fn, args: types.SimpleNamespace(
      start=lambda: sent.append((fn, args))))

  def callback(phase, info):
    del info
    if phase == 'start' and not seen:
      seen.append(True)
      cli._on_sigterm(signal.SIGTERM, sys._getframe())  # must not raise here

  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  assert seen and sent == [(os.kill, (os.getpid(), signal.SIGTERM))]
  with pytest.raises(cli.Terminated):  # anywhere else it stops the program at once
    cli._on_sigterm(signal.SIGTERM, sys._getframe())


def test_sigterm_during_first_compile_exits_cleanly(tmp_path):
  """SIGTERM while the stage starts (imports, init, first compile): exit 0, no traceback."""
  import signal
  import time
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  env.pop('PJRT_NPROC', None)  # conftest's threads are for its 8 devices
  work = tmp_path / 'w'
  proc = subprocess.Popen([sys.executable, 'train.py', '--config', SMOKE, '--workdir', str(work),
                           '--config.train.progress_bar=false'], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 200
  while not (work / 'train_dynamics' / 'config.json').exists() and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=200)
  assert proc.returncode == 0, err[-2000:]
  assert 'Traceback' not in err
  assert 'SIGTERM' in err or 'Preempted' in out + err or 'preempted' in err
  assert not (work / 'train_dynamics' / 'DONE').exists()
