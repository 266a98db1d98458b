"""VQGAN parity with PyTorch references and checkpoint conversion.

Encoder + quantizer against transformers' ChameleonVQVAE (the encoder half Chameleon ships in
transformers); decoder against diffusers' VQModel, an independent implementation of the same
taming architecture under other names, which we map to taming key names here (test-only code)
and save as a Meta-style `vqgan.ckpt` + `vqgan.yaml`.
"""

import dataclasses
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import yaml

from configs.base import vqgan_config
from jax_vlm.core.errors import UserError
from jax_vlm.models.vqgan import VQGAN, VQGANConfig, vq_losses
from jax_vlm.weights import vqgan as convert

RES = 16
BATCH = 2


def _randomize(model: torch.nn.Module, features: torch.Tensor | None = None) -> None:
  """Moves GroupNorm affine params and biases away from their 1/0 init so the maps are tested;
  with `features [b, c, h, w]`, sets the codebook to perturbed feature vectors so that images use
  many different codes (a random codebook far from the features picks one or two)."""
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'embedding' in name:
        if features is not None:
          flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
          # Its own generator: the other params must come out as in the call without features.
          gen_codes = torch.Generator().manual_seed(2)
          rows = torch.randint(0, flat.shape[0], (p.shape[0],), generator=gen_codes)
          noise = torch.randn(p.shape, generator=gen_codes) * float(flat.std()) * 0.05
          p.copy_(flat[rows] + noise)
      elif p.ndim == 1:
        base = 1.0 if name.endswith('weight') else 0.0
        p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


