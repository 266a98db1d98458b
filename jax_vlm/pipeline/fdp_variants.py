"""The reproduction's FDP variants: `train_fdp` (the FDP objective only) with each variant's data
and loss. The stage's name picks the variant; settings in config.stage_overrides.<name> win over
these.

A new variant is one more entry in FDP_VARIANTS (and in reproduce.VARIANTS to appear in the table).
"""

from __future__ import annotations

import os

import ml_collections

from jax_vlm.core import registry, settings
from jax_vlm.core.errors import require
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.training import trainer

SYNTHETIC = '{workdir}/bootstrap/synthetic'
TRUE_LABELLED = '{workdir}/bootstrap_true_labels/synthetic'  # the same pairs, their true actions
FDP_VARIANTS = {
    # FT: labelled data only, the standard (unweighted) loss.
    'train_ft': {'data.extra_train': (), 'data.recognition_weights': False},
    # FDM: labelled + IDP-labelled synthetic data, recognition-weighted loss.
    'train_fdm': {'data.extra_train': (SYNTHETIC,), 'data.recognition_weights': True},
    'train_fdm_no_synth': {'data.extra_train': (), 'data.recognition_weights': True},
    'train_fdm_no_weight': {'data.extra_train': (SYNTHETIC,), 'data.recognition_weights': False},
    # A control (reproduce.true_label_control), not the method: FDM on the same selected pairs
    # with their withheld true actions (bootstrap.true_labels_stage).
    'train_fdm_true_labels': {'data.extra_train': (TRUE_LABELLED,),
                              'data.recognition_weights': True},
}
# Every stage that trains a model (train.py validates the trainer config before them; export
# looks for their params).
TRAINING_STAGES = ('train_dynamics', 'train_fdp', *FDP_VARIANTS)


def fdp_variant_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Trains the FDP variant named by the stage folder (see FDP_VARIANTS)."""
  name = os.path.basename(os.path.abspath(stage_dir))
  require(name in FDP_VARIANTS, f'{stage_dir} is not the folder of an FDP variant stage; use one '
          f'of {", ".join(FDP_VARIANTS)}.')
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  given = config.get('stage_overrides', {}).get(name, {}) or {}
  config = settings.with_overrides(config, FDP_VARIANTS[name], f'FDP_VARIANTS[{name!r}]',
                                   keep=given)
  trainer.train_fdp_stage(resolve_paths(config, workdir), stage_dir)


for _name in FDP_VARIANTS:
  registry.register('stage', _name)(fdp_variant_stage)
