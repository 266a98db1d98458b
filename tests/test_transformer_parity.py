"""DecoderLM against transformers' ChameleonModel / GemmaForCausalLM on tiny random models built
here, plus the model-level switches: scan vs per-layer, remat, attention impls, packing, LoRA
merging."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jax_vlm.models import lora
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.training import optim
from jax_vlm.weights import hf

TOL = 1e-4
TINY_VQ = dict(embed_dim=4, num_embeddings=16, base_channels=32, channel_multiplier=[1],
               num_res_blocks=1, latent_channels=4, resolution=8, attn_resolutions=[])


def _randomize(model: torch.nn.Module, seed: int) -> None:
  """Every weight random, so norms' scales and biases and each transposition matter."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.2 if ('norm' in name or 'layernorm' in name) else 0.08
      plus_one_norm = 'gemma' in type(model).__name__.lower()
      base = 1.0 if (name.endswith('norm.weight') and not plus_one_norm) else 0.0
      p.copy_(base + scale * torch.randn(p.shape, generator=gen))


def make_chameleon(tmp_path, heads=4, kv_heads=4, hidden=32, swin_norm=False, layers=2, seed=0,
                   vocab=96):
  config = transformers.ChameleonConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=40, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
      rope_parameters={'rope_theta': 500.0, 'rope_type': 'default'}, swin_norm=swin_norm,
      vq_config=TINY_VQ, vocabulary_map={'<image>': 3, 'IMGIMGBA': 90, 'IMGIMGBB': 91})
  torch.manual_seed(seed)
  model = transformers.ChameleonForConditionalGeneration(config).eval()
  _randomize(model, seed)
  model.save_pretrained(tmp_path)
  return model


def make_gemma(tmp_path, heads=3, kv_heads=1, hidden=32, head_dim=16, tie=True, layers=2, seed=0,
               vocab=96):
  config = transformers.GemmaConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
      max_position_embeddings=64, tie_word_embeddings=tie, rms_norm_eps=1e-6,
      rope_parameters={'rope_theta': 1000.0, 'rope_type': 'default'})
  torch.manual_seed(seed)
  model = transformers.GemmaForCausalLM(config).eval()
  _randomize(model, seed)
  model.save_pretrained(tmp_path)
  return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
  """LM-head logits over the whole vocabulary (Chameleon: before its image-token masking)."""
  with torch.no_grad():
    hidden = model.model(input_ids=torch.as_tensor(ids)).last_hidden_state
    return model.lm_head(hidden).numpy()


def run(module, params, ids, **kwargs):
  """module.apply under jit (one compilation instead of hundreds of eager ops)."""
  if module.config not in _COMPILED:
    _COMPILED[module.config] = jax.jit(lambda p, i, kw: module.apply({'params': p}, i, **kw))
  return np.asarray(_COMPILED[module.config](params, ids, kwargs))


_COMPILED = {}  # TransformerConfig -> jitted apply, shared by the tests


def random_ids(vocab, batch=2, seq=11, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (batch, seq)).astype(np.int32)


