"""`python -m jax_vlm.export`'s transformers directory loads in transformers for every family we
train, and gives our logits on text tokens (fp32, max abs diff <= 1e-4)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from configs import tiny
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens import vocab as vocab_lib
from jax_vlm.tools import export

CLASSES = {'chameleon': transformers.ChameleonForConditionalGeneration,
           'gemma': transformers.GemmaForCausalLM}


@pytest.mark.parametrize('family', ['chameleon', 'gemma'])
def test_export_loads_in_transformers_with_same_logits(tmp_path, family):
  config = tiny.get_config(family)
  tokenizer_dir = vocab_lib.build_word_tokenizer(
      ['a', 'red', 'cube', 'moves', 'left'], str(tmp_path / 'tok'),
      num_image_codes=config.vocab.num_image_codes)
  config.vocab.tokenizer_dir = tokenizer_dir
  model_config = TransformerConfig.from_config(config.model, scan_layers=True)
  module = DecoderLM(model_config)
  ids = np.random.default_rng(0).integers(0, 40, size=(2, 24)).astype(np.int32)
  params = module.init(jax.random.PRNGKey(1), ids)['params']
  # Random norm scales too, so every transposition and the norm style matter.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
  ours = np.asarray(jax.jit(lambda p, i: module.apply({'params': p}, i))(params, ids))

  out = export.write_hf(config, model_config, jax.device_get(params), str(tmp_path / 'hf'))
  saved = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  if family == 'chameleon':
    assert 'IMGIMGBZ' in saved['vocabulary_map'] and 'cube' in saved['vocabulary_map']
    assert len([k for k in saved['vocabulary_map'] if k.startswith('IMGIMG')]) == 16
    assert saved['vq_config']['num_embeddings'] == 16
  assert (tmp_path / 'hf' / 'tokenizer.json').exists()
  model = CLASSES[family].from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()
  # Chameleon masks image tokens in its logits; compare the text vocabulary.
  text = np.ones(model_config.vocab_size, bool)
  if family == 'chameleon':
    text[[v for k, v in saved['vocabulary_map'].items() if k.startswith('IMGIMG')]] = False
  diff = np.abs(theirs[..., text] - ours[..., text]).max()
  assert diff <= 1e-4, diff


def test_export_without_tokenizer_still_loads(tmp_path):
  """No tokenizer at hand: an empty vocabulary_map, still loadable (the issue's AttributeError)."""
  config = tiny.get_config('chameleon')
  model_config = TransformerConfig.from_config(config.model)
  module = DecoderLM(model_config)
  ids = np.arange(16, dtype=np.int32)[None]
  params = module.init(jax.random.PRNGKey(0), ids)['params']
  out = export.write_hf(config, model_config, jax.device_get(params), str(tmp_path / 'hf'))
  model = transformers.ChameleonForConditionalGeneration.from_pretrained(out).eval()
  ours = np.asarray(module.apply({'params': params}, ids))
  with torch.no_grad():
    theirs = model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  assert np.abs(theirs - ours).max() <= 1e-4
