"""One command for the embedded world's whole pipeline and the table of the paper's claims on it.

  python -m jax_vlm.reproduce --config configs/action_world.py[:smoke] --workdir DIR [--seeds 0,1,2]

Per seed (config.seed; the world, its tokenizer and the tokenized data are built once, by the first
seed, and shared) the stages run under DIR/seed_<s>/:
  build_data, train_tokenizer, tokenize, pretrain   the world, its VQGAN, the token ids, the
                    pretrained base (shared)
  augment           augmented copies of the labelled triplets (data.augment_copies)
  train_dynamics    IDP + FDP jointly on the labelled data; checkpoints for the learning curves;
                    the first round's IDP (bootstrap's labeller)
  bootstrap         IDP labels the unlabelled pairs; stratified top-K -> synthetic triplets
  train_idp_round2, bootstrap_round2   the IDP's second round (below; default on): the IDP the
                    FDP variants' labels and the verifier come from
  train_ft          FT: FDP on labelled only, standard loss
  train_fdm         FDM: labelled + synthetic, recognition-weighted loss
  train_fdm_no_synth, train_fdm_no_weight   the two ablations of FDM
  evaluate          best-of-K (K = 1, 2, 4, 8) of every variant with the IDP verifier on test and
                    test_compositional, IDP, learning curves (train_dynamics' checkpoints, then the
                    continued second round's), the preference probe
With several runs (seeds, labelled-set sizes) and several CPU cores, the shared stages run first
in this process and then each run in its own worker process pinned to its share of the cores
(config.reproduce.jobs: 0 = one per core, 1 = one after another in this process), with its log in
DIR/seed_<s>/reproduce.log; a run that fails is reported in one sentence after the others finish.
Stages with a DONE marker are skipped, so a killed run continues where it stopped. The table
(markdown) is printed and saved as DIR/reproduction.md and DIR/reproduction.json (with wall and CPU
time per seed and per stage).

Where bootstrapping pays (not in the default budget): `--config.reproduce.labelled_sizes=250,500`
reruns every seed's own stages under DIR/labelled_<N>/seed_<s>/ with only the first N labelled
examples (data.train_examples; the unlabelled pairs and the shared stages stay the same), and the
table gets FT vs FDM per labelled-set size, the full set included, with the curve drawn in
DIR/reproduction.html.

A control (not in the default budget): `--config.reproduce.true_label_control=true` adds the stages
bootstrap_true_labels (the pairs bootstrap selected, each with its withheld true action instead of
the IDP's label) and train_fdm_true_labels (FDM on them), and the table two claims: what the IDP's
label errors cost FDM, and whether FDM with true labels beats FT. On a finished workdir, add
`--rerun_stages=evaluate` (its variant list changed): it scores the new variant and reads back
the others' scores, which were computed from the same params and settings (the evaluate stage
computes a part again only when its stage's params or the settings changed).

The IDP's second round (default on since session 19; not the paper's recipe, which trains FDP, not
IDP, on the IDP's labels; `--config.reproduce.idp_self_training=false` runs the paper's one round):
after bootstrap, train_idp_round2 (train_dynamics' training continued from its params, fine-tuned
as the FDP variants are, on the labelled data, its augmented copies and bootstrap's selected pairs
with their IDP labels, for reproduce.idp_self_training_steps; reproduce.idp_self_training_from=
'base' trains it from the base instead) and bootstrap_round2 (the unlabelled pairs labelled again by
it). FDM and FDM w/o weighting then train on the second round's labels, evaluate uses
train_idp_round2 as the IDP and the verifier, and the table gives both rounds' label accuracy. It
stands in for what the paper's IDP starts with and this world's lacks: a model that already reads
the change well enough to label most pairs right (docs/reproduction.md, session 19). A workdir
finished with the other setting: start a new one, or rerun the variants that read synthetic data
and evaluate (`--rerun_stages=train_fdm,train_fdm_no_weight,evaluate`).

Augmenting the labelled data: `--config.data.augment_copies=N` (N > 0) adds the augment stage
before train_dynamics (N mirrored / shifted / recoloured copies of each labelled triplet,
data/action_world/augment.py) and its records to train_dynamics' (and train_idp_round2's)
data.extra_train; the FDP variants still fine-tune on the labelled split (and FDM on the synthetic
triplets) alone, from train_dynamics.

Settings: `config.reproduce` (REPRODUCE_DEFAULTS; a config may leave it out) sets the training steps
of the dynamics and FDP stages and how FDP variants start; they become stage_overrides, and a
config's own stage_overrides win over them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from jax_vlm.core import cli
from jax_vlm.core.errors import UserError, require
from jax_vlm.core.settings import section_with_defaults
from jax_vlm.evaluation import plots
from jax_vlm.evaluation.report import write_html_report
from jax_vlm.input import datasets
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.pipeline import stages, tables
from jax_vlm.pipeline.fdp_variants import FDP_VARIANTS, SELF_TRAINING, SYNTHETIC, SYNTHETIC_ROUND2
from jax_vlm.pipeline.tables import (
  CONTROL_STAGES,
  SELF_TRAINING_STAGES,
  STAGES,
  build_table,
  pipeline_stages,
  pipeline_variants,
)
from jax_vlm.pipeline.world_stages import with_augmentation
from jax_vlm.training.trainer import validate_config

SHARED_STAGES = ('build_data', 'train_tokenizer', 'tokenize', 'pretrain')

REPRODUCE_DEFAULTS = dict(
    seeds=(0, 1, 2, 3, 4),  # when --seeds is not given
    dynamics_steps=0,  # train_dynamics steps (0 = train.num_steps)
    fdp_steps=0,  # steps of each FDP variant (0 = train.num_steps)
    fdp_init='train_dynamics',  # FDP variants start from this stage's params ('' = random init)
    fdp_learning_rate=0.0,  # 0 = train.learning_rate
    fdp_warmup_steps=-1,  # -1 = train.warmup_steps
    curve_points=5,  # checkpoints of train_dynamics evaluated for the learning curves
    eval_items=0,  # test items per subset (0 = all)
    labelled_sizes=(),  # labelled-set sizes of the FT-vs-FDM curve (each reruns the seeds' stages)
    true_label_control=False,  # also FDM on the selected pairs with their true actions (a control)
    idp_self_training=True,  # the IDP's second round (train_idp_round2, bootstrap_round2)
    # train_idp_round2 steps (0 = half the train_dynamics steps from train_dynamics, twice from
    # the base)
    idp_self_training_steps=0,
    # Where train_idp_round2 starts: 'train_dynamics' (its params, with the FDP variants'
    # fine-tuning learning rate and warm-up) or 'base' (train_dynamics' own start and schedule)
    idp_self_training_from='train_dynamics',
    jobs=0,  # seed runs at once, each in its own process on its own cores (0 = one per CPU core
    # when there are several runs; 1 = one after another in this process): see _run_in_workers
    # XLA programs kept on disk in WORKDIR/compile_cache (jax's persistent compilation cache), so
    # that a later stage, seed worker or rerun that compiles a program compiled before reads it
    # instead (compile_cache); False = off. A cache set with JAX_COMPILATION_CACHE_DIR stands.
    compile_cache=True,
)


# Size-dependent settings: configs/reproduce.py uses them, and a world config without the sections
# gets them for its world size.


def reproduce_section(size: str) -> ml_collections.ConfigDict:
  smoke = size == 'smoke'
  r = ml_collections.ConfigDict()
  r.seeds = (0,) if smoke else (0, 1, 2, 3, 4)  # --seeds overrides; verdicts need 2 or more
  r.dynamics_steps = 20 if smoke else 2000
  r.fdp_steps = 8 if smoke else 150
  r.fdp_init = 'train_dynamics'  # '' = FDP variants start from random init
  r.fdp_learning_rate = 1e-3
  r.fdp_warmup_steps = 10 if smoke else 20
  r.curve_points = 2 if smoke else 4
  r.eval_items = 8 if smoke else 200  # per test subset; 0 = all
  r.labelled_sizes = ()  # e.g. (250, 500, 1000): the labelled-size curve, one pipeline per size
  # A control, not in the default budget (~80 CPU s of training and ~30 of evaluation a seed): FDM
  # trained on the pairs bootstrap selected with their withheld true actions instead of the IDP's
  # labels, which tells what the labels' errors cost FDM and whether the pairs help when right.
  r.true_label_control = False
  # The IDP's second round, on by default since session 19 (not the paper's recipe; about 430 CPU s
  # more a seed on one core). train_idp_round2 continues from train_dynamics' params on its data
  # (the labelled triplets and their augmented copies) plus the first bootstrap's selected pairs
  # with their IDP labels, for idp_self_training_steps, fine-tuned as the FDP variants are;
  # bootstrap_round2 labels the unlabelled pairs with it, FDM and FDM w/o weighting train on those
  # labels, and evaluate uses it as the IDP and the verifier. False: the paper's single round.
  # idp_self_training_from='base' trains it from the base as train_dynamics (session 17's round;
  # 4,000 steps there: as good on five seeds, about 1,500 CPU s more a seed).
  r.idp_self_training = True
  r.idp_self_training_steps = 10 if smoke else 1000
  r.idp_self_training_from = 'train_dynamics'
  # Seed runs at once, each in its own process pinned to its share of the CPU cores; 0 = one per
  # core when there are several runs, 1 = one after another in this process. On 2 cores two
  # one-core runs get through 1.35x the training steps of one two-thread run (docs/benchmarks.md).
  r.jobs = 0
  return r


def world_eval_section(size: str) -> ml_collections.ConfigDict:
  smoke = size == 'smoke'
  w = ml_collections.ConfigDict()
  w.k_list = (1, 2, 4, 8)
  w.splits = ('test', 'test_compositional')
  w.max_items = 0  # items per subset for eval.py (0 = all); reproduce uses reproduce.eval_items
  w.batch_size = 8 if smoke else 64
  w.score_batch_size = 128
  w.report_items = 2 if smoke else 12
  w.curve_items = 8 if smoke else 100
  w.probe_items = 8 if smoke else 100
  return w



def reproduce_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.reproduce on top of REPRODUCE_DEFAULTS; a config without the section (e.g.
  configs/action_world.py) gets reproduce_section's settings for its world size."""
  given = config.get('reproduce', None)
  if given is None and 'world' in config:
    given = reproduce_section(str(config.world.size))
  return section_with_defaults(REPRODUCE_DEFAULTS, given, 'reproduce')


