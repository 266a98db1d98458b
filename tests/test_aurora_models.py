"""The FDP predictor on AURORA-BENCH: K candidates from one prefill, the IDP verifier's scores,
best-of-K, saved candidates, the report, failed items, and the one-sentence refusals."""

import json
import os

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from configs import aurora_bench
from data.aurora import load_aurora_bench
from jax_vlm.core.errors import UserError
from jax_vlm.evaluation import aurora, aurora_models
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens import vocab as vocab_lib
from jax_vlm.training import checkpointing
from jax_vlm.weights import vqgan_files

WORDS = ['make', 'the', 'cup', 'red', 'move', 'left', 'add', 'a', 'dog']


def tiny_artifacts(root: str, family: str = 'chameleon', num_codes: int = 16, seed: int = 0,
                   vocab_size: int = 96) -> dict:
  """A tokenizer, a 16 px VQGAN (4x4 codes) and random params of a tiny model, saved under root;
  returns the config overrides that point at them."""
  tok = vocab_lib.build_word_tokenizer(WORDS, os.path.join(root, 'tok'), num_image_codes=num_codes)
  vq_config = VQGANConfig(resolution=16, base_channels=16, channel_multiplier=(1, 2, 2),
                          num_res_blocks=1, z_channels=8, embed_dim=8, num_embeddings=num_codes,
                          norm_groups=8)
  vq_params = VQGAN(vq_config).init(jax.random.PRNGKey(seed), np.zeros((1, 16, 16, 3),
                                                                        np.float32))['params']
  vqgan_files.save_vqgan(os.path.join(root, 'vqgan'), vq_params, vq_config)
  model = dict(family=family, vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=2,
               num_kv_heads=2, head_dim=16, mlp_dim=64, max_positions=256,
               qk_norm=family == 'chameleon', tie_embeddings=family == 'gemma', dtype='float32',
               param_dtype='float32', remat_policy='none')
  module = DecoderLM(TransformerConfig(**model))
  params = flax.linen.meta.unbox(
      module.init(jax.random.PRNGKey(seed + 1), np.zeros((1, 8), np.int32))['params'])
  checkpointing.save_params(os.path.join(root, 'model'), params)
  return {'tok': tok, 'vqgan': os.path.join(root, 'vqgan'),
          'model_dir': os.path.join(root, 'model'), 'model': model, 'num_codes': num_codes}


def fdp_config(art: dict, bench_root: str, k: int = 2, idp: str = ''):
  config = aurora_bench.get_config('fdp')
  config.model.update(art['model'])
  config.vocab.tokenizer_dir = art['tok']
  config.vocab.num_image_codes = art['num_codes']
  config.checkpoint.vqgan_dir = art['vqgan']
  config.sampler.max_action_tokens = 8
  config.eval.update(bench_root=bench_root, fdp_checkpoint=art['model_dir'], idp_checkpoint=idp,
                     num_candidates=k, progress=False)
  return config


def small_bench(root: str) -> str:
  rng = np.random.default_rng(0)
  entries = []
  for i, task in enumerate(['ag', 'ag', 'kubric']):
    for side in ('in', 'out'):
      path = os.path.join(root, f'data/{task}/{i}_{side}.png')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    entries.append({'input': f'data/{task}/{i}_in.png', 'output': f'data/{task}/{i}_out.png',
                    'instruction': ['make the cup red', 'move the cup left', 'add a dog'][i],
                    'task': task})
  with open(os.path.join(root, 'data/kubric/2_in.png'), 'wb') as f:
    f.write(b'broken')  # a bad item: recorded as failed, the run goes on
  with open(os.path.join(root, 'test.json'), 'w') as f:
    json.dump(entries, f)
  return root


