"""core.compile_options: the train step and the sampler's decode loop compile for CPU without
YNNPACK fusions (which the same programs get by default), and nothing is set for TPU or GPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import train_smoke
from jax_vlm.core.compile_options import compiler_options
from jax_vlm.inference import sampler as S
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tools import aot

YNN = '__ynn_fusion'


def test_options_by_platform():
  assert compiler_options('cpu') == {'xla_cpu_experimental_ynn_fusion_type': ''}
  for platform in ('tpu', 'gpu', 'cuda', 'rocm'):
    assert compiler_options(platform) == {}
  compiler_options('cpu').clear()  # a fresh dict each call: the table is not changed
  assert compiler_options('cpu')


def test_train_step_compiles_without_ynn_fusions_on_cpu():
  parts = aot.abstract_train_step(train_smoke.get_config('fsdp'), jax.devices()[:1])
  lowered = aot.lower_train_step(parts)
  assert YNN not in lowered.compile().as_text()
  # The control: the same program with YNNPACK's dot fusions asked for does use them.
  ynn_dots = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
  assert YNN in lowered.compile(compiler_options=ynn_dots).as_text()


def test_sampler_loop_compiles_without_ynn_fusions_on_cpu():
  config = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=8, mlp_dim=64, dtype='float32', remat_policy='none')
  module = DecoderLM(config)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  ids, seg = S.left_pad([np.arange(1, 7)], 8, 0)
  args = (params, ids, seg, S.candidate_keys(jax.random.PRNGKey(0), 1, 2), None,
          jnp.int32(2), jnp.int32(0))
  statics = dict(module=module, cache_len=16, num_candidates=2, num_conditions=1,
                 max_new_tokens=4, sampling=S.SamplingParams(), guidance=None, stop_at_eos=True)
  ours = S.compiled_loop('cpu').lower(*args, **statics).compile().as_text()
  plain = jax.jit(S.sample_loop, static_argnames=tuple(statics)).lower(*args, **statics)
  assert YNN not in ours
  assert YNN in plain.compile().as_text()
  assert S.compiled_loop('cpu') is S.compiled_loop('cpu')  # one jitted function per platform
