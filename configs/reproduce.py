"""The embedded world's reproduction (jax_vlm/pipeline/reproduce.py): configs/action_world.py
plus the experiment's settings, so every knob can be overridden from the command line.

  python -m jax_vlm.reproduce --config configs/reproduce.py[:default|smoke] --workdir DIR \
      [--seeds 0,1,2] [--config.reproduce.fdp_steps=400 ...]

config.reproduce: training steps of train_dynamics (IDP + FDP on the labelled data and its
augmented copies, data.augment_copies; the first round's bootstrap labeller), of the IDP's second
round (idp_self_training*: its IDP relabels the pairs and verifies) and of each FDP variant (FT,
FDM and its two ablations), which start from `fdp_init`'s params;
config.world_eval: what the evaluate stage measures (jax_vlm/evaluation/world.py). 'default': a
seed's own stages take about 2,090 CPU seconds threaded over 2 CPU cores (20 minutes alone) and
about 1,700 on one core, as the worker processes of a several-seed run use them (session 19,
README "Time"); the shared stages about 5,000-7,000 once
(pretraining's two phases); 'smoke' is the same pipeline in a few minutes.
"""

import ml_collections

from configs import action_world
from jax_vlm.pipeline.reproduce import reproduce_section, world_eval_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or 'default'
  config = action_world.get_config(size)
  config.reproduce = reproduce_section(size)
  config.world_eval = world_eval_section(size)
  config.train.progress_bar = False
  config.vq_train.progress_bar = False
  return config