def labelled_sizes(config: ml_collections.ConfigDict) -> list[int]:
  """config.reproduce.labelled_sizes, sorted, each a positive number of labelled examples."""
  given = tuple(reproduce_settings(config).labelled_sizes)
  try:
    sizes = sorted({int(n) for n in given})
  except (TypeError, ValueError):
    sizes = [0]
  require(all(n > 0 for n in sizes), f'reproduce.labelled_sizes={given} must be positive numbers '
          "of labelled examples; pass e.g. --config.reproduce.labelled_sizes='(250,500,1000)'.")
  return sizes


def reproduction_config(config: ml_collections.ConfigDict, seed: int | None = None,
                        train_examples: int = 0) -> ml_collections.ConfigDict:
  """The config with the reproduction's stages, stage_overrides and world_eval settings;
  `train_examples` N > 0: the seed's own stages read only the first N labelled examples."""
  r = reproduce_settings(config)
  out = ml_collections.ConfigDict(config.to_dict())
  if seed is not None:
    out.seed = int(seed)
  control, self_training = bool(r.true_label_control), bool(r.idp_self_training)
  require(not (control and self_training), 'reproduce.true_label_control and '
          'reproduce.idp_self_training cannot run together (the control replaces the first '
          "round's labels); add --config.reproduce.idp_self_training=false to run the control.")
  variants = pipeline_variants(control)
  out = with_augmentation(out)  # train_dynamics' overrides read the augmented triplets
  out.stages = pipeline_stages(control, self_training, int(out.data.get('augment_copies', 0)) > 0)
  # Labels longer than the data's actions cannot be right, and would not fit a cache sized for
  # the data (sampler.cache_len 0 = data.max_seq_len).
  if int(out.sampler.max_action_tokens) > int(out.data.action_max_tokens):
    out.sampler.max_action_tokens = int(out.data.action_max_tokens)
  t = out.train
  dyn_steps = int(r.dynamics_steps) or int(t.num_steps)
  fdp_steps = int(r.fdp_steps) or int(t.num_steps)
  points = max(int(r.curve_points), 1)
  overrides: dict[str, dict[str, Any]] = {
      'train_dynamics': {'train.num_steps': dyn_steps,
                         'train.checkpoint_every': max(dyn_steps // points, 1),
                         'train.keep_checkpoints': 0},  # 0 keeps them all (the curves read them)
  }
  fine_tune_lr = float(r.fdp_learning_rate) or float(t.learning_rate)
  fine_tune_warmup = (int(r.fdp_warmup_steps) if int(r.fdp_warmup_steps) >= 0
                      else int(t.warmup_steps))
  for name in variants:
    overrides[name] = {
        'train.num_steps': fdp_steps, 'train.checkpoint_every': fdp_steps,
        'train.init_from': str(r.fdp_init),
        'train.learning_rate': fine_tune_lr, 'train.warmup_steps': fine_tune_warmup}
  given = out.get('stage_overrides', None)
  given = given.to_dict() if given else {}
  for name, values in given.items():
    overrides.setdefault(name, {}).update(dict(values))
  curve_next = ''  # a stage whose checkpoints continue train_dynamics' learning curves
  if self_training:  # the second round trains as train_dynamics does; the config's own win
    start = str(r.idp_self_training_from)
    require(start in ('base', 'train_dynamics'), f'reproduce.idp_self_training_from={start!r} '
            "must be 'base' or 'train_dynamics'.")
    steps = int(r.idp_self_training_steps) or (
        max(dyn_steps // 2, 1) if start == 'train_dynamics' else 2 * dyn_steps)
    extra = (*overrides['train_dynamics'].get('data.extra_train', ()),  # e.g. the augmented
             *SELF_TRAINING['train_idp_round2']['data.extra_train'])
    # From train_dynamics' params: fine-tuned as the FDP variants are (learning rate, warm-up).
    warm = ({'train.init_from': 'train_dynamics', 'train.learning_rate': fine_tune_lr,
             'train.warmup_steps': fine_tune_warmup} if start == 'train_dynamics' else {})
    # Continued, the round is the IDP's training carried on, so its checkpoints extend the curves
    # (a round from the base starts over and is left off them).
    curve_next = 'train_idp_round2' if start == 'train_dynamics' else ''
    overrides['train_idp_round2'] = {
        **overrides['train_dynamics'], **SELF_TRAINING['train_idp_round2'],
        'data.extra_train': extra,
        'train.num_steps': steps, 'train.checkpoint_every': max(steps // points, 1),
        **warm, **overrides.get('train_idp_round2', {})}
    overrides['bootstrap_round2'] = {**SELF_TRAINING['bootstrap_round2'],
                                     **overrides.get('bootstrap_round2', {})}
    for name in variants:  # the variants that read the first round's pairs read the second's
      if SYNTHETIC in FDP_VARIANTS[name].get('data.extra_train', ()):
        overrides[name].setdefault('data.extra_train', (SYNTHETIC_ROUND2,))
  if train_examples:  # the shared stages keep the full data (and their fingerprints)
    for name in out.stages:
      if name not in SHARED_STAGES:
        overrides.setdefault(name, {})['data.train_examples'] = int(train_examples)
  # (key, value) pairs, not dicts: a ConfigDict refuses dotted keys when it is copied
  # (to_dict -> ConfigDict), and stages.stage_config reads either through dict(...).
  out.stage_overrides = ml_collections.ConfigDict(
      {name: tuple(sorted(values.items())) for name, values in overrides.items()})
  if 'world_eval' not in out:
    out.world_eval = world_eval_section(str(out.world.size))
  out.world_eval.fdp_stages = tuple(variants)
  out.world_eval.idp_stage = 'train_idp_round2' if self_training else 'train_dynamics'
  out.world_eval.curve_stage = 'train_dynamics'
  out.world_eval.curve_next_stage = curve_next
  if int(r.eval_items):
    out.world_eval.max_items = int(r.eval_items)
  return out


# ------------------------------------------------------------------------------------------------
# Running.


def _stage_times(workdir: str) -> dict[str, dict[str, float]]:
  """{'stage_seconds' (wall) | 'stage_cpu_seconds' | 'stage_compiles' | 'stage_compile_seconds':
  {stage: value}}, from the DONE marker of each stage that finished (0.0 where a marker lacks the
  value: markers before compile seconds were recorded)."""
  keys = {'stage_seconds': 'seconds', 'stage_cpu_seconds': 'cpu_seconds',
          'stage_compiles': 'compiles', 'stage_compile_seconds': 'compile_seconds'}
  out = {name: {} for name in keys}
  for stage in STAGES + CONTROL_STAGES + SELF_TRAINING_STAGES:
    path = os.path.join(workdir, stage, 'DONE')
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      try:
        marker = json.load(f)
      except ValueError:
        marker = {}
    for name, key in keys.items():
      try:
        out[name][stage] = float(marker.get(key, 0.0))
      except (ValueError, TypeError, AttributeError):
        out[name][stage] = 0.0
  return out


def _share_stages(seed_dir: str, first_dir: str) -> None:
  """Links the first seed's data stages into another seed's workdir (built once, shared)."""
  os.makedirs(seed_dir, exist_ok=True)
  for name in SHARED_STAGES:
    link = os.path.join(seed_dir, name)
    if not os.path.lexists(link):
      os.symlink(os.path.relpath(os.path.join(first_dir, name), seed_dir), link)


def _seed_config(config: ml_collections.ConfigDict, workdir: str, seed: int,
                 train_examples: int = 0) -> ml_collections.ConfigDict:
  cfg = resolve_paths(reproduction_config(config, seed, train_examples), workdir)
  validate_config(cfg)
  return cfg


def base_summary(workdir: str) -> dict:
  """What the report says about the pretrained base in `workdir` (its pretrain stage's metrics:
  phases, steps, held-out reading; {} when there is none). A base whose metrics predate
  `region_changed_cells` gets it from the config the stage ran with."""
  path = os.path.join(workdir, 'pretrain', 'metrics.json')
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    base = {k: v for k, v in json.load(f).items()
            if k in ('documents', 'steps', 'continue_documents', 'continue_steps',
                     'continue_cycles', 'region_changed_cells', 'held_out_reading',
                     'first_phase_restarts', 'first_phase_readings',
                     'first_phase_checked_at')}
  ran_with = os.path.join(workdir, 'pretrain', stages.CONFIG_FILE)
  if 'region_changed_cells' not in base and os.path.isfile(ran_with):
    with open(ran_with) as f:
      cells = (json.load(f).get('pretrain') or {}).get('region_changed_cells')
    if cells is not None:
      base['region_changed_cells'] = int(cells)
  return base


def bootstrap_stats(workdir: str, self_training: bool) -> dict:
  """{'bootstrap': the stats of the labels the FDP variants trained on}: the second round's with
  `self_training` (reproduce.idp_self_training), the first round's then under 'bootstrap_round1';
  {} for a stage that has not written its stats."""
  keys = ('bootstrap_round1', 'bootstrap') if self_training else ('bootstrap',)
  out = {}
  for key, stage in zip(keys, ('bootstrap', 'bootstrap_round2')):
    path = os.path.join(workdir, stage, 'stats.json')
    if os.path.isfile(path):
      with open(path) as f:
        out[key] = json.load(f)
  return out


def run_seed(config: ml_collections.ConfigDict, workdir: str, seed: int,
             rerun: Sequence[str] = (), train_examples: int = 0) -> dict:
  """Runs (or continues) one seed's pipeline in `workdir`; returns its evaluation summary.

  The shared stages' fingerprints leave `seed` out (stages.run_stages), so the other seeds accept
  the first seed's data; `rerun`: stages to run again (--rerun_stages); `train_examples`: see
  reproduction_config."""
  cfg = _seed_config(config, workdir, seed, train_examples)
  wall, cpu = time.perf_counter(), stages.cpu_seconds()
  done = stages.run_stages(cfg, workdir, rerun=rerun, shared=SHARED_STAGES)
  if not done:  # preempted (SIGTERM): the trainer saved; the command exits 0 (core/cli.py)
    print(f'reproduce: the pipeline in {workdir} stopped early (preempted); rerun the same '
          'command to continue it.', file=sys.stderr, flush=True)
    raise cli.Terminated()
  with open(os.path.join(workdir, 'evaluate', 'metrics.json')) as f:
    summary = json.load(f)
  summary.update(bootstrap_stats(workdir, 'bootstrap_round2' in cfg.stages))
  base = base_summary(workdir)
  if base:  # the shared base this seed started from (tables._base_section)
    summary['base'] = base
  summary['seed'] = int(seed)
  summary['num_labelled'] = len(datasets.open_split(stages.stage_config(cfg, 'train_ft').data,
                                                    'train'))
  summary['this_run'] = dict(wall_seconds=round(time.perf_counter() - wall, 1),
                             cpu_seconds=round(stages.cpu_seconds() - cpu, 1))
  summary.update(_stage_times(workdir))
  return summary


# A seed run in a worker process: its job (pickled arguments of run_seed), its log and its result.
JOB_FILE, LOG_FILE, RESULT_FILE = 'reproduce_job.pkl', 'reproduce.log', 'reproduce_result.json'


def worker_main(job_path: str) -> int:
  """A worker process's body (see _run_in_workers): run_seed on the pickled job, its summary
  written next to the job file; the exit code and error sentence as on every entry point."""
  stages.project_logging()
  cli.install_sigterm()
  with open(job_path, 'rb') as f:
    job = pickle.load(f)

  def body() -> None:
    summary = run_seed(job['config'], job['workdir'], job['seed'], job['rerun'],
                       job['train_examples'])
    path = os.path.join(job['workdir'], RESULT_FILE)
    with open(path + '.tmp', 'w') as f:
      json.dump(summary, f, default=float)
    os.replace(path + '.tmp', path)
  return cli.exit_code(body)


def num_workers(config: ml_collections.ConfigDict, runs: int) -> int:
  """How many seed runs go at once: config.reproduce.jobs, or with 0 one per CPU core this
  process may use when it computes on the CPU (on a GPU or TPU host: 1, the workers would share
  the accelerator), at most one per run; 1 = in this process."""
  jobs = int(reproduce_settings(config).jobs)
  require(jobs >= 0, f'reproduce.jobs={jobs} must be 0 (one per CPU core) or a number of runs '
          'at once; pass --config.reproduce.jobs=1 to run the seeds one after another.')
  if not jobs:  # (where a process cannot be pinned, e.g. macOS, one process uses every core)
    pinnable = hasattr(os, 'sched_getaffinity') and jax.default_backend() == 'cpu'
    jobs = len(os.sched_getaffinity(0)) if pinnable else 1
  return max(1, min(jobs, runs))


def _core_sets(workers: int) -> list[set[int] | None]:
  """This process's CPU cores dealt round-robin into `workers` sets (a worker per core on 2
  cores; with more cores than workers each worker gets several and XLA threads over them); None
  (not pinned) where the platform cannot pin a process."""
  if not hasattr(os, 'sched_getaffinity'):
    return [None] * workers
  cores = sorted(os.sched_getaffinity(0))
  return [set(cores[i::workers]) or set(cores) for i in range(workers)]


def _last_error(log_path: str, offset: int) -> str:
  """The worker's one-sentence error (the last 'error:' line it wrote to its log after `offset`,
  where this run's part of the log starts), or where to look."""
  try:
    with open(log_path) as f:
      f.seek(offset)
      lines = [line.strip() for line in f if line.startswith('error: ')]
  except OSError:
    lines = []
  return lines[-1][len('error: '):] if lines else f'it stopped without a result; see {log_path}'


def _run_in_workers(jobs: list[dict], workers: int) -> list[dict | None]:
  """Runs each job (run_seed's arguments) in its own process, `workers` at a time, each pinned
  to its share of this process's cores; returns the summaries in job order. A job that fails does
  not stop the others: after they finish, one UserError names each failed job and its error.

  Why processes: XLA:CPU spreads a small model's step over 2 threads at 1.31x the CPU time for
  1.43x the speed, so on 2 cores two one-core runs get through 1.35x the training steps of one
  two-thread run (docs/benchmarks.md). A SIGTERM to this process is passed on to the workers,
  which save as a lone run does; rerunning the command continues them."""
  free = _core_sets(workers)
  pending = list(enumerate(jobs))
  running: dict[int, tuple[subprocess.Popen, set[int] | None, Any, int]] = {}
  results: list[dict | None] = [None] * len(jobs)
  errors = []
  try:
    while pending or running:
      while pending and free:
        i, job = pending.pop(0)
        cores = free.pop(0)
        os.makedirs(job['workdir'], exist_ok=True)
        if os.path.exists(os.path.join(job['workdir'], RESULT_FILE)):  # an earlier run's
          os.remove(os.path.join(job['workdir'], RESULT_FILE))
        job_path = os.path.join(job['workdir'], JOB_FILE)
        with open(job_path, 'wb') as f:
          pickle.dump(job, f)
        log = open(os.path.join(job['workdir'], LOG_FILE), 'a')
        offset = log.tell()
        # The worker pins itself before it imports anything, so XLA sizes its threads to it.
        pin = f'os.sched_setaffinity(0, {sorted(cores)}); ' if cores else ''
        proc = subprocess.Popen(
            [sys.executable, '-c', f'import os, sys; {pin}from jax_vlm.pipeline import '
             'reproduce as r; sys.exit(r.worker_main(sys.argv[1]))', job_path],
            cwd=cli.ROOT, stdout=log, stderr=subprocess.STDOUT)
        running[i] = (proc, cores, log, offset)
        where = f'CPU core(s) {",".join(map(str, sorted(cores)))}' if cores else 'all CPU cores'
        print(f'reproduce: {job["label"]} started on {where} (log: {log.name})', flush=True)
      time.sleep(1.0)
      for i in [i for i, (p, *_) in running.items() if p.poll() is not None]:
        proc, cores, log, offset = running.pop(i)
        log.close()
        free.append(cores)
        job = jobs[i]
        path = os.path.join(job['workdir'], RESULT_FILE)
        if proc.returncode == 0 and os.path.isfile(path):
          with open(path) as f:
            results[i] = json.load(f)
          done = sum(r is not None for r in results)
          print(f'reproduce: {job["label"]} done in '
                f'{results[i]["this_run"]["wall_seconds"]:.0f} s ({done} of {len(jobs)})',
                flush=True)
        else:
          errors.append(f'{job["label"]}: {_last_error(log.name, offset)}')
          print(f'reproduce: {job["label"]} failed ({errors[-1]}); the other runs go on.',
                file=sys.stderr, flush=True)
  except cli.Terminated:
    for proc, *_ in running.values():
      proc.send_signal(signal.SIGTERM)
    for proc, _, log, _ in running.values():
      proc.wait()
      log.close()
    raise
  if errors:
    raise UserError(f'{len(errors)} of {len(jobs)} seed runs failed ({"; ".join(errors)}); '
                    'fix that and rerun the same command: finished stages are kept.')
  return results


def _run_all(config: ml_collections.ConfigDict, jobs: list[dict], workers: int) -> list[dict]:
  """run_seed for every job, in this process one after another, or in `workers` processes."""
  if workers <= 1:
    out = []
    for job in jobs:
      print(f'reproduce: {job["label"]} in {job["workdir"]}', flush=True)
      out.append(run_seed(job['config'], job['workdir'], job['seed'], job['rerun'],
                          job['train_examples']))
    return out
  # The shared stages first, here, with every core; the workers then find them done.
  first = jobs[0]
  stages.run_stages(_seed_config(config, first['workdir'], first['seed']), first['workdir'],
                    names=SHARED_STAGES, rerun=[n for n in first['rerun'] if n in SHARED_STAGES],
                    shared=SHARED_STAGES)
  # Rerun once, here: the workers take them as they are.
  return _run_in_workers([dict(job, rerun=[n for n in job['rerun'] if n not in SHARED_STAGES])
                          for job in jobs], workers)


COMPILE_CACHE = 'compile_cache'


@contextlib.contextmanager
def compile_cache(config: ml_collections.ConfigDict, workdir: str):
  """With reproduce.compile_cache, jax's persistent compilation cache in WORKDIR/compile_cache
  while the runs go: this process's (when it has compiled nothing yet: jax decides at its first
  compile) and, through JAX_COMPILATION_CACHE_DIR, the worker processes'. A cached program is the
  one XLA would compile again, so results are unchanged; programs that compile in under a second
  are not kept (jax's default). A directory the user set stands; both settings are restored."""
  user = jax.config.jax_compilation_cache_dir
  if not reproduce_settings(config).compile_cache or user:
    yield user or ''
    return
  path = os.path.join(workdir, COMPILE_CACHE)
  before = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  jax.config.update('jax_compilation_cache_dir', path)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  try:
    yield path
  finally:
    jax.config.update('jax_compilation_cache_dir', user)
    if before is None:
      os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)
    else:
      os.environ['JAX_COMPILATION_CACHE_DIR'] = before


def reproduce(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
              command: str = '', rerun: Sequence[str] = ()) -> tuple[str, dict]:
  """Runs every seed and writes DIR/reproduction.md + .json; returns (markdown, JSON)."""
  require(len(seeds) > 0, 'No seeds given; pass --seeds 0 (or 0,1,2).')
  sizes = labelled_sizes(config)  # checked before any stage runs
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  start, cpu = time.perf_counter(), stages.cpu_seconds(children=True)
  first = os.path.join(workdir, f'seed_{seeds[0]}')
  jobs = []
  for n in [0] + sizes:  # 0: the full labelled set
    for seed in seeds:
      seed_dir = os.path.join(workdir, *([f'labelled_{n}'] if n else []), f'seed_{seed}')
      if seed_dir != first:
        _share_stages(seed_dir, first)
      # A shared stage is rerun once, by the first seed's run; the others then accept it.
      again = [s for s in rerun if seed_dir == first or s not in SHARED_STAGES]
      label = f'seed {seed}' + (f' with {n} labelled examples' if n else '')
      jobs.append(dict(config=config, workdir=seed_dir, seed=int(seed), rerun=again,
                       train_examples=n, label=label))
  with compile_cache(config, workdir):
    summaries = _run_all(config, jobs, num_workers(config, len(jobs)))
  runs = summaries[:len(seeds)]
  md, js = build_table(runs, command)
  if sizes:
    points = [(n, summaries[(k + 1) * len(seeds):(k + 2) * len(seeds)])
              for k, n in enumerate(sizes)]
    full = runs[0]['num_labelled']
    points += [(full, runs)] if full not in sizes else []
    curve_md, curve = tables.labelled_curve(points)
    md += curve_md
    js['labelled_curve'] = curve
  wall = time.perf_counter() - start
  used = stages.cpu_seconds(children=True) - cpu
  md += (f'\nTotal wall time of this command: {wall:.0f} s ({wall / 60:.1f} min), CPU time '
         f'{used:.0f} s (its worker processes included), {os.cpu_count()} CPUs visible.\n')
  js.update(wall_seconds=round(wall, 1), cpu_seconds=round(used, 1),
            cpus=os.cpu_count(), seeds=list(seeds))
  with open(os.path.join(workdir, 'reproduction.md'), 'w') as f:
    f.write(md)
  with open(os.path.join(workdir, 'reproduction.json'), 'w') as f:
    json.dump(js, f, indent=1, default=float)
  write_reproduction_report(os.path.join(workdir, 'reproduction.html'), runs, js)
  return md, js


def write_reproduction_report(path: str, runs: Sequence[dict], js: dict) -> str:
  """reproduction.html: the learning curves drawn beside the claims and time tables."""
  steps, idp, fdp = tables.curve_rows(runs)
  later = tables.continued_steps(runs)
  figures = {}
  if steps:
    axis = 'train_dynamics step' if not later else (
        f'train_dynamics step, then {", ".join(sorted(set(later.values())))} after step '
        f'{max(s for s in steps if s not in later)}')
    figures['IDP vs FDP on held-out test while the model trains (mean, range over seeds)'] = (
        plots.line_plot({'IDP effect match (greedy)': (steps, idp['idp_effect_match']),
                         'IDP canonical match': (steps, idp['idp_canonical_match']),
                         'FDP exact match (1 sample)': (steps, fdp['fdp_exact_match']),
                         'FDP item score (1 sample)': (steps, fdp['fdp_item_score'])},
                        'Learning curves', axis, 'score on test'))
  claims = [{'claim': c['claim'], 'subset': c['subset'], 'this': c['mean_a'], 'vs': c['mean_b'],
             'difference': c['diff'], 'CI low': c['ci_low'], 'CI high': c['ci_high'],
             'seeds': c['n'], 'verdict': c['verdict']} for c in js['claims']]
  time_rows = [dict(seed=r['seed'], **r.get('this_run', {}), **r.get('stage_seconds', {}))
               for r in runs]
  curve = js.get('labelled_curve') or []
  if curve:
    sizes = [p['num_labelled'] for p in curve]
    figures['FT vs FDM as the labelled set shrinks (item score, best-of-1, test)'] = (
        plots.line_plot({label: (sizes, [list(row) for row in zip(*[p[key] for p in curve])])
                         for label, key in (('FT', 'per_seed_ft'), ('FDM', 'per_seed_fdm'))},
                        'Where bootstrapping pays', 'labelled examples', 'item score on test'))
  html_tables = {'Claims (paired over seeds, 95% t interval)': claims}
  if curve:
    html_tables['Where bootstrapping pays: FDM - FT per labelled-set size (test, best-of-1)'] = [
        {'labelled': p['num_labelled'], 'FT': p['mean_b'], 'FDM': p['mean_a'],
         'difference': p['diff'], 'CI low': p['ci_low'], 'CI high': p['ci_high'],
         'seeds': p['n'], 'verdict': p['verdict']} for p in curve]
  html_tables['Seconds per seed and stage'] = time_rows
  return write_html_report(path, 'Reproduction on the embedded action world', html_tables, [],
                           notes=[f'Seeds: {", ".join(str(r["seed"]) for r in runs)}; command: '
                                  f'{js.get("command", "")}'], figures=figures)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (jax_vlm/core/cli.py: --help, one-sentence errors, exit codes 0/1/2)."""
  fl = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file('config', None, 'configs/action_world.py[:smoke]',
                                                flag_values=fl)
  flags.DEFINE_string('workdir', None, 'Output folder (one sub-folder per seed).', flag_values=fl)
  flags.DEFINE_list('seeds', None, 'Seeds to run, e.g. 0,1,2 (default: config.reproduce.seeds; '
                    'the verdicts need 2 or more).', flag_values=fl)
  flags.DEFINE_list('rerun_stages', [], 'Rerun these stages even if done (needed when their '
                    'config changed; their files are kept).', flag_values=fl)
  argv = list(sys.argv if argv is None else argv)

  def body(_) -> int:
    config = config_flag.value
    if config is None:
      raise cli.ConfigError('No config given; pass --config configs/action_world.py.')
    if not fl.workdir:
      raise cli.ConfigError('No workdir given; pass --workdir DIR for the outputs.')
    given = fl.seeds if fl.seeds is not None else reproduce_settings(config).seeds
    try:
      seeds = [int(s) for s in given]
    except (TypeError, ValueError):
      raise cli.ConfigError(f'--seeds={",".join(map(str, given))} must be integers like 0,1,2.'
                            ) from None
    if not seeds:
      raise cli.ConfigError('No seeds given; pass --seeds 0 (or 0,1,2).')
    try:
      validate_config(reproduction_config(config, seeds[0]))
      labelled_sizes(config)
      num_workers(config, 1)
    except UserError as e:
      raise cli.ConfigError(str(e)) from None
    command = 'python -m jax_vlm.reproduce ' + ' '.join(argv[1:])
    md, _ = reproduce(config, fl.workdir, seeds, command, rerun=fl.rerun_stages)
    print(md)
    return 0

  return cli.run(body, fl, __doc__, argv, config_flag=config_flag,
                 default_config=os.path.join(cli.ROOT, 'configs', 'action_world.py'))


if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  stages.project_logging()
  sys.exit(main())
