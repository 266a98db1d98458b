"""LoRA fine-tuning: only adapters train, frozen weights have no optimizer state, export merges."""

import jax
import numpy as np

from configs import train_smoke
from jax_vlm.input import sources
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tools import export
from jax_vlm.training import checkpointing, optim, trainer
from jax_vlm.training import train_step as ts
from tests.test_train import run_python


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_lora_run(tmp_path):
  """The whole check; run in a child process (fast compiles, see tests/test_train.py)."""
  config = train_smoke.get_config('fsdp_tp,lora')
  config.train.update(num_steps=3, checkpoint_every=3, tensorboard=False)
  workdir = tmp_path / 'train_dynamics'
  t = trainer.Trainer(config, str(workdir))
  initial = _flat(t.init_state().params)
  assert t.run()['status'] == 'done'
  state = t.final_state
  trained = _flat(state.params)

  changed = {k for k in initial if not np.array_equal(initial[k], trained[k])}
  adapters = {k for k in initial if 'lora_a' in k or 'lora_b' in k}
  assert changed and changed <= adapters, changed - adapters
  assert any('lora_b' in k for k in changed)  # lora_b starts at 0 and must move
  # The optimizer state has moments for the adapters only.
  opt_leaves = jax.tree.leaves(state.opt_state)
  moments = [x for x in opt_leaves if x.ndim > 0]
  assert len(moments) == 2 * len(adapters)
  mask = optim.trainable_mask(state.params, 'lora')
  assert sum(jax.tree.leaves(mask)) == len(adapters)

  # Merged weights give the adapted model's logits.
  batch = next(sources.SyntheticSource(config, 2))
  eval_logits = jax.jit(ts.eval_logits, static_argnames='model')
  logits = eval_logits(state.params, batch, model=t.model)
  merged = trainer.merge_lora_params(state.params, t.model_config)
  assert not any('lora' in k for k in _flat(merged))
  base = DecoderLM(t.model_config.replace(lora_rank=0))
  np.testing.assert_allclose(eval_logits(merged, batch, model=base), logits, atol=2e-5)

  # Export: Orbax params and a transformers directory, both giving the same logits.
  paths = export.export(config, str(workdir), str(tmp_path / 'out'), 'both')
  assert paths['step'] == 3
  exported = checkpointing.load_params(paths['orbax'])
  np.testing.assert_allclose(eval_logits(exported, batch, model=base), logits, atol=2e-5)
  import jax_vlm
  hf_module, hf_params = jax_vlm.from_pretrained(paths['hf'], dtype='float32')
  np.testing.assert_allclose(eval_logits(hf_params, batch, model=hf_module), logits, atol=2e-5)


def test_lora_trains_adapters_only_and_export_round_trips(tmp_path):
  r = run_python(f"""
import pathlib
from tests.test_lora_train import check_lora_run
check_lora_run(pathlib.Path({str(tmp_path)!r}))
print('LORA_OK')
""", tmp_path)
  assert r.returncode == 0 and 'LORA_OK' in r.stdout, r.stderr[-4000:]
