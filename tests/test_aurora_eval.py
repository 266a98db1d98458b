"""AURORA-BENCH evaluation: copy baseline, predictors, resumability, bad input, eval.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data.aurora import load_aurora_bench
from jax_vlm.core.errors import UserError
from jax_vlm.evaluation import aurora
from jax_vlm.evaluation.judge import JudgeResult, JudgeUnavailable
from tests.test_metrics import make_tiny_clip_dir, make_tiny_dino_dir

SAMPLE = '/work/shared/aurora_bench_sample'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(root, rel, image):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


@pytest.fixture
def bench(tmp_path):
  """A 6-entry bench: 'ag' x2 (one target twice the source's size), 'kubric' x2, 'clevr' without a
  target, and a 'kubric' item whose listed target file is missing.

  Targets are constant colours, so the copy baseline's L1 (at the source's size) is known by hand.
  """
  root = str(tmp_path / 'bench')
  rng = np.random.default_rng(0)
  sources = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(6)]
  entries = []
  expected = {}
  for i, (task, target_value, target_shape) in enumerate([
      ('ag', 10, (6, 8)), ('ag', 200, (12, 16)), ('kubric', 0, (6, 8)), ('kubric', 255, (3, 4))]):
    _save(root, f'data/{task}/{i}_in.png', sources[i])
    _save(root, f'data/{task}/{i}_out.png', np.full(target_shape + (3,), target_value, np.uint8))
    entries.append({'input': f'data/{task}/{i}_in.png', 'output': f'data/{task}/{i}_out.png',
                    'instruction': f'do thing {i}', 'task': task})
    expected[i] = np.mean(np.abs(sources[i].astype(np.float64) - target_value)) / 255.0
  _save(root, 'data/clevr/4_in.png', sources[4])
  entries.append({'input': 'data/clevr/4_in.png', 'instruction': 'add a sphere', 'task': 'clevr',
                  'id': '004'})
  _save(root, 'data/kubric/5_in.png', sources[5])
  entries.append({'input': 'data/kubric/5_in.png', 'output': 'data/kubric/5_gone.png',
                  'instruction': 'x', 'task': 'kubric'})
  with open(os.path.join(root, 'test.json'), 'w') as f:
    json.dump(entries, f)
  items, _ = load_aurora_bench(root)
  return root, items, expected, sources


def _lines(workdir):
  with open(os.path.join(workdir, aurora.ITEMS_FILE)) as f:
    return [json.loads(line) for line in f]


class _FakeJudge:
  """Duck-typed JudgeClient: scripted verdicts per call, or an outage from call `down_at` on."""

  def __init__(self, verdicts=None, down_at=None):
    self.verdicts, self.down_at, self.calls = list(verdicts or []), down_at, []

  def judge(self, instruction, src_frame, pred_frame):
    self.calls.append(instruction)
    if self.down_at is not None and len(self.calls) > self.down_at:
      raise JudgeUnavailable('The judge endpoint http://x could not be reached (refused).')
    if self.verdicts:
      return self.verdicts.pop(0)
    return JudgeResult(True, 7, 5, 5, '{"score": [7, 5]}', attempts=1)


def test_copy_baseline_l1_by_hand_and_outputs(bench, tmp_path):
  _, items, expected, _ = bench
  workdir = str(tmp_path / 'run')
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='copy',
                                         progress=False)
  assert list(metrics) == ['ag', 'kubric', 'all', 'run', 'notes']
  assert metrics['ag']['L1'] == pytest.approx((expected[0] + expected[1]) / 2)
  assert metrics['kubric']['L1'] == pytest.approx((expected[2] + expected[3]) / 2)
  assert metrics['all']['L1'] == pytest.approx(np.mean([expected[i] for i in range(4)]))
  assert metrics['ag']['#sample'] == 2 and metrics['kubric']['#sample'] == 2
  assert metrics['kubric']['#missing_target'] == 1 and metrics['all']['#sample'] == 4
  for name in ('CLIP_I', 'CLIP_T', 'DINO', 'GPT4o'):
    assert metrics['all'][name] is None
  assert metrics['ag']['GPT4o_all_predictions'] == [] and metrics['ag']['#gpt4o_valid'] == 0
  notes = ' '.join(metrics['notes'])
  assert 'CLIP_I and CLIP_T skipped' in notes and 'DINO skipped' in notes
  assert 'GPT4o skipped' in notes and '5_gone.png' in notes and 'clevr' in notes
  with open(os.path.join(workdir, aurora.METRICS_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(metrics))
  records = _lines(workdir)
  assert [r['index'] for r in records] == [0, 1, 2, 3]
  assert records[1]['L1'] == pytest.approx(expected[1])
  assert os.path.isfile(os.path.join(workdir, records[0]['prediction_path']))
  assert os.path.getsize(os.path.join(workdir, aurora.REPORT_FILE)) > 1000


def test_rerun_skips_scored_items_and_fills_in_new_metrics(bench, tmp_path):
  _, items, _, _ = bench
  workdir = str(tmp_path / 'run')
  first = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='copy',
                                       progress=False)

  def must_not_predict(item):
    raise AssertionError(f'item {item.index} predicted again')

  again = aurora.evaluate_aurora_bench(items, must_not_predict, workdir, model_name='copy',
                                       progress=False)
  assert again == first and len(_lines(workdir)) == 4
  # Turning the judge on later asks it about every item, reusing the saved predictions.
  fake = _FakeJudge()
  judged = aurora.evaluate_aurora_bench(items, must_not_predict, workdir,
                                        aurora.Scorers(judge=fake), model_name='copy',
                                        progress=False)
  assert len(fake.calls) == 4 and judged['all']['GPT4o'] == 5 and judged['all']['#gpt4o_valid'] == 4
  assert judged['ag']['GPT4o_all_predictions'] == [{'final_score': 5,
                                                    'response': '{"score": [7, 5]}'}] * 2
  assert judged['all']['L1'] == first['all']['L1']
  with pytest.raises(UserError, match="holds results of model 'copy'"):
    aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='other',
                                 progress=False)


def test_judge_outage_keeps_scored_items_and_resumes(bench, tmp_path):
  _, items, _, _ = bench
  workdir = str(tmp_path / 'run')
  down = _FakeJudge(down_at=2)
  with pytest.raises(UserError, match='could not be reached'):
    aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir,
                                 aurora.Scorers(judge=down), model_name='copy', progress=False)
  records = {r['index']: r for r in _lines(workdir)}
  assert records[0]['judge']['valid'] and records[1]['judge']['valid']
  assert 'judge' not in records[2] and records[2]['L1'] is not None  # scored up to the outage
  assert 3 not in records
  partial = json.load(open(os.path.join(workdir, aurora.METRICS_FILE)))
  assert partial['all']['#gpt4o_valid'] == 2
  invalid = JudgeResult(False, response='I cannot help.', error='unparseable reply', attempts=3)
  up = _FakeJudge(verdicts=[invalid])
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir,
                                         aurora.Scorers(judge=up), model_name='copy',
                                         progress=False)
  assert up.calls == ['do thing 2', 'do thing 3']  # items 0 and 1 were not asked again
  assert metrics['kubric']['#gpt4o_invalid'] == 1 and metrics['kubric']['#gpt4o_valid'] == 1
  assert metrics['kubric']['GPT4o'] == 5  # the invalid verdict is not a 0
  assert metrics['all']['#gpt4o_valid'] == 3 and metrics['all']['#sample'] == 4
  # With rejudge_invalid, a rerun asks about the invalid item only.
  again = _FakeJudge()
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir,
                                         aurora.Scorers(judge=again, rejudge_invalid=True),
                                         model_name='copy', progress=False)
  assert again.calls == ['do thing 2'] and metrics['all']['#gpt4o_valid'] == 4


def test_candidate_predictor_scores_the_chosen_frame(bench, tmp_path):
  _, items, expected, sources = bench

  def predictor(item):
    src = np.asarray(Image.open(item.input_path))
    candidates = [np.zeros_like(src), src, np.full_like(src, 255)]
    return aurora.Prediction(candidates=candidates, verifier_scores=[-5.0, -1.0, -3.0], chosen=1)

  workdir = str(tmp_path / 'run')
  metrics = aurora.evaluate_aurora_bench(items, predictor, workdir, model_name='k3',
                                         progress=False)
  assert metrics['all']['L1'] == pytest.approx(np.mean([expected[i] for i in range(4)]))
  record = _lines(workdir)[0]
  assert record['chosen'] == 1 and record['verifier_scores'] == [-5.0, -1.0, -3.0]
  assert len(record['candidate_paths']) == 3
  np.testing.assert_array_equal(
      np.asarray(Image.open(os.path.join(workdir, record['candidate_paths'][2]))), 255)
  html = open(os.path.join(workdir, aurora.REPORT_FILE), encoding='utf-8').read()
  assert html.count('class="frame candidate chosen"') == 4  # one per scored item
  assert 'candidate 1 · -1.000 · chosen' in html


def test_as_prediction_rejects_malformed_outputs():
  frame = np.zeros((2, 2, 3), np.uint8)
  assert aurora.as_prediction({'frame': frame}).chosen is None
  with pytest.raises(ValueError, match='verifier scores'):
    aurora.as_prediction(aurora.Prediction(candidates=[frame, frame], verifier_scores=[1.0],
                                           chosen=0))
  with pytest.raises(ValueError, match='not a candidate index'):
    aurora.as_prediction(aurora.Prediction(candidates=[frame], verifier_scores=[1.0], chosen=3))
  with pytest.raises(ValueError, match=r'uint8 \[h, w, 3\]'):
    aurora.as_prediction(np.zeros((2, 2), np.uint8))
  with pytest.raises(ValueError, match='uint8'):
    aurora.as_prediction(np.zeros((2, 2, 3), np.float32))


def test_corrupt_image_is_a_failed_item_and_the_run_goes_on(bench, tmp_path):
  root, items, _, _ = bench
  with open(os.path.join(root, 'data/kubric/2_out.png'), 'wb') as f:
    f.write(b'not a png')
  workdir = str(tmp_path / 'run')
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='copy',
                                         progress=False)
  lines = _lines(workdir)
  assert [r['index'] for r in lines] == [0, 1, 2, 3]
  assert lines[2]['failed'] == aurora.FAILURE_UNREADABLE
  assert '2_out.png could not be decoded' in lines[2]['error']
  assert metrics['all']['#sample'] == 3
  assert metrics['run']['failures'] == {aurora.FAILURE_UNREADABLE: 1}
  assert not metrics['run']['complete'] and metrics['run']['model'] == 'copy'
  assert any(n.startswith('Incomplete run: 1 item failed') for n in metrics['notes'])
  # Fixed file: a rerun scores the failed item and the run is complete.
  Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(os.path.join(root, 'data/kubric/2_out.png'))
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='copy',
                                         progress=False)
  assert metrics['run']['complete'] and metrics['all']['#sample'] == 4


def test_clip_and_dino_through_the_evaluation(bench, tmp_path):
  _, items, _, _ = bench
  clip = aurora.ClipScorer(make_tiny_clip_dir(str(tmp_path / 'clip')))
  dino = aurora.DinoScorer(make_tiny_dino_dir(str(tmp_path / 'dino')))
  workdir = str(tmp_path / 'run')
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir,
                                         aurora.Scorers(clip=clip, dino=dino), model_name='copy',
                                         progress=False)
  for task in ('ag', 'kubric', 'all'):
    for name in ('CLIP_I', 'CLIP_T', 'DINO'):
      assert -1.0 <= metrics[task][name] <= 1.0
  record = _lines(workdir)[0]
  src = np.asarray(Image.open(items[0].input_path))
  tgt = np.asarray(Image.open(items[0].output_path))
  assert record['CLIP_I'] == pytest.approx(clip.scores(src, tgt, 'do thing 0')['CLIP_I'])
  assert record['DINO'] == pytest.approx(dino.scores(src, tgt)['DINO'])
  assert not any('CLIP' in n or 'DINO' in n for n in metrics['notes'])


@pytest.mark.skipif(not os.path.isdir(SAMPLE), reason=f'the shared sample {SAMPLE} is not here')
def test_copy_on_the_shared_sample(tmp_path):
  items, _ = load_aurora_bench(SAMPLE)
  workdir = str(tmp_path / 'run')
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, workdir, model_name='copy',
                                         progress=False)
  assert metrics['all']['#sample'] == 10 and metrics['all']['#missing_target'] == 1
  assert metrics['something']['#sample'] == 2
  assert {t: metrics[t]['#sample'] for t in ('magicbrush', 'ag', 'whatsup', 'kubric')} == {
      'magicbrush': 2, 'ag': 2, 'whatsup': 2, 'kubric': 2}
  # MagicBrush: 500x500 source, 1024x1024 target: L1 is taken at the source's size.
  record = _lines(workdir)[0]
  src = np.asarray(Image.open(record['input_path']).convert('RGB'), dtype=np.float64)
  tgt = Image.open(record['output_path']).convert('RGB')
  assert tgt.size != (src.shape[1], src.shape[0])
  tgt = np.asarray(tgt.resize((src.shape[1], src.shape[0]), Image.BICUBIC), dtype=np.float64)
  assert record['L1'] == pytest.approx(np.mean(np.abs(src - tgt)) / 255.0)


def _eval_py(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, os.path.join(REPO, 'eval.py'), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_eval_py_entry_point(bench, tmp_path):
  root, _, expected, _ = bench
  workdir = str(tmp_path / 'run')
  done = _eval_py('--config', 'configs/aurora_bench.py', f'--config.bench_root={root}',
                  '--config.model=copy', f'--workdir={workdir}', '--config.eval.progress=False')
  assert done.returncode == 0, done.stderr
  with open(os.path.join(workdir, aurora.METRICS_FILE)) as f:
    metrics = json.load(f)
  assert metrics['all']['L1'] == pytest.approx(np.mean([expected[i] for i in range(4)]))
  assert os.path.isfile(os.path.join(workdir, aurora.REPORT_FILE))
  assert len(_lines(workdir)) == 4

  bad = _eval_py('--config', 'configs/aurora_bench.py', f'--config.bench_root={root}',
                 '--config.model=nope', f'--workdir={tmp_path / "bad"}')
  assert bad.returncode == 1
  assert "error: Unknown eval.model 'nope'; use one of" in bad.stderr
  assert 'Traceback' not in bad.stderr
  missing = _eval_py('--config', 'configs/aurora_bench.py', f'--workdir={tmp_path / "bad"}')
  assert missing.returncode == 1 and 'No AURORA-BENCH root given' in missing.stderr


def test_real_judge_client_against_a_local_server(bench, tmp_path):
  from jax_vlm.evaluation.judge import JudgeClient
  from tests.test_judge import FakeServer, _reply
  _, items, _, _ = bench
  server = FakeServer()
  try:
    server.script = [
        _reply('{"score": [9, 3], "reasoning": "a"}'),  # item 0: 3
        _reply('```json\n{"score":[4,8],"reasoning":"b"}\n```'),  # item 1: 4
        _reply("I'm sorry, I can't help."), _reply("I'm sorry, I can't help."),  # item 2: invalid
        (500, {'error': 'x'}), _reply('{\u201cscore\u201d: [10, 10]}'),  # item 3: 10 on retry
    ]
    # One request at a time: the scripted replies are handed out in arrival order.
    client = JudgeClient(server.url, 'gpt-4o', max_retries=1, backoff_s=0.01, timeout_s=5.0,
                         max_in_flight=1)
    metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, str(tmp_path / 'run'),
                                           aurora.Scorers(judge=client), model_name='copy',
                                           progress=False)
  finally:
    server.close()
  assert metrics['ag']['GPT4o'] == 3.5 and metrics['ag']['#gpt4o_valid'] == 2
  assert metrics['kubric']['GPT4o'] == 10 and metrics['kubric']['#gpt4o_invalid'] == 1
  assert metrics['all']['GPT4o'] == pytest.approx(17 / 3) and metrics['all']['#gpt4o_valid'] == 3
  record = _lines(str(tmp_path / 'run'))[2]
  assert record['judge']['valid'] is False and record['judge']['attempts'] == 2
  assert "can't help" in record['judge']['response']


def test_judge_requests_run_concurrently_in_evaluation(bench, tmp_path):
  """With max_in_flight=4 the evaluation hands the judge 4 items at once (judge_many)."""
  import threading
  import time as time_lib
  _, items, _, _ = bench

  class _SlowJudge:
    max_in_flight = 4

    def __init__(self):
      self.active, self.peak, self.lock = 0, 0, threading.Lock()

    def judge(self, instruction, src, pred):
      from jax_vlm.evaluation.judge import JudgeResult
      with self.lock:
        self.active += 1
        self.peak = max(self.peak, self.active)
      time_lib.sleep(0.05)
      with self.lock:
        self.active -= 1
      return JudgeResult(valid=True, success=5.0, minimal=5.0, final_score=5.0, attempts=1)

    def judge_many(self, asks):
      import concurrent.futures
      with concurrent.futures.ThreadPoolExecutor(self.max_in_flight) as pool:
        return list(pool.map(lambda a: self.judge(*a), asks))

  slow = _SlowJudge()
  metrics = aurora.evaluate_aurora_bench(items, aurora.copy_predictor, str(tmp_path / 'run'),
                                         aurora.Scorers(judge=slow), model_name='copy',
                                         progress=False)
  assert slow.peak > 1 and metrics['all']['#gpt4o_valid'] == 4
