"""The embedded world's reproduction (jax_vlm/pipeline/reproduce.py): configs/action_world.py plus the
experiment's settings, so every knob can be overridden from the command line.

  python -m jax_vlm.reproduce --config configs/reproduce.py[:default|smoke] --workdir DIR \
      [--seeds 0,1,2] [--config.reproduce.fdp_steps=400 ...]

config.reproduce: training steps of train_dynamics (IDP + FDP on the labelled data, also the IDP
verifier and bootstrap labeller) and of each FDP variant (FT, FDM and its two ablations), which
start from `fdp_init`'s params; config.world_eval: what the evaluate stage measures
(jax_vlm/evaluation/world.py). 'default' is sized to run every stage for one seed in about 20
minutes on 2 CPU cores; 'smoke' is the same pipeline in a few minutes.
"""

import ml_collections

from configs import action_world


def reproduce_section(size: str) -> ml_collections.ConfigDict:
  smoke = size == 'smoke'
  r = ml_collections.ConfigDict()
  r.dynamics_steps = 100 if smoke else 1000
  r.fdp_steps = 40 if smoke else 150
  r.fdp_init = 'train_dynamics'  # '' = FDP variants start from random init
  r.fdp_learning_rate = 1e-3
  r.fdp_warmup_steps = 10 if smoke else 20
  r.curve_points = 2 if smoke else 4
  r.eval_items = 24 if smoke else 200  # per test subset; 0 = all
  return r


def world_eval_section(size: str) -> ml_collections.ConfigDict:
  smoke = size == 'smoke'
  w = ml_collections.ConfigDict()
  w.k_list = (1, 2, 4, 8)
  w.splits = ('test', 'test_compositional')
  w.max_items = 0  # items per subset for eval.py (0 = all); reproduce uses reproduce.eval_items
  w.batch_size = 64
  w.score_batch_size = 128
  w.report_items = 12
  w.curve_items = 24 if smoke else 100
  w.probe_items = 24 if smoke else 100
  return w


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or 'default'
  config = action_world.get_config(size)
  config.reproduce = reproduce_section(size)
  config.world_eval = world_eval_section(size)
  config.train.progress_bar = False
  config.vq_train.progress_bar = False
  return config
