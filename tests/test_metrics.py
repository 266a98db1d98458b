"""Image metrics (L1 by hand, CLIP/DINO against the models run directly) and IDP text metrics."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jax_vlm.core.errors import UserError
from jax_vlm.evaluation.metrics import image_metrics, text_metrics


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP's byte -> printable character table (bytes that print map to themselves)."""
  printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def make_tiny_clip_dir(path: str) -> str:
  """A random 1-layer CLIPModel, a byte-level CLIP tokenizer and an image processor, saved."""
  import torch
  from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
  chars = list(_bytes_to_unicode().values())
  vocab = {c: i for i, c in enumerate(chars + [c + '</w>' for c in chars])}
  vocab['<|startoftext|>'] = len(vocab)
  vocab['<|endoftext|>'] = len(vocab)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  with open(os.path.join(path, 'merges.txt'), 'w') as f:
    f.write('#version: 0.2\n')
  CLIPTokenizer(os.path.join(path, 'vocab.json'), os.path.join(path, 'merges.txt')).save_pretrained(
      path)
  eos = vocab['<|endoftext|>']
  config = CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                       bos_token_id=vocab['<|startoftext|>'], eos_token_id=eos, pad_token_id=eos),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, image_size=32, patch_size=8),
      projection_dim=8)
  torch.manual_seed(0)
  CLIPModel(config).save_pretrained(path)
  CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32}
                     ).save_pretrained(path)
  return path


def make_tiny_dino_dir(path: str) -> str:
  """A random 1-layer ViTModel and its image processor, saved."""
  import torch
  from transformers import ViTConfig, ViTImageProcessor, ViTModel
  torch.manual_seed(1)
  ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(path)
  ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(path)
  return path


def make_tiny_bert_dir(path: str) -> str:
  """A random 2-layer BERT with a word-piece vocabulary covering the test sentences, saved."""
  import torch
  from transformers import BertConfig, BertModel, BertTokenizerFast
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'move', 'the', 'cup', 'to', 'left',
           'right', 'open', 'drawer', 'pick', 'up', 'a', 'red', 'ball']
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'vocab.txt'), 'w') as f:
    f.write('\n'.join(words))
  BertTokenizerFast(os.path.join(path, 'vocab.txt'), model_max_length=64).save_pretrained(path)
  torch.manual_seed(2)
  BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
            ).save_pretrained(path)
  return path


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
  return make_tiny_clip_dir(str(tmp_path_factory.mktemp('clip')))


@pytest.fixture(scope='module')
def dino_dir(tmp_path_factory):
  return make_tiny_dino_dir(str(tmp_path_factory.mktemp('dino')))