@pytest.mark.parametrize('heads,kv_heads,hidden,swin_norm', [
    (4, 4, 32, False),   # multi-head
    (6, 2, 48, True),    # GQA, 3 query heads per kv head, swin_norm
    (3, 3, 48, False),   # odd head count
    (3, 1, 24, True),    # MQA with an odd head count, swin_norm
])
def test_chameleon_matches_transformers(tmp_path, heads, kv_heads, hidden, swin_norm):
  model = make_chameleon(tmp_path, heads, kv_heads, hidden, swin_norm)
  module, params = hf.from_pretrained(str(tmp_path), dtype='float32')
  assert module.config.swin_norm == swin_norm and module.config.qk_norm
  ids = random_ids(96)
  ours = run(module, params, ids)
  assert ours.shape == (2, 11, 96)
  np.testing.assert_allclose(ours, torch_logits(model, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize('heads,kv_heads,hidden,head_dim,tie', [
    (3, 1, 32, 16, True),    # head_dim != hidden / heads, MQA, tied head
    (4, 2, 32, 8, False),    # GQA, untied head
])
def test_gemma_matches_transformers(tmp_path, heads, kv_heads, hidden, head_dim, tie):
  model = make_gemma(tmp_path, heads, kv_heads, hidden, head_dim, tie)
  module, params = hf.from_pretrained(str(tmp_path), dtype='float32')
  c = module.config
  assert (c.family, c.tie_embeddings) == ('gemma', tie)
  assert c.norm_plus_one and c.scale_embeddings
  ids = random_ids(96, seed=1)
  ours = run(module, params, ids)
  np.testing.assert_allclose(ours, torch_logits(model, ids), atol=TOL, rtol=0)


def test_scan_remat_and_attention_impls_agree(tmp_path):
  """scan_layers on/off, causal query blocks and the jax.nn.dot_product_attention path give the
  same logits; remat policies and query blocks the same gradients."""
  make_chameleon(tmp_path, 6, 2, 48, False, layers=2)
  ids = random_ids(96, seq=9, seed=2)
  module, params = hf.from_pretrained(str(tmp_path), dtype='float32', scan_layers=True)
  reference = run(module, params, ids)
  _, unscanned = hf.from_pretrained(str(tmp_path), dtype='float32', scan_layers=False)
  assert 'layers_1' in unscanned and 'layers' not in unscanned
  assert params['layers']['self_attn']['q_proj']['kernel'].shape == (2, 48, 6, 8)

  def grad(p, cfg):
    return jax.grad(lambda p: DecoderLM(cfg).apply({'params': p}, ids).std())(p)

  grad = jax.jit(grad, static_argnums=1)
  ref_grad = grad(params, module.config.replace(remat_policy='none'))
  assert module.config.attention_chunk >= ids.shape[1]  # the reference is one block
  for change in [dict(scan_layers=False), dict(attention_impl='auto'), dict(attention_chunk=4)]:
    cfg = module.config.replace(**change)
    out = run(DecoderLM(cfg), unscanned if not cfg.scan_layers else params, ids)
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0, err_msg=str(change))
  # remat changes what is stored, and query blocks which keys are read, not the gradients
  changes = [dict(remat_policy='nothing_saveable'), dict(remat_policy='none', attention_chunk=4)]
  for change in changes:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 grad(params, module.config.replace(**change)), ref_grad)


def _tiny(family='chameleon', **kw):
  base = dict(family=family, vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8, mlp_dim=48, dtype='float32', qk_norm=family == 'chameleon',
              tie_embeddings=family == 'gemma', remat_policy='none')
  base.update(kw)
  return TransformerConfig(**base)


def _random_params(module, ids, seed=0):
  """Random params of init's shapes, built with numpy (compiling `init` is slow on a loaded CPU);
  every leaf is non-zero, LoRA B and Gemma's norms included."""
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), ids)['params'])
  rng = np.random.RandomState(seed)

  def make(path, x):
    noise = 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    name = jax.tree_util.keystr(path[-1:])
    if 'scale' in name and not module.config.norm_plus_one:
      return 1.0 + noise
    return noise

  return jax.tree_util.tree_map_with_path(make, abstract)


