"""Real-data smoke pipeline: a tiny Chameleon-family model and a tiny 16 px VQGAN on the 17 real
AURORA-BENCH items in ../shared/aurora_bench_sample (relative to the repo root): random-init
checkpoints (one exported as a transformers directory), FDP evaluation with K=2 and an IDP
verifier, then IDP evaluation. Checks files, schemas, counts and K candidates per item in the
report, not quality.

  python -m pytest -q -p no:xdist tests/test_real_smoke.py
"""

import json
import os

import jax
import numpy as np
import pytest

from jax_vlm.evaluation import aurora
from jax_vlm.models.config import TransformerConfig
from jax_vlm.tools import export
from jax_vlm.training import checkpointing
from tests.test_aurora_models import fdp_config, tiny_artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.normpath(os.path.join(REPO, '..', 'shared', 'aurora_bench_sample'))
SCHEMA = ('L1', 'CLIP_I', 'CLIP_T', 'DINO', '#sample', 'GPT4o', 'GPT4o_all_predictions',
          '#gpt4o_valid', '#gpt4o_invalid', '#missing_target')


@pytest.mark.skipif(not os.path.isdir(SAMPLE),
                    reason=f'the real AURORA-BENCH sample is not at {SAMPLE} (../shared/'
                    'aurora_bench_sample relative to the repo root)')
def test_real_sample_fdp_best_of_2_and_idp(tmp_path):
  art = tiny_artifacts(str(tmp_path / 'art'))
  # The FDP model as a transformers directory (what export writes), the verifier as Orbax params.
  config = fdp_config(art, SAMPLE, k=2, idp=art['model_dir'])
  hf_dir = str(tmp_path / 'fdp_hf')
  export.write_hf(config, TransformerConfig.from_config(config.model),
                  jax.device_get(checkpointing.load_params(art['model_dir'])), hf_dir)
  config.eval.fdp_checkpoint = hf_dir
  config.eval.report_items_per_task = -1
  workdir = str(tmp_path / 'fdp')
  metrics = aurora.run(config, workdir)

  assert metrics['all']['#sample'] == 10 and metrics['all']['#missing_target'] == 1
  for task, entry in metrics.items():
    if task in aurora.NON_TASK_KEYS:
      continue
    assert set(SCHEMA) - ({'GPT4o_all_predictions'} if task == 'all' else set()) <= set(entry)
    assert entry['L1'] is not None or entry['#sample'] == 0
  assert metrics['run']['num_candidates'] == 2 and metrics['run']['complete']
  with open(os.path.join(workdir, aurora.ITEMS_FILE)) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 10
  for r in records:
    assert len(r['verifier_scores']) == 2 and r['chosen'] in (0, 1)
    for rel in r['candidate_paths'] + [r['prediction_path']]:
      assert os.path.isfile(os.path.join(workdir, rel))
  html = open(os.path.join(workdir, aurora.REPORT_FILE)).read()
  sections = html.split('<section class="item">')[1:]
  assert len(sections) == 10
  for section in sections:  # K=2 candidates with their scores, one of them marked chosen
    assert 'candidate 0 ·' in section and 'candidate 1 ·' in section
    assert 'candidate 2' not in section
    assert 'candidate chosen' in section

  config.eval.update(task='idp', batch_size=4)
  idp_dir = str(tmp_path / 'idp')
  idp = aurora.run(config, idp_dir)
  assert idp['all']['#sample'] == 10 and idp['run']['complete']
  assert {'BLEU', 'ROUGE1', 'ROUGEL', 'BERTScore'} <= set(idp['all'])
  assert np.isfinite(idp['all']['ROUGEL'])