def _random_image(seed: int, h: int, w: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- L1 -------------------------------------------------------------------------------------------


def test_l1_matches_hand_computation_same_size():
  prediction = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # [1, 2, 3]
  target = np.array([[[255, 0, 51], [255, 255, 0]]], dtype=np.uint8)
  # |diffs| / 255 per value: 1, 0, 0.2, 0, 0, 1 -> mean 2.2 / 6.
  assert image_metrics.l1_distance(prediction, target) == pytest.approx(2.2 / 6)


def test_l1_resizes_target_to_the_source_size():
  # A constant 8x8 target stays constant when resized to the 4x4 source size, so the expected
  # value is a plain mean over the 4x4 prediction.
  prediction = _random_image(0, 4, 4)
  target = np.full((8, 8, 3), 100, dtype=np.uint8)
  expected = np.mean(np.abs(prediction.astype(np.float64) - 100.0)) / 255.0
  assert image_metrics.l1_distance(prediction, target, size=(4, 4)) == pytest.approx(expected)
  # A prediction of another size is brought to the source size too.
  big_prediction = np.full((6, 10, 3), 40, dtype=np.uint8)
  assert image_metrics.l1_distance(big_prediction, target, size=(4, 4)) == pytest.approx(60 / 255)


def test_l1_uses_bicubic_resize_at_the_given_size():
  prediction = _random_image(1, 5, 7)
  target = _random_image(2, 10, 14)
  resized = np.asarray(Image.fromarray(target).resize((7, 5), Image.BICUBIC), dtype=np.float64)
  expected = np.mean(np.abs(prediction - resized)) / 255.0
  assert image_metrics.l1_distance(prediction, target, size=(7, 5)) == pytest.approx(expected)
  assert image_metrics.l1_distance(prediction, prediction) == 0.0


# --- CLIP / DINO ----------------------------------------------------------------------------------


def test_clip_scores_match_the_model_run_directly(clip_dir):
  import torch
  from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer
  scorer = image_metrics.ClipScorer(clip_dir)
  pred, tgt = _random_image(3, 40, 50), _random_image(4, 24, 30)
  text = 'move the cup to the left'
  scores = scorer.scores(pred, tgt, text)

  model = CLIPModel.from_pretrained(clip_dir).eval()
  processor = CLIPImageProcessor.from_pretrained(clip_dir)
  tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
  with torch.no_grad():
    pixels = processor(images=[pred, tgt], return_tensors='pt')['pixel_values']
    vision = model.vision_model(pixel_values=pixels).pooler_output
    image_emb = model.visual_projection(vision).numpy().astype(np.float64)
    tokens = tokenizer([text], return_tensors='pt')
    words = model.text_model(**tokens).pooler_output
    text_emb = model.text_projection(words).numpy().astype(np.float64)[0]
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  assert scores['CLIP_I'] == pytest.approx(cos(image_emb[0], image_emb[1]), abs=1e-5)
  assert scores['CLIP_T'] == pytest.approx(cos(image_emb[0], text_emb), abs=1e-5)
  assert scorer.scores(pred, pred, text)['CLIP_I'] == pytest.approx(1.0, abs=1e-6)
  assert scores['CLIP_I'] < 1.0 - 1e-6


def test_dino_scores_are_cls_cosines(dino_dir):
  import torch
  from transformers import ViTImageProcessor, ViTModel
  scorer = image_metrics.DinoScorer(dino_dir)
  pred, tgt = _random_image(5, 33, 47), _random_image(6, 64, 64)
  model = ViTModel.from_pretrained(dino_dir).eval()
  pixels = ViTImageProcessor.from_pretrained(dino_dir)(images=[pred, tgt], return_tensors='pt')
  with torch.no_grad():
    cls = model(**pixels).last_hidden_state[:, 0].numpy().astype(np.float64)
  expected = cls[0] @ cls[1] / np.linalg.norm(cls[0]) / np.linalg.norm(cls[1])
  assert scorer.scores(pred, tgt)['DINO'] == pytest.approx(expected, abs=1e-5)
  assert scorer.scores(pred, pred)['DINO'] == pytest.approx(1.0, abs=1e-6)


def test_missing_model_dirs_are_one_sentence_errors(tmp_path):
  with pytest.raises(UserError, match='eval.clip_dir'):
    image_metrics.ClipScorer(str(tmp_path / 'nope'))
  with pytest.raises(UserError, match='could not be loaded'):
    image_metrics.DinoScorer(str(tmp_path))  # exists but empty


# --- text metrics ---------------------------------------------------------------------------------


def test_text_metrics_match_hand_computation():
  # One pair differing in the last word: n-gram precisions 5/6, 4/5, 3/4, 2/3, no brevity penalty,
  # so BLEU = 100 * (1/3) ** (1/4); ROUGE-1 and ROUGE-L F = 5/6.
  result = text_metrics.text_metrics(['pick up the red ball now'], ['pick up the red ball later'])
  assert result['BLEU'] == pytest.approx(100 * (1 / 3) ** 0.25, abs=1e-3)
  assert result['ROUGE1'] == pytest.approx(5 / 6)
  assert result['ROUGEL'] == pytest.approx(5 / 6)
  assert result['BERTScore'] is None
  assert 'BERTScore skipped' in result['notes'][0]
  assert result['#sample'] == 1


def test_rouge_l_differs_from_rouge_1_on_reordering():
  result = text_metrics.text_metrics(['left cup move'], ['move the cup left'])
  # ROUGE-1: 3 shared words, P = 3/3, R = 3/4 -> F = 6/7. LCS = 1 ('cup' or 'left' or 'move'),
  # P = 1/3, R = 1/4 -> F = 2/7.
  assert result['ROUGE1'] == pytest.approx(6 / 7)
  assert result['ROUGEL'] == pytest.approx(2 / 7)


def test_bertscore_from_a_local_directory(tmp_path):
  bert_dir = make_tiny_bert_dir(str(tmp_path / 'bert'))
  same = text_metrics.text_metrics(['move the cup to the left'], ['move the cup to the left'],
                                   bertscore_dir=bert_dir)
  assert same['BERTScore'] == pytest.approx(1.0, abs=1e-5)
  assert same['notes'] == []
  other = text_metrics.text_metrics(['open the drawer', 'pick up a red ball'],
                                    ['move the cup to the right', 'pick up the ball'],
                                    bertscore_dir=bert_dir, bertscore_num_layers=1)
  assert 0.0 < other['BERTScore'] < 1.0 - 1e-4


def test_text_metrics_bad_input():
  with pytest.raises(UserError, match='one reference per prediction'):
    text_metrics.text_metrics(['a', 'b'], ['a'])
  with pytest.raises(UserError, match='does not exist'):
    text_metrics.text_metrics(['a'], ['a'], bertscore_dir='/nonexistent/bert')