@pytest.mark.parametrize('family', ['chameleon', 'gemma'])
def test_packed_segments_match_separate_examples(family):
  config = _tiny(family)
  module = DecoderLM(config)
  rng = np.random.RandomState(3)
  a, b = rng.randint(0, 64, 5), rng.randint(0, 64, 4)
  params = _random_params(module, a[None])
  # One row: example a (segment 1), example b (segment 2), two padding tokens (segment 0).
  row = np.concatenate([a, b, [0, 0]])[None].astype(np.int32)
  segments = np.array([[1] * 5 + [2] * 4 + [0, 0]], np.int32)
  positions = np.array([list(range(5)) + list(range(4)) + [0, 0]], np.int32)
  packed = run(module, params, row, positions=positions, segment_ids=segments)
  alone_a = run(module, params, a[None].astype(np.int32))
  alone_b = run(module, params, b[None].astype(np.int32))
  assert np.isfinite(np.asarray(packed)).all()  # padding rows too
  np.testing.assert_allclose(packed[:, :5], alone_a, atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[:, 5:9], alone_b, atol=1e-5, rtol=0)
  # Causal query blocks of 4 (the examples straddle them) agree everywhere, padding included, also
  # with the padding first, where its block reads fewer keys than the whole row.
  rows = np.concatenate([row, np.roll(row, 2, axis=1)])
  segments, positions = (np.concatenate([x, np.roll(x, 2, axis=1)]) for x in (segments, positions))
  whole = run(module, params, rows, positions=positions, segment_ids=segments)
  blocks = run(DecoderLM(config.replace(attention_chunk=4)), params, rows, positions=positions,
               segment_ids=segments)
  np.testing.assert_allclose(blocks, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize('scan_layers', [True, False])
def test_lora_merge_matches_unmerged(scan_layers):
  config = _tiny('chameleon', lora_rank=3, lora_alpha=6.0, scan_layers=scan_layers,
                 lora_targets=('q_proj', 'v_proj', 'o_proj', 'down_proj', 'gate_proj'))
  module = DecoderLM(config)
  ids = random_ids(64, seed=4)
  params = _random_params(module, ids)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert sum(lora.is_lora_param(p) for p, _ in flat) == 10 * (1 if scan_layers else 2)
  mask = optim.trainable_mask(params, 'lora')  # the optimiser's mask: adapters only
  assert jax.tree.leaves(mask).count(True) == 10 * (1 if scan_layers else 2)
  unmerged = run(module, params, ids)
  merged = lora.merge_lora(params, config)
  assert not any(lora.is_lora_param(p) for p, _ in jax.tree_util.tree_flatten_with_path(merged)[0])
  plain = run(DecoderLM(config.replace(lora_rank=0)), merged, ids)
  np.testing.assert_allclose(plain, unmerged, atol=1e-5, rtol=0)
  # The adapters do change the weights (the test would pass trivially otherwise).
  q = merged['layers' if scan_layers else 'layers_0']['self_attn']['q_proj']['kernel']
  q0 = params['layers' if scan_layers else 'layers_0']['self_attn']['q_proj']['kernel']
  assert np.abs(np.asarray(q) - np.asarray(q0)).max() > 1e-3


def test_lora_dropout_and_init_lora_params():
  config = _tiny('gemma', lora_rank=2, lora_dropout=0.5)
  module = DecoderLM(config)
  ids = random_ids(64, seed=5)
  params = _random_params(module, ids)
  det = run(module, params, ids)
  key = jax.random.key(0, impl='unsafe_rbg')  # compiles much faster than threefry on CPU
  drop = jax.jit(lambda p: module.apply({'params': p}, ids, deterministic=False,
                                        rngs={'dropout': key}))(params)
  assert np.abs(np.asarray(det) - np.asarray(drop)).max() > 1e-4
  # Adding fresh adapters to adapter-free params: same tree and shapes as init, output unchanged.
  base = lora.merge_lora(params, config)
  added = lora.init_lora_params(base, config, jax.random.PRNGKey(1))
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)  # noqa: E731
  assert shapes(added) == shapes(params)
  np.testing.assert_allclose(run(module, added, ids),
                             run(DecoderLM(config.replace(lora_rank=0)), base, ids),
                             atol=1e-6, rtol=0)


def test_config_flops_and_validation():
  from jax_vlm.core.errors import UserError
  c = _tiny()
  assert c.flops_per_token(16) == 3 * c.flops_per_token(16, training=False)
  assert c.flops_per_token(32) > c.flops_per_token(16)
  assert dataclasses.replace(c) == c and hash(dataclasses.replace(c)) == hash(c)
  with pytest.raises(UserError, match='num_kv_heads'):
    _tiny(num_heads=4, num_kv_heads=3)
  with pytest.raises(UserError, match='remat_policy'):
    _tiny(remat_policy='sometimes')


def test_projections_are_2d_matmuls_on_cpu_only():
  """_contract lowers to one 2-D matmul for CPU (faster there) and keeps the N-D contraction for
  TPU and GPU, decided per lowering platform; both give the same numbers."""
  from jax_vlm.models import layers
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 5))
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(layers._contract(x, k, 2) ** 2), argnums=(0, 1)))
  for platform, flat in (('cpu', True), ('tpu', False), ('cuda', False)):
    text = grad.trace(x, k).lower(lowering_platforms=(platform,)).as_text()
    dots = [line for line in text.splitlines() if 'stablehlo.dot_general' in line]
    assert dots and any('tensor<6x32xf32>' in line for line in dots) == flat, platform
  expected = jnp.einsum('bsij,ijo->bso', x, k)
  np.testing.assert_allclose(layers._contract(x, k, 2), expected, rtol=1e-5, atol=1e-5)
