"""Real-data smoke pipeline (configs/real_smoke.py): README's steps 1 -> 4 at toy size on the 17
real AURORA-BENCH items in ../shared/aurora_bench_sample (relative to the repo root) and on three
short videos the test renders.

  stand-ins   `convert tiny`: a word tokenizer of the bench's instructions, a random 16 px VQGAN
  prepare     `prepare aurora --split test --name train` (the 10 items with a target) and
              `prepare videos` (key-frame pairs, unlabelled)
  train       train.py's stages: train_dynamics (IDP + FDP) -> bootstrap (IDP labels the video
              pairs, stratified top-K by label likelihood, class = first word) -> train_fdm (FDP on
              labelled + synthetic, recognition-weighted)
  evaluate    export train_fdm as a transformers directory; FDP with K=2, the train_dynamics
              params as IDP verifier and a fake judge server on 127.0.0.1; then IDP (Table 1)

Checks files, schemas, counts and K candidates per item in the report, not quality.

  python -m pytest -q -p no:xdist tests/test_real_smoke.py
"""

import json
import os

import numpy as np
import pytest

from configs import real_smoke
from data.records import RecordSource
from jax_vlm.core import settings
from jax_vlm.evaluation import aurora
from jax_vlm.input.datasets import open_split, resolve_paths
from jax_vlm.pipeline import stages
from jax_vlm.pipeline.fdp_variants import FDP_VARIANTS
from jax_vlm.tools import convert, export, prepare
from tests.test_judge import FakeServer, _reply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.normpath(os.path.join(REPO, '..', 'shared', 'aurora_bench_sample'))
SCHEMA = ('L1', 'CLIP_I', 'CLIP_T', 'DINO', '#sample', 'GPT4o', 'GPT4o_all_predictions',
          '#gpt4o_valid', '#gpt4o_invalid', '#missing_target')
NUM_SCORABLE = 10  # of the 17 items: 6 list no target, 1 names a target file that is absent
NUM_VIDEOS, KEY_FRAMES = 3, 3  # -> 2 key-frame pairs per video


def render_videos(directory: str) -> list[str]:
  """Three 24-frame 48 px MJPG clips: a textured square that moves in bursts."""
  cv2 = pytest.importorskip('cv2')
  os.makedirs(directory, exist_ok=True)
  paths = []
  for v in range(NUM_VIDEOS):
    rng = np.random.default_rng(v)
    texture = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    path = os.path.join(directory, f'clip{v}.avi')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, (48, 48))
    if not writer.isOpened():
      pytest.skip('this OpenCV build cannot write MJPG avi files')
    x = 4
    for t in range(24):
      if t % 8 < 4:
        x += 2 + v % 2
      frame = np.full((48, 48, 3), 40 + 30 * v, np.uint8)
      frame[18:30, x % 36:x % 36 + 12] = texture
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    paths.append(path)
  return paths


def fake_judge():
  """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 that always gives scores [7, 5]."""
  return FakeServer(default=_reply('{"score": [7, 5], "reasoning": "a fake verdict"}'))


@pytest.fixture
def judge_server():
  server = fake_judge()
  yield server
  server.close()


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.skipif(not os.path.isdir(SAMPLE),
                    reason=f'the real AURORA-BENCH sample is not at {SAMPLE} (../shared/'
                    'aurora_bench_sample relative to the repo root)')
