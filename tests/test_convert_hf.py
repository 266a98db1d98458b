"""transformers <-> Flax conversion: round trips through save_pretrained and the CLI, sharded
checkpoints, kept config extras / VQGAN tensors, and the one-sentence errors."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jax_vlm.core.errors import UserError
from jax_vlm.tools import convert as cli
from jax_vlm.weights import hf
from tests.test_transformer_parity import make_chameleon, make_gemma, random_ids, run, torch_logits


def test_chameleon_round_trip_keeps_extras_and_vqgan(tmp_path):
  src, dst = tmp_path / 'src', tmp_path / 'dst'
  make_chameleon(src, 6, 2, 48, True)
  module, params = hf.from_pretrained(str(src), dtype='float32', scan_layers=False)
  # Change the weights so the round trip cannot pass by copying files.
  down = params['layers_1']['mlp']['down_proj']
  down['kernel'] = down['kernel'] * 1.5
  hf.save_pretrained(module, params, str(dst), max_shard_bytes=40_000)  # several shards
  assert os.path.exists(dst / 'model.safetensors.index.json')
  saved = json.loads((dst / 'config.json').read_text())
  assert saved['vocabulary_map']['IMGIMGBA'] == 90 and saved['swin_norm'] is True
  assert saved['vq_config']['num_embeddings'] == 16
  reloaded = transformers.ChameleonForConditionalGeneration.from_pretrained(str(dst)).eval()
  original = transformers.ChameleonForConditionalGeneration.from_pretrained(str(src)).eval()
  vq = 'model.vqmodel.quantize.embedding.weight'
  torch.testing.assert_close(reloaded.state_dict()[vq], original.state_dict()[vq])
  ids = random_ids(96)
  np.testing.assert_allclose(torch_logits(reloaded, ids), run(module, params, ids), atol=1e-4,
                             rtol=0)
  # ... and the sharded directory converts back to the same params.
  _, again = hf.from_pretrained(str(dst), dtype='float32', scan_layers=False)
  np.testing.assert_array_equal(again['layers_1']['mlp']['down_proj']['kernel'],
                                params['layers_1']['mlp']['down_proj']['kernel'])


def test_gemma_cli_round_trip(tmp_path):
  src, flax_dir, dst = tmp_path / 'src', tmp_path / 'flax', tmp_path / 'dst'
  model = make_gemma(src, 4, 2, 32, 8, tie=True)
  assert cli.main(['hf-to-flax', str(src), str(flax_dir)]) == 0
  assert (flax_dir / hf.HF_CONFIG_FILE).exists()
  assert cli.main(['flax-to-hf', str(flax_dir), str(dst), '--dtype', 'float32']) == 0
  tensors = load_file(str(dst / 'model.safetensors'))
  assert 'lm_head.weight' not in tensors  # tied
  reloaded = transformers.GemmaForCausalLM.from_pretrained(str(dst)).eval()
  ids = random_ids(96, seed=3)
  np.testing.assert_allclose(torch_logits(reloaded, ids), torch_logits(model, ids), atol=1e-6,
                             rtol=0)


def test_errors_name_the_problem(tmp_path, capsys):
  with pytest.raises(UserError, match='is not a directory'):
    hf.from_pretrained(str(tmp_path / 'nowhere'))
  with pytest.raises(UserError, match='has no config.json'):
    hf.from_pretrained(str(tmp_path))
  ckpt = tmp_path / 'ckpt'
  make_gemma(ckpt, 4, 2, 32, 8, tie=False)
  config = json.loads((ckpt / 'config.json').read_text())

  (ckpt / 'config.json').write_text(json.dumps(dict(config, model_type='llama')))
  with pytest.raises(UserError, match=r"model_type 'llama' .* model types: chameleon, gemma"):
    hf.from_pretrained(str(ckpt))
  (ckpt / 'config.json').write_text(json.dumps(config))

  tensors = load_file(str(ckpt / 'model.safetensors'))
  name = 'model.layers.1.mlp.up_proj.weight'
  save_file({k: v for k, v in tensors.items() if k != name}, str(ckpt / 'model.safetensors'))
  with pytest.raises(UserError, match=f'tensor {name} is missing'):
    hf.from_pretrained(str(ckpt))
  save_file(dict(tensors, **{name: np.zeros((3, 32), np.float32)}), str(ckpt / 'model.safetensors'))
  with pytest.raises(UserError, match=rf'tensor {name} .* shape \(3, 32\) .* needs \(48, 32\)'):
    hf.from_pretrained(str(ckpt))

  os.remove(ckpt / 'model.safetensors')
  with pytest.raises(UserError, match='has no \\*.safetensors weights'):
    hf.from_pretrained(str(ckpt))
  # The CLI prints the sentence instead of a traceback.
  assert cli.main(['hf-to-flax', str(ckpt), str(tmp_path / 'out')]) == 1  # a bad input file
  assert 'has no *.safetensors weights' in capsys.readouterr().err
