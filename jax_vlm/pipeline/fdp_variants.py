"""The reproduction's FDP variants: `train_fdp` (the FDP objective only) with each variant's data
and loss. The stage's name picks the variant; settings in config.stage_overrides.<name> win over
these.

A new variant is one more entry in FDP_VARIANTS (and in reproduce.VARIANTS to appear in the table).

Also the IDP's second round (reproduce.idp_self_training, on by default since session 19; not the
paper's recipe):
  train_idp_round2   train_dynamics' training (same start, objectives and loss) on its data plus
                     the first bootstrap's selected pairs with their IDP labels
  bootstrap_round2   bootstrap with train_idp_round2 as the labeller; the FDP variants that read
                     synthetic data then read its pairs (SYNTHETIC_ROUND2)
"""

from __future__ import annotations

import os

import ml_collections

from jax_vlm.core import registry, settings
from jax_vlm.core.errors import require
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.method import bootstrap
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
# The IDP's second round: what each of its stages changes (config.stage_overrides.<name> wins).
SYNTHETIC_ROUND2 = '{workdir}/bootstrap_round2/synthetic'
SELF_TRAINING = {
    'train_idp_round2': {'data.extra_train': (SYNTHETIC,)},
    'bootstrap_round2': {'bootstrap.labeller_stage': 'train_idp_round2'},
}
# Every stage that trains a model (train.py validates the trainer config before them; export
# looks for their params).
TRAINING_STAGES = ('train_dynamics', 'train_fdp', *FDP_VARIANTS, 'train_idp_round2')


def _named_config(config: ml_collections.ConfigDict, stage_dir: str, table: dict,
                  table_name: str) -> ml_collections.ConfigDict:
  """The config of the stage named by its folder: `table[name]`'s settings under the stage's own
  overrides, with '{workdir}' paths resolved."""
  name = os.path.basename(os.path.abspath(stage_dir))
  require(name in table, f'{stage_dir} is not the folder of a {table_name} stage; use one of '
          f'{", ".join(table)}.')
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  given = config.get('stage_overrides', {}).get(name, {}) or {}
  config = settings.with_overrides(config, table[name], f'{table_name}[{name!r}]', keep=given)
  return resolve_paths(config, workdir)


def fdp_variant_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Trains the FDP variant named by the stage folder (see FDP_VARIANTS)."""
  trainer.train_fdp_stage(_named_config(config, stage_dir, FDP_VARIANTS, 'FDP_VARIANTS'),
                          stage_dir)


def idp_round2_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """train_idp_round2: train_dynamics on the labelled data plus the first bootstrap's pairs."""
  trainer.train_dynamics_stage(_named_config(config, stage_dir, SELF_TRAINING, 'SELF_TRAINING'),
                               stage_dir)


def bootstrap_round2_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """bootstrap_round2: the unlabelled pairs labelled again, by train_idp_round2."""
  bootstrap.bootstrap_stage(_named_config(config, stage_dir, SELF_TRAINING, 'SELF_TRAINING'),
                            stage_dir)


for _name in FDP_VARIANTS:
  registry.register('stage', _name)(fdp_variant_stage)
registry.register('stage', 'train_idp_round2')(idp_round2_stage)
registry.register('stage', 'bootstrap_round2')(bootstrap_round2_stage)