def test_real_data_pipeline(tmp_path, judge_server):
  ckpt, data = str(tmp_path / 'ckpt'), str(tmp_path / 'data')

  # 1. Stand-ins for the weights: tokenizer + VQGAN (the model starts from random init).
  assert convert.main(['tiny', ckpt, '--words_from', os.path.join(SAMPLE, 'test.json')]) == 0
  vqgan = os.path.join(ckpt, 'vqgan')

  # 2. Prepare: labelled triplets from the bench items, unlabelled key-frame pairs from videos.
  assert prepare.main(['aurora', '--root', SAMPLE, '--split', 'test', '--name', 'train',
                       '--vqgan', vqgan, '--out', data, '--no_progress']) == 0
  videos = render_videos(str(tmp_path / 'videos'))
  assert prepare.main(['videos', '--videos', str(tmp_path / 'videos'), '--vqgan', vqgan,
                       '--out', data, '--kf', str(KEY_FRAMES), '--if', '4', '--no_progress']) == 0
  labelled = list(RecordSource.from_prefix(os.path.join(data, 'train')))
  unlabelled = list(RecordSource.from_prefix(os.path.join(data, 'unlabelled')))
  assert len(labelled) == NUM_SCORABLE
  assert len(unlabelled) == NUM_VIDEOS * (KEY_FRAMES - 1)
  for ex in labelled + unlabelled:
    assert ex['src_codes'].shape == ex['tgt_codes'].shape == (16,)  # 4 x 4 codes
    weights = ex['recognition_weights']
    assert weights.shape == (16,) and weights.dtype == np.float32
  assert all(ex['action'] for ex in labelled)
  assert all(ex['action'] == '' and ex['video'] in videos for ex in unlabelled)

  # 3. Train: train.py's stages on this config (what `python train.py --config
  #    configs/real_smoke.py --workdir W --config.data.dir=DATA ...` runs).
  config = real_smoke.get_config()
  config.data.dir = data
  config.bootstrap.unlabelled = os.path.join(data, 'unlabelled')
  config.vocab.tokenizer_dir = os.path.join(ckpt, 'tokenizer')
  config.checkpoint.vqgan_dir = vqgan
  run = str(tmp_path / 'run')
  assert stages.run_stages(resolve_paths(config, run), run)
  for stage in config.stages:
    assert stages.is_done(run, stage)
  dynamics = _lines(os.path.join(run, 'train_dynamics', 'metrics.jsonl'))
  assert any('idp_loss' in m for m in dynamics) and any('fdp_loss' in m for m in dynamics)
  fdm = _lines(os.path.join(run, 'train_fdm', 'metrics.jsonl'))
  assert fdm and all('idp_loss' not in m for m in fdm) and fdm[-1]['step'] == 3

  # The bootstrap: every pair labelled, the non-empty labels kept (num_selected=1.0), each with
  # its class (the first word) and the recognition weights of its pair.
  stats = json.loads((tmp_path / 'run' / 'bootstrap' / 'stats.json').read_text())
  assert stats['num_labelled'] == len(unlabelled)
  synthetic = list(RecordSource.from_prefix(os.path.join(run, 'bootstrap', 'synthetic')))
  assert 1 <= len(synthetic) == stats['num_selected'] == stats['num_written'] <= len(unlabelled)
  by_id = {ex['example_id']: ex for ex in unlabelled}
  for rec in synthetic:
    source = by_id[rec['example_id'][len('synthetic-'):]]
    assert rec['split'] == 'synthetic' and rec['action'].strip()
    assert rec['action_type'] == rec['action'].lower().split()[0]
    assert np.isfinite(rec['label_score']) and rec['label_score'] < 0
    np.testing.assert_array_equal(rec['src_codes'], source['src_codes'])
    np.testing.assert_array_equal(rec['recognition_weights'], source['recognition_weights'])
  # train_fdm's data: the labelled set plus the synthetic one.
  fdm_config = resolve_paths(settings.with_overrides(config, FDP_VARIANTS['train_fdm'], 'fdm'), run)
  assert len(open_split(fdm_config.data, 'train')) == NUM_SCORABLE + len(synthetic)

  # 4. Evaluate: the FDP model as a transformers directory, the IDP model as Orbax params.
  assert export.find_stage_dir(config, run) == os.path.join(run, 'train_fdm')  # the last trained
  paths = export.export(config, run, str(tmp_path / 'export'), 'hf')
  config.eval.update(bench_root=SAMPLE, fdp_checkpoint=paths['hf'],
                     idp_checkpoint=os.path.join(run, 'train_dynamics', 'params'))
  config.eval.judge.update(enabled=True, base_url=judge_server.url, api_key_env='', max_retries=0,
                           timeout_s=30.0)
  workdir = str(tmp_path / 'fdp')
  metrics = aurora.run(config, workdir)

  assert metrics['all']['#sample'] == NUM_SCORABLE and metrics['all']['#missing_target'] == 1
  for task, entry in metrics.items():
    if task in aurora.NON_TASK_KEYS:
      continue
    assert set(SCHEMA) - ({'GPT4o_all_predictions'} if task == 'all' else set()) <= set(entry)
    assert entry['L1'] is not None or entry['#sample'] == 0
  assert metrics['all']['#gpt4o_valid'] == NUM_SCORABLE and metrics['all']['GPT4o'] == 5
  assert len(judge_server.requests) == NUM_SCORABLE
  assert all(r['path'] == '/v1/chat/completions' for r in judge_server.requests)
  assert metrics['run']['num_candidates'] == 2 and metrics['run']['complete']
  records = _lines(os.path.join(workdir, aurora.ITEMS_FILE))
  assert len(records) == NUM_SCORABLE
  for r in records:
    assert len(r['verifier_scores']) == 2 and r['chosen'] in (0, 1)
    assert r['judge']['valid']
    for rel in r['candidate_paths'] + [r['prediction_path']]:
      assert os.path.isfile(os.path.join(workdir, rel))
  html = open(os.path.join(workdir, aurora.REPORT_FILE)).read()
  sections = html.split('<section class="item">')[1:]
  assert len(sections) == NUM_SCORABLE
  for section in sections:  # K=2 candidates with their scores, one of them marked chosen
    assert 'candidate 0 ·' in section and 'candidate 1 ·' in section
    assert 'candidate 2' not in section
    assert 'candidate chosen' in section

  config.eval.update(task='idp')
  config.eval.judge.enabled = False
  idp_dir = str(tmp_path / 'idp')
  idp = aurora.run(config, idp_dir)
  assert idp['all']['#sample'] == NUM_SCORABLE and idp['run']['complete']
  assert {'BLEU', 'ROUGE1', 'ROUGEL', 'BERTScore'} <= set(idp['all'])
  assert np.isfinite(idp['all']['ROUGEL'])
  texts = _lines(os.path.join(idp_dir, aurora.ITEMS_FILE))
  assert len(texts) == NUM_SCORABLE and all(isinstance(r['prediction'], str) for r in texts)
