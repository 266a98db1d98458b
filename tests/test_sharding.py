"""Meshes, logical-axis rules and sharded training on 8 simulated CPU devices."""

import json

import numpy as np
import pytest

from configs import train_smoke
from jax_vlm.core.errors import UserError
from jax_vlm.training import sharding, trainer
from tests.test_train import run_python


def test_mesh_sizes_fill_and_reject():
  cfg = train_smoke.get_config('fsdp').mesh
  assert sharding.mesh_shape(cfg, 8) == (1, 8, 1)
  cfg.update(data=2, fsdp=-1, tensor=2)
  assert sharding.mesh_shape(cfg, 8) == (2, 2, 2)
  cfg.update(data=3, fsdp=-1, tensor=1)
  with pytest.raises(UserError, match='do not divide the 8 devices'):
    sharding.mesh_shape(cfg, 8)
  cfg.update(data=2, fsdp=2, tensor=1)
  with pytest.raises(UserError, match='needs 4 devices but there are 8'):
    sharding.mesh_shape(cfg, 8)
  cfg.update(data=-1, fsdp=-1)
  with pytest.raises(UserError, match='more than one -1'):
    sharding.mesh_shape(cfg, 8)


def test_rules_presets_and_overrides():
  cfg = train_smoke.get_config('fsdp_tp').mesh
  rules = dict(sharding.logical_rules(cfg))
  assert rules['batch'] == ('data', 'fsdp') and rules['mlp'] == 'tensor'
  assert rules['embed'] == 'fsdp'
  cfg.rule_overrides = 'mlp=,vocab=data+fsdp'
  rules = dict(sharding.logical_rules(cfg))
  assert rules['mlp'] is None and rules['vocab'] == ('data', 'fsdp')
  cfg.rules = 'zero3'
  with pytest.raises(UserError, match="'zero3' is not a rule preset"):
    sharding.logical_rules(cfg)


def _no_jit(*args, **kwargs):
  raise AssertionError('something was compiled before the config was checked')


@pytest.mark.parametrize('change, message', [
    ({'mesh.data': 3}, 'do not divide the 8 devices'),
    ({'train.global_batch_size': 12}, 'must be a multiple of data\\*fsdp'),
])
def test_bad_config_rejected_before_compilation(monkeypatch, tmp_path, change, message):
  config = train_smoke.get_config('fsdp')
  for key, value in change.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  monkeypatch.setattr(trainer.jax, 'jit', _no_jit)
  with pytest.raises(UserError, match=message) as e:
    trainer.Trainer(config, str(tmp_path))
  assert str(e.value).count('. ') == 0 and str(e.value).endswith('.')  # one sentence


def test_unknown_key_in_config_file_rejected(monkeypatch, tmp_path):
  config = train_smoke.get_config('fsdp')
  config.train.unlock()
  config.train.learning_rat = 1.0
  monkeypatch.setattr(trainer.jax, 'jit', _no_jit)
  with pytest.raises(UserError, match='config.train has unknown key\\(s\\) learning_rat'):
    trainer.Trainer(config, str(tmp_path))


EXPECTED_SPECS = {
    # param path -> the spec each preset's rules ask for (trailing Nones dropped)
    'dp': {'layers/self_attn/q_proj/kernel': [],
           'lm_head/kernel': [],
           'embed_tokens/embedding': []},
    'fsdp': {'layers/self_attn/q_proj/kernel': [None, 'fsdp'],
             'layers/mlp/down_proj/kernel': [None, None, 'fsdp'],
             'lm_head/kernel': ['fsdp'],
             'embed_tokens/embedding': [None, 'fsdp']},
    'fsdp_tp': {'layers/self_attn/q_proj/kernel': [None, 'fsdp', 'tensor'],
                'layers/self_attn/o_proj/kernel': [None, 'tensor', None, 'fsdp'],
                'layers/mlp/gate_proj/kernel': [None, 'fsdp', 'tensor'],
                'lm_head/kernel': ['fsdp', 'tensor'],
                'embed_tokens/embedding': ['tensor', 'fsdp']},
}

MESH_RUN = """
import json, sys
import jax
from configs import train_smoke
from jax_vlm.training import trainer
from jax_vlm.training.metrics_writer import read_jsonl

def spec(x):
  s = list(x.sharding.spec)
  while s and s[-1] is None:
    s.pop()
  return s

out = {}
for rules, accum in (('dp', 1), ('fsdp', 1), ('fsdp_tp', 2)):
  config = train_smoke.get_config(rules)
  config.train.update(num_steps=3, checkpoint_every=100, grad_accum_steps=accum, tensorboard=False)
  t = trainer.Trainer(config, sys.argv[1] + '/' + rules)
  assert t.run()['status'] == 'done'
  flat = {'/'.join(str(k.key) for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(t.final_state.params)[0]}
  mu = t.final_state.opt_state.inner_states['trainable'].inner_state[1][0].mu
  logged = read_jsonl(sys.argv[1] + '/' + rules + '/metrics.jsonl')
  out[rules] = {'losses': [m['loss'] for m in logged],
                'specs': {k: spec(v) for k, v in flat.items()},
                'mu_lm_head': spec(mu['lm_head']['kernel'])}
print('RESULT' + json.dumps(out))
"""


def test_same_losses_on_every_mesh_and_shardings_follow_rules(tmp_path):
  """dp, fsdp and fsdp+tensor (the last with 2-step gradient accumulation) train identically, and
  every parameter (and its Adam moments) is sharded as the rules say."""
  code = MESH_RUN.replace('sys.argv[1]', repr(str(tmp_path)))
  r = run_python(code, tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.split('RESULT', 1)[1])
  for rules, expected in EXPECTED_SPECS.items():
    for path, spec in expected.items():
      assert out[rules]['specs'][path] == spec, (rules, path, out[rules]['specs'][path])
    assert out[rules]['mu_lm_head'] == expected['lm_head/kernel']
  assert len(out['dp']['losses']) == 3
  np.testing.assert_allclose(out['fsdp']['losses'], out['dp']['losses'], rtol=2e-5)
  np.testing.assert_allclose(out['fsdp_tp']['losses'], out['dp']['losses'], rtol=2e-5)
  assert out['dp']['losses'][0] != out['dp']['losses'][2]  # it actually trained