def _random_params(config: VQGANConfig, seed: int = 0) -> dict:
  """Random params of the right shapes without running `init` (op-by-op XLA compiles are slow
  on CPU): fan-in scaled convolutions, norm scales near 1, small biases and codebook."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in convert.expected_param_shapes(config).items():
    fan_in = int(np.prod(shape[:-1])) if len(shape) == 4 else 1
    std = 1 / np.sqrt(fan_in) if len(shape) == 4 else 0.1
    value = rng.normal(0, std, shape)
    if path[-1] == 'scale':
      value = value + 1
    flat[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat)


def _jitted(model: VQGAN, method):
  return jax.jit(lambda params, x: model.apply({'params': params}, x, method=method))


def _images(seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------
# Encoder: transformers' ChameleonVQVAE.


@pytest.fixture(scope='module')
def hf_vqvae():
  from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
  from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

  torch.manual_seed(0)
  cfg = ChameleonVQVAEConfig(
      embed_dim=8, num_embeddings=64, latent_channels=32, resolution=RES, in_channels=3,
      base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[RES])
  model = ChameleonVQVAE(cfg).eval()
  _randomize(model)
  with torch.no_grad():
    features = model.quant_conv(model.encoder(_nchw(_images())))
  # A codebook on the scale of the features, so the images use many different codes.
  _randomize(model, features)
  return model


def test_encoder_matches_transformers_chameleon_vqvae(hf_vqvae):
  images = _images()
  with torch.no_grad():
    ref_features = _nhwc(hf_vqvae.quant_conv(hf_vqvae.encoder(_nchw(images))))
    ref_codes = hf_vqvae.encode(_nchw(images)).image_tokens.numpy().reshape(BATCH, RES // 2,
                                                                          RES // 2)
  state_dict = {'model.vqmodel.' + k: v for k, v in hf_vqvae.state_dict().items()}
  state_dict['model.layers.0.mlp.weight'] = torch.zeros(3)  # the LM's keys are skipped
  config = convert.vqgan_config_from_hf(hf_vqvae.config)
  params = convert.vqgan_params_from_hf(state_dict, config=config)
  assert set(params) == {'encoder', 'quant_conv', 'quantizer', 'post_quant_conv'}

  codes, features = _jitted(VQGAN(config), VQGAN.encode)(params, jnp.asarray(images))
  assert codes.shape == (BATCH, RES // 2, RES // 2) and codes.dtype == jnp.int32
  assert features.shape == (BATCH, RES // 2, RES // 2, 8)
  np.testing.assert_allclose(np.asarray(features), ref_features, atol=1e-4, rtol=1e-4)
  assert len(np.unique(ref_codes)) > 10  # the comparison below means something
  np.testing.assert_array_equal(np.asarray(codes), ref_codes)


def test_convert_hf_directory(hf_vqvae, tmp_path):
  from safetensors.torch import save_file

  state_dict = {'model.vqmodel.' + k: v.contiguous() for k, v in hf_vqvae.state_dict().items()}
  save_file(state_dict, str(tmp_path / 'model.safetensors'))
  with open(tmp_path / 'config.json', 'w') as f:
    f.write('{"model_type": "chameleon", "vq_config": %s}' % hf_vqvae.config.to_json_string())
  config, params = convert.convert_hf_vqgan(str(tmp_path))
  assert config.base_channels == 32 and config.attn_resolutions == (RES,)
  np.testing.assert_array_equal(params['quantizer']['embedding'],
                                hf_vqvae.quantize.embedding.weight.detach().numpy())


def test_hf_shape_mismatch_names_tensor_and_shapes(hf_vqvae):
  state_dict = {'model.vqmodel.' + k: v for k, v in hf_vqvae.state_dict().items()}
  config = convert.vqgan_config_from_hf(hf_vqvae.config, num_embeddings=128)
  with pytest.raises(UserError, match=r'quantize\.embedding\.weight.*\(64, 8\).*\(128, 8\)'):
    convert.vqgan_params_from_hf(state_dict, config=config)


# ------------------------------------------------------------------------------------------
# Decoder and the Meta checkpoint path: diffusers' VQModel as the independent reference.


def _diffusers_to_taming(state_dict: dict, num_levels: int) -> dict:
  """diffusers VQModel names -> taming names (what Meta's vqgan.ckpt uses)."""
  out = {}
  for key, value in state_dict.items():
    k = key
    k = re.sub(r'^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.', r'encoder.down.\1.block.\2.', k)
    k = re.sub(r'^encoder\.down_blocks\.(\d+)\.attentions\.(\d+)\.', r'encoder.down.\1.attn.\2.', k)
    k = re.sub(r'^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.', r'encoder.down.\1.downsample.',
               k)
    # diffusers lists decoder levels from the lowest resolution up; taming indexes them top-down.
    k = re.sub(r'^decoder\.up_blocks\.(\d+)\.',
               lambda m: f'decoder.up.{num_levels - 1 - int(m.group(1))}.', k)
    k = re.sub(r'^(decoder\.up\.\d+)\.resnets\.(\d+)\.', r'\1.block.\2.', k)
    k = re.sub(r'^(decoder\.up\.\d+)\.attentions\.(\d+)\.', r'\1.attn.\2.', k)
    k = re.sub(r'^(decoder\.up\.\d+)\.upsamplers\.0\.', r'\1.upsample.', k)
    k = k.replace('mid_block.resnets.0.', 'mid.block_1.').replace('mid_block.resnets.1.',
                                                                  'mid.block_2.')
    k = k.replace('mid_block.attentions.0.', 'mid.attn_1.')
    k = k.replace('conv_norm_out', 'norm_out').replace('conv_shortcut', 'nin_shortcut')
    k = k.replace('group_norm', 'norm').replace('to_out.0', 'proj_out')
    k = re.sub(r'\.to_([qkv])\.', r'.\1.', k)
    if re.search(r'\.attn(_1|\.\d+)\.', k) and value.ndim == 2:
      value = value[:, :, None, None]  # Linear -> 1x1 conv
    out[k] = value.clone()
  return out


@pytest.fixture(scope='module')
def meta_release(tmp_path_factory):
  """A random diffusers VQModel, and the same weights written as Meta's vqgan.ckpt + yaml."""
  from diffusers import VQModel

  torch.manual_seed(0)
  ref = VQModel(
      in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=('AttnDownEncoderBlock2D', 'DownEncoderBlock2D'),
      up_block_types=('UpDecoderBlock2D', 'AttnUpDecoderBlock2D'),
      latent_channels=32, num_vq_embeddings=64, vq_embed_dim=8, norm_num_groups=32).eval()
  _randomize(ref)
  with torch.no_grad():
    features = ref.encode(_nchw(_images())).latents
  _randomize(ref, features)

  state_dict = _diffusers_to_taming(ref.state_dict(), num_levels=2)
  state_dict['loss.discriminator.main.0.weight'] = torch.zeros(4, 3, 4, 4)  # dropped on load
  state_dict['loss.logvar'] = torch.zeros(())
  directory = tmp_path_factory.mktemp('vqgan_release')
  ckpt = str(directory / 'vqgan.ckpt')
  torch.save({'state_dict': state_dict, 'global_step': 7}, ckpt)
  ddconfig = dict(double_z=False, z_channels=32, resolution=RES, in_channels=3, out_ch=3, ch=32,
                  ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[RES], dropout=0.0)
  doc = {'model': {'target': 'taming.models.vqgan.VQModel',
                   'params': {'embed_dim': 8, 'n_embed': 64, 'ddconfig': ddconfig,
                              'lossconfig': {'target': 'taming.modules.losses.DummyLoss'}}}}
  yaml_path = str(directory / 'vqgan.yaml')
  with open(yaml_path, 'w') as f:
    yaml.safe_dump(doc, f)
  return ref, ckpt, yaml_path, state_dict


def test_meta_checkpoint_decoder_matches_diffusers(meta_release):
  ref, ckpt, yaml_path, _ = meta_release
  config, params = convert.convert_vqgan_checkpoint(ckpt, yaml_path)
  assert config == VQGANConfig(resolution=RES, base_channels=32, channel_multiplier=(1, 2),
                               num_res_blocks=1, attn_resolutions=(RES,), z_channels=32,
                               embed_dim=8, num_embeddings=64)
  assert 'loss' not in params
  model = VQGAN(config)
  images = _images(seed=3)

  # decode(codes): codebook lookup, post_quant_conv, decoder.
  codes = np.random.default_rng(0).integers(0, 64, (BATCH, RES // 2, RES // 2))
  with torch.no_grad():
    quant = ref.quantize.embedding(torch.from_numpy(codes)).permute(0, 3, 1, 2)
    ref_decoded = _nhwc(ref.decoder(ref.post_quant_conv(quant)))
  decoded = _jitted(model, VQGAN.decode)(params, jnp.asarray(codes, jnp.int32))
  assert decoded.shape == (BATCH, RES, RES, 3)
  np.testing.assert_allclose(np.asarray(decoded), ref_decoded, atol=1e-4, rtol=1e-4)

  # The full pass (encode, quantize, decode) agrees too.
  with torch.no_grad():
    ref_features = ref.encode(_nchw(images)).latents
    _, _, (_, _, ref_codes) = ref.quantize(ref_features)
    ref_reconstruction = _nhwc(ref(_nchw(images)).sample)
  reconstruction, features, _, codes = _jitted(model, VQGAN.__call__)(params, jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(features), _nhwc(ref_features), atol=1e-4, rtol=1e-4)
  assert len(np.unique(ref_codes.numpy())) > 10
  np.testing.assert_array_equal(np.asarray(codes).reshape(-1), ref_codes.numpy())
  np.testing.assert_allclose(np.asarray(reconstruction), ref_reconstruction, atol=1e-4, rtol=1e-4)


def test_torch_state_dict_round_trip(meta_release):
  _, ckpt, yaml_path, state_dict = meta_release
  config, params = convert.convert_vqgan_checkpoint(ckpt, yaml_path)
  back = convert.vqgan_params_to_torch_state_dict(params)
  expected = {k: v for k, v in state_dict.items() if not k.startswith('loss.')}
  assert set(back) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
  again = convert.vqgan_params_from_torch(back, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_checkpoint_errors(meta_release, tmp_path):
  _, ckpt, yaml_path, state_dict = meta_release
  with pytest.raises(UserError, match='does not exist'):
    convert.convert_vqgan_checkpoint(str(tmp_path / 'nope.ckpt'), yaml_path)
  with pytest.raises(UserError, match='does not exist'):
    convert.convert_vqgan_checkpoint(ckpt, str(tmp_path / 'nope.yaml'))

  bad_yaml = tmp_path / 'bad.yaml'
  bad_yaml.write_text('model: {params: {embed_dim: 8}}\n')
  with pytest.raises(UserError, match='not a taming vqgan.yaml'):
    convert.convert_vqgan_checkpoint(ckpt, str(bad_yaml))

  corrupt = tmp_path / 'corrupt.ckpt'
  corrupt.write_bytes(b'not a checkpoint at all')
  with pytest.raises(UserError, match='could not be read'):
    convert.convert_vqgan_checkpoint(str(corrupt), yaml_path)

  missing = dict(state_dict)
  del missing['decoder.up.0.attn.1.proj_out.weight']
  path = str(tmp_path / 'missing.ckpt')
  torch.save({'state_dict': missing}, path)
  with pytest.raises(UserError, match=r'no tensor decoder\.up\.0\.attn\.1\.proj_out\.weight'):
    convert.convert_vqgan_checkpoint(path, yaml_path)

  wrong = dict(state_dict)
  wrong['encoder.conv_in.weight'] = torch.zeros(32, 3, 5, 5)
  path = str(tmp_path / 'wrong.ckpt')
  torch.save({'state_dict': wrong}, path)
  shapes = r'encoder\.conv_in\.weight.*\(32, 3, 5, 5\).*\(32, 3, 3, 3\)'
  with pytest.raises(UserError, match=shapes):
    convert.convert_vqgan_checkpoint(path, yaml_path)

  # A config without the attention blocks the checkpoint has is caught, not silently dropped.
  no_attn = convert.vqgan_config_from_yaml(yaml_path, attn_resolutions=())
  with pytest.raises(UserError, match='does not describe'):
    convert.vqgan_params_from_torch(state_dict, no_attn)


# ------------------------------------------------------------------------------------------
# The module on its own: config, shapes, straight-through training signal.


def test_config_from_base_config():
  config = VQGANConfig.from_config(vqgan_config())
  assert config.code_grid() == (32, 32)  # Chameleon: 512x512 -> 1024 codes
  assert config.channel_multiplier == (1, 1, 2, 2, 4) and config.dtype == jnp.float32
  assert VQGANConfig.from_config(vqgan_config(dtype='bfloat16')).dtype == jnp.bfloat16
  with pytest.raises(UserError, match='base_channels=48'):
    VQGANConfig(base_channels=48)
  with pytest.raises(UserError, match='double_z'):
    VQGANConfig.from_config(vqgan_config(double_z=True))
  with pytest.raises(UserError, match='unknown keys'):
    VQGANConfig.from_config({'resolution': 16, 'channels': 3})


def test_vq_losses_values_and_gradients():
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  quantized = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  codebook_loss, commitment_loss = vq_losses(features, quantized, beta=0.25)
  mse = np.mean((np.asarray(features) - np.asarray(quantized)) ** 2)
  np.testing.assert_allclose(codebook_loss, mse, rtol=1e-6)
  np.testing.assert_allclose(commitment_loss, 0.25 * mse, rtol=1e-6)
  # The codebook loss moves only the codebook vectors, the commitment loss only the features.
  g_f, g_q = jax.grad(lambda f, q: vq_losses(f, q)[0], argnums=(0, 1))(features, quantized)
  assert not np.any(g_f) and np.any(g_q)
  g_f, g_q = jax.grad(lambda f, q: vq_losses(f, q)[1], argnums=(0, 1))(features, quantized)
  assert np.any(g_f) and not np.any(g_q)


def test_straight_through_estimator():
  config = VQGANConfig(resolution=8, base_channels=32, channel_multiplier=(1,),
                       num_res_blocks=1, z_channels=32, embed_dim=4, num_embeddings=16)
  model = VQGAN(config)
  images = jnp.asarray(_images()[:, :8, :8])
  params = _random_params(config)

  def reconstruction_loss(p):
    reconstruction, _, quantized, codes = model.apply({'params': p}, images)
    return jnp.mean((reconstruction - images) ** 2), (quantized, codes)

  grads, (quantized, codes) = jax.jit(jax.grad(reconstruction_loss, has_aux=True))(params)
  # Forward: the decoder saw the codebook vectors; backward: the encoder gets the gradient
  # through the straight-through estimator and the codebook gets none from reconstruction.
  np.testing.assert_array_equal(quantized, params['quantizer']['embedding'][np.asarray(codes)])
  leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
  assert all(np.any(g) for g in leaves(grads['encoder']['conv_in']))
  assert any(np.any(g) for g in leaves(grads['decoder']))
  assert not any(np.any(g) for g in leaves(grads['quantizer']))


def test_encode_decode_shapes():
  config = VQGANConfig(resolution=16, base_channels=32, channel_multiplier=(1, 2, 2),
                       num_res_blocks=1, z_channels=32, embed_dim=4, num_embeddings=16)
  model = VQGAN(config)
  images = jnp.asarray(_images())
  params = _random_params(config)
  # The encoder-only tree (what transformers ships) is enough to encode.
  encoder_only = {k: params[k] for k in convert.ENCODER_SUBTREES}
  codes, features = _jitted(model, VQGAN.encode)(encoder_only, images)
  assert codes.shape == (BATCH, 4, 4) and codes.dtype == jnp.int32
  assert features.shape == (BATCH, 4, 4, 4) and features.dtype == jnp.float32
  assert int(codes.min()) >= 0 and int(codes.max()) < 16
  decoded = _jitted(model, VQGAN.decode)(params, codes)
  assert decoded.shape == images.shape and decoded.dtype == jnp.float32
  assert np.all(np.isfinite(decoded))


def test_patch_encoder_codes_see_only_their_patch():
  config = VQGANConfig(resolution=16, base_channels=8, channel_multiplier=(1, 1, 1),
                       num_res_blocks=1, z_channels=8, embed_dim=4, num_embeddings=16,
                       norm_groups=2, patch_encoder=True)
  model = VQGAN(config)
  images = np.asarray(_images())
  params = _random_params(config)
  encode = _jitted(model, VQGAN.encode)
  codes, features = encode(params, jnp.asarray(images))
  assert codes.shape == (BATCH, 4, 4) and features.shape == (BATCH, 4, 4, 4)
  # Changing one 4x4 patch changes that position's features and no other.
  changed = images.copy()
  changed[:, 4:8, 8:12] = -changed[:, 4:8, 8:12]
  _, features2 = encode(params, jnp.asarray(changed))
  diff = np.abs(np.asarray(features2) - np.asarray(features)).max(axis=(0, 3))
  assert diff[1, 2] > 1e-3
  diff[1, 2] = 0
  np.testing.assert_array_equal(diff, 0)
  # A patch's feature is the encoder applied to that patch alone, as a 4x4 image.
  alone = VQGANConfig(**{**dataclasses.asdict(config), 'resolution': 4, 'patch_encoder': False})
  _, patch_features = _jitted(VQGAN(alone), VQGAN.encode)(params, jnp.asarray(images[:, 4:8, 8:12]))
  np.testing.assert_allclose(np.asarray(patch_features)[:, 0, 0], np.asarray(features)[:, 1, 2],
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match='norm_groups=4'):
    VQGANConfig(base_channels=6, channel_multiplier=(1,), norm_groups=4)
