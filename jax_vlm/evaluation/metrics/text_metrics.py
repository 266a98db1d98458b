"""Text metrics for inverse dynamics (IDP: two frames -> action text), as in the paper's Table 1.

- `BLEU`: corpus BLEU-4 from sacrebleu (13a tokenisation, exponential smoothing off, one reference
  per prediction), on sacrebleu's 0-100 scale.
- `ROUGE1`, `ROUGEL`: F-measure of ROUGE-1 and ROUGE-L from rouge_score (Porter stemming on), mean
  over pairs, 0-1.
- `BERTScore`: F1 from bert_score, mean over pairs, 0-1, with the model loaded from a LOCAL
  directory (`model_type` set to that path, `num_layers` the layer whose features are compared; the
  paper's bert_score default for English is roberta-large with num_layers=17). No idf weighting, no
  baseline rescaling. Skipped, with a note, when no directory is given.
"""

import json
import logging
import os
from typing import Sequence

import numpy as np

from jax_vlm.core.errors import UserError, require

# transformers writes a huge sentinel when a tokenizer has no length limit; bert_score passes it on
# as `max_length`, which the fast tokenizers reject.
_UNBOUNDED_LENGTH = 10**6


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU-4 (sacrebleu, 0-100)."""
  import sacrebleu
  return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict:
  """{'ROUGE1', 'ROUGEL'}: mean F-measures (0-1)."""
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)
  r1, rl = [], []
  for pred, ref in zip(predictions, references):
    s = scorer.score(ref, pred)  # (target, prediction) order
    r1.append(s['rouge1'].fmeasure)
    rl.append(s['rougeL'].fmeasure)
  return {'ROUGE1': float(np.mean(r1)), 'ROUGEL': float(np.mean(rl))}


def _num_layers_of(model_dir: str) -> int:
  """The last hidden layer of a transformers directory (its config's `num_hidden_layers`)."""
  try:
    with open(os.path.join(model_dir, 'config.json')) as f:
      return int(json.load(f)['num_hidden_layers'])
  except (OSError, KeyError, ValueError) as e:
    raise UserError(
        f'The BERTScore model directory {model_dir} has no readable config.json with '
        'num_hidden_layers; give the number of layers explicitly or use a transformers directory.'
    ) from e


def bertscore(predictions: Sequence[str], references: Sequence[str], model_dir: str,
              num_layers: int | None = None, batch_size: int = 32) -> float:
  """Mean BERTScore F1 (0-1) with the model in `model_dir` (default layer: its last one)."""
  require(os.path.isdir(model_dir),
          f'The BERTScore model directory {model_dir} does not exist; give a local transformers '
          'directory (e.g. a saved roberta-large) or leave it empty to skip BERTScore.')
  import bert_score
  if num_layers is None:
    num_layers = _num_layers_of(model_dir)
  scorer = bert_score.BERTScorer(
      model_type=model_dir, num_layers=num_layers, batch_size=batch_size, device='cpu')
  tokenizer = scorer._tokenizer
  if tokenizer.model_max_length > _UNBOUNDED_LENGTH:
    tokenizer.model_max_length = scorer._model.config.max_position_embeddings
  _, _, f1 = scorer.score(list(predictions), list(references))
  return float(f1.mean())


def text_metrics(predictions: Sequence[str], references: Sequence[str],
                 bertscore_dir: str | None = None,
                 bertscore_num_layers: int | None = None) -> dict:
  """IDP metrics of predicted vs. reference action texts.

  Args:
    predictions: `n` predicted actions.
    references: `n` reference actions, one per prediction.
    bertscore_dir: local transformers directory for BERTScore; None or '' skips it.
    bertscore_num_layers: layer for BERTScore (default: the model's last).

  Returns:
    {'BLEU', 'ROUGE1', 'ROUGEL', 'BERTScore' (None when skipped), '#sample', 'notes': [str]}.
  """
  predictions, references = list(predictions), list(references)
  require(len(predictions) == len(references),
          f'Got {len(predictions)} predictions but {len(references)} references; give one '
          'reference per prediction.')
  require(len(predictions) > 0, 'No predictions to score; give at least one prediction.')
  result = {'BLEU': bleu(predictions, references), **rouge(predictions, references)}
  notes = []
  if bertscore_dir:
    result['BERTScore'] = bertscore(predictions, references, bertscore_dir, bertscore_num_layers)
  else:
    result['BERTScore'] = None
    notes.append('BERTScore skipped: no local model directory given (bertscore_dir).')
    logging.warning(notes[-1])
  result['#sample'] = len(predictions)
  result['notes'] = notes
  return result