def _lines(workdir):
  with open(os.path.join(workdir, aurora.ITEMS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_fdp_best_of_k_on_the_bench(tmp_path):
  art = tiny_artifacts(str(tmp_path / 'art'))
  root = small_bench(str(tmp_path / 'bench'))
  config = fdp_config(art, root, k=3)
  workdir = str(tmp_path / 'run')
  metrics = aurora.run(config, workdir)
  assert metrics['all']['#sample'] == 2 and metrics['all']['L1'] is not None
  run = metrics['run']
  assert run['num_candidates'] == 3 and 'best-of-K' in run['selection']
  assert run['failures'] == {aurora.FAILURE_UNREADABLE: 1} and run['complete'] is False
  assert any('Incomplete run' in n for n in metrics['notes'])
  records = {r['index']: r for r in _lines(workdir)}
  assert records[2]['failed'] == aurora.FAILURE_UNREADABLE and '2_in.png' in records[2]['error']
  for i in (0, 1):
    r = records[i]
    assert len(r['verifier_scores']) == 3 and len(r['candidate_paths']) == 3
    assert r['chosen'] == int(np.argmax(r['verifier_scores']))
    assert all(s <= 0 for s in r['verifier_scores'])
    frame = np.asarray(Image.open(os.path.join(workdir, r['prediction_path'])))
    chosen = np.asarray(Image.open(os.path.join(workdir, r['candidate_paths'][r['chosen']])))
    assert frame.shape == (16, 16, 3)
    np.testing.assert_array_equal(frame, chosen)
  html = open(os.path.join(workdir, aurora.REPORT_FILE)).read()
  assert html.count('cand') >= 6

  # Rerun: scored items are kept (not predicted again), the failed one is tried again.
  before = os.path.getmtime(os.path.join(workdir, records[0]['prediction_path']))
  aurora.run(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, records[0]['prediction_path'])) == before


def test_refusals_are_one_sentence(tmp_path):
  art = tiny_artifacts(str(tmp_path / 'art'))
  root = small_bench(str(tmp_path / 'bench'))
  # A VQGAN with another codebook size than the vocabulary's image tokens.
  other = tiny_artifacts(str(tmp_path / 'other'), num_codes=8)
  config = fdp_config(art, root)
  config.checkpoint.vqgan_dir = other['vqgan']
  with pytest.raises(UserError, match='has 8 codes but the vocabulary'):
    aurora_models.FDPPredictor(config)
  # A checkpoint whose embedding table does not fit config.model.
  small = tiny_artifacts(str(tmp_path / 'small'), vocab_size=20)
  config = fdp_config(art, root, idp=small['model_dir'])
  with pytest.raises(UserError, match='has 20 token embeddings but model.vocab_size is 96'):
    aurora_models.FDPPredictor(config)
  # A verifier trained with another tokenizer (its own tokenizer files inside the checkpoint).
  other_tok = tiny_artifacts(str(tmp_path / 'othertok'))
  vocab_lib.build_word_tokenizer(['other', 'words', 'here'] + WORDS, other_tok['model_dir'],
                                 num_image_codes=16)
  config = fdp_config(art, root, idp=other_tok['model_dir'])
  with pytest.raises(UserError, match="verifier's vocabulary differs"):
    aurora_models.FDPPredictor(config)
  # A gemma checkpoint against the chameleon-scheme vocabulary.
  gemma = tiny_artifacts(str(tmp_path / 'gemma'), family='gemma')
  config = fdp_config(gemma, root)
  config.model.update(art['model'])  # config says chameleon; the hf_config-less dir follows it
  config.model.family = 'gemma'
  config.model.qk_norm = False
  with pytest.raises(UserError, match='is a gemma model but vocab.image_token_scheme'):
    aurora_models.FDPPredictor(config)
  assert load_aurora_bench(root)[0]


def test_eval_py_fdp_interface(tmp_path):
  """The issue's command line; a bad checkpoint is one sentence, no traceback."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  art = tiny_artifacts(str(tmp_path / 'art'))
  root = small_bench(str(tmp_path / 'bench'))
  model_flags = [f'--config.model.{k}={v}' for k, v in art['model'].items()]
  common = ['--config', 'configs/aurora_bench.py', f'--config.bench_root={root}',
            '--config.eval.model=fdp', f'--config.checkpoint.vqgan_dir={art["vqgan"]}',
            f'--config.vocab.tokenizer_dir={art["tok"]}', '--config.vocab.num_image_codes=16',
            '--config.sampler.max_action_tokens=8', '--config.eval.progress=False', *model_flags]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run(
      [sys.executable, 'eval.py', *common, f'--config.eval.fdp_checkpoint={art["model_dir"]}',
       f'--config.eval.idp_checkpoint={art["model_dir"]}', '--config.eval.num_candidates=2',
       f'--workdir={tmp_path / "run"}'], cwd=repo, env=env, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((tmp_path / 'run' / aurora.METRICS_FILE).read_text())
  assert metrics['run']['num_candidates'] == 2 and metrics['all']['#sample'] == 2
  bad = subprocess.run(
      [sys.executable, 'eval.py', *common, f'--config.eval.fdp_checkpoint={tmp_path}/nowhere',
       f'--workdir={tmp_path / "bad"}'], cwd=repo, env=env, capture_output=True, text=True,
      timeout=300)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert 'is not a directory' in bad.stderr


def test_idp_text_evaluation(tmp_path):
  art = tiny_artifacts(str(tmp_path / 'art'))
  root = small_bench(str(tmp_path / 'bench'))
  config = fdp_config(art, root, idp=art['model_dir'])
  config.eval.update(task='idp', batch_size=2)
  workdir = str(tmp_path / 'idp')
  metrics = aurora.run(config, workdir)
  for task in ('ag', 'all'):
    for name in ('BLEU', 'ROUGE1', 'ROUGEL'):
      assert metrics[task][name] is not None
    assert metrics[task]['BERTScore'] is None
  assert metrics['all']['#sample'] == 2 and metrics['run']['num_failed'] == 1
  assert any('BERTScore skipped' in n for n in metrics['notes'])
  records = _lines(workdir)
  assert sorted(r['index'] for r in records) == [0, 1, 2]
  assert all(isinstance(r['prediction'], str) for r in records if not r.get('failed'))
  html = open(os.path.join(workdir, aurora.REPORT_FILE)).read()
  assert 'predicted action' in html


def test_items_are_batched_and_match_single_calls(tmp_path, monkeypatch):
  """predict_many samples several items in one sampler call and gives each the candidates a call
  on that item alone gives (fold_in(key, index) per item); the evaluation loop uses it."""
  art = tiny_artifacts(str(tmp_path / 'art'))
  root = small_bench(str(tmp_path / 'bench'))
  config = fdp_config(art, root, k=2)
  config.eval.batch_size = 4
  predictor = aurora_models.FDPPredictor(config)
  items, _ = load_aurora_bench(root)
  many = predictor.predict_many(items)
  assert isinstance(many[2], UserError)  # the unreadable source, for that item only
  for i in (0, 1):
    one = predictor(items[i])
    np.testing.assert_allclose(many[i].verifier_scores, one.verifier_scores, atol=1e-4)
    assert many[i].chosen == one.chosen
    # The same codes decoded in a batch of 4 and of 1: XLA:CPU may round a pixel's float value
    # the other way at another batch size (one pixel of 768 by 1 on an AMD Zen 4 host).
    for a, b in zip(many[i].candidates, one.candidates):
      np.testing.assert_allclose(np.asarray(a, np.int32), np.asarray(b, np.int32), atol=1, rtol=0)

  calls = []
  sample = predictor.sampler.sample_frames
  monkeypatch.setattr(predictor.sampler, 'sample_frames',
                      lambda *a, **k: calls.append(len(a[1])) or sample(*a, **k))
  monkeypatch.setattr(aurora_models, 'FDPPredictor', lambda config: predictor)
  metrics = aurora.run(config, str(tmp_path / 'run'))
  assert calls == [4] and metrics['all']['#sample'] == 2  # 2 good items (+1 bad) in one call
  records = {r['index']: r for r in _lines(str(tmp_path / 'run'))}
  assert records[0]['verifier_scores'] == pytest.approx(many[0].verifier_scores, abs=1e-4)
