"""IDP bootstrapping: label unlabelled frame pairs with the inverse model, keep a stratified top-K,
write them as a synthetic FDP data set.

  1. label    the IDP model decodes an action for each (src, tgt) pair (`<bos> [src] [tgt]` ->
              action <eos>), greedy or sampled; label_score = its log-likelihood, summed or
              length-normalised (`bootstrap.score`).
  2. classify the label's class: in the action world the canonical action type
              (`data.action_world.parse_action` + `action_type`; labels the world cannot parse
              are class 'unparsed', dropped unless `bootstrap.keep_unparsed`); for real data the
              first word (a verb) or one class for all (`bootstrap.class_key`).
  3. select   `jax_vlm.method.selection.stratified_top_k` by label_score within class, K =
              `bootstrap.num_selected` (a fraction <= 1.0 of the candidates, or a count).
  4. write    records in the labelled data's format (data/records.py): src_codes, tgt_codes,
              action, action_type, recognition_weights, example_id, split='synthetic',
              label_score; plus stats.json (label accuracy against the withheld true actions,
              per-class counts before and after selection).

The `bootstrap` stage reads the labeller's params from `WORKDIR/<bootstrap.labeller_stage>/params`
(what train_dynamics writes, LoRA merged) or, when `labeller_stage` is a path, from that checkpoint
(Orbax params or a transformers directory), and the pairs from `WORKDIR/tokenize/unlabelled` (the
world) or `bootstrap.unlabelled` (real video: `python -m jax_vlm.prepare videos ... --out OUT`
writes `OUT/unlabelled`, with recognition weights from the VQGAN features). It writes
`STAGE_DIR/synthetic` (a record prefix; the shard paths are in `synthetic.meta.json`) for FDP
training via `config.data.extra_train` (the `train_fdm` stage reads
`{workdir}/bootstrap/synthetic`).
The real-video chain, one workdir:

  python -m jax_vlm.prepare videos --videos VIDEOS --vqgan VQ --out DATA       -> DATA/unlabelled
  python train.py --config configs/NAME.py --workdir W --stages train_dynamics,bootstrap,train_fdm \
      --config.data.dir=DATA --config.bootstrap.unlabelled=DATA/unlabelled \
      --config.bootstrap.class_key=first_word
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from data.action_world import (
  DEFAULT_CONFIG,
  Scene,
  action_type,
  load_world_config,
  parse_action,
  score_action_text,
)
from data.records import RecordSource, write_records
from jax_vlm.core import registry
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import UserError, require
from jax_vlm.inference.sampler import Sampler, SamplingParams
from jax_vlm.method.selection import stratified_top_k
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.tokens import sequences
from jax_vlm.tokens.vocab import UnifiedVocab
from jax_vlm.training import checkpointing
from jax_vlm.training.loading import load_model

UNPARSED = 'unparsed'
CLASS_KEYS = ('world', 'first_word', 'none')
DECODINGS = ('greedy', 'sampled')
SCORES = ('mean', 'sum')
SYNTHETIC_SPLIT = 'synthetic'


@dataclasses.dataclass
class Label:
  """The IDP label of unlabelled pair `index`: text, its class, and its log-likelihood."""
  index: int
  text: str
  action_class: str
  logprob_sum: float
  logprob_mean: float
  score: float  # the one bootstrap.score picks; what selection ranks by
  finished: bool  # ended with <eos> inside the token budget


# ------------------------------------------------------------------------------------------------
# Classes.


def classify(text: str, class_key: str = 'world', world_config=None) -> str:
  """The label's action class (see the module docstring); 'unparsed' when there is none."""
  if class_key == 'world':
    canonical = parse_action(text, world_config or DEFAULT_CONFIG)
    return UNPARSED if canonical is None else action_type(canonical)
  if class_key == 'first_word':
    words = text.lower().split()
    return words[0] if words else UNPARSED
  if class_key == 'none':
    return 'all' if text.strip() else UNPARSED
  raise UserError(f'bootstrap.class_key={class_key!r} is unknown; use one of '
                  f'{", ".join(CLASS_KEYS)}.')


def same_action(label: str, truth: str, class_key: str = 'world', world_config=None) -> bool:
  """Label matches the true action: canonical match in the world, else normalised text."""
  if class_key == 'world':
    wc = world_config or DEFAULT_CONFIG
    canonical = parse_action(label, wc)
    return canonical is not None and canonical == parse_action(truth, wc)
  return ' '.join(label.lower().split()) == ' '.join(truth.lower().split())


# ------------------------------------------------------------------------------------------------
# Labelling.


def label_pairs(sampler: Sampler, params: Any, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                key, max_new_tokens: int, sampling: SamplingParams = SamplingParams(greedy=True),
                batch_size: int = 32, score: str = 'mean', class_key: str = 'world',
                world_config=None) -> list[Label]:
  """IDP labels for (src_codes, tgt_codes) pairs, one decode per pair (batch i uses fold_in(key,
  i)); the last batch is padded with copies so one program serves every batch."""
  require(score in SCORES, f'bootstrap.score={score!r} is unknown; use one of {", ".join(SCORES)}.')
  require(batch_size >= 1, f'bootstrap.batch_size must be >= 1, got {batch_size}.')
  labels: list[Label] = []
  for b, start in enumerate(range(0, len(pairs), batch_size)):
    chunk = list(pairs[start:start + batch_size])
    prompts = [sequences.idp_prompt(s, t, sampler.vocab) for s, t in chunk]
    prompts = pad_rows(prompts, batch_size)
    out = sampler.generate_text(params, prompts, jax.random.fold_in(key, b), 1, max_new_tokens,
                                sampling)
    for r in range(len(chunk)):
      total = float(out.logprob[r, 0])
      mean = total / max(int(out.lengths[r, 0]), 1)
      text = out.texts[r][0]
      labels.append(Label(index=start + r, text=text,
                          action_class=classify(text, class_key, world_config),
                          logprob_sum=total, logprob_mean=mean,
                          score=mean if score == 'mean' else total,
                          finished=bool(out.finished[r, 0])))
  return labels


def num_to_select(num_selected: float | int, available: int) -> int:
  """A float <= 1.0 is a fraction of `available` (rounded), anything else a count (capped)."""
  require(num_selected >= 0, f'bootstrap.num_selected must be >= 0, got {num_selected}.')
  if isinstance(num_selected, float) and num_selected <= 1.0:
    return int(round(num_selected * available))
  return min(int(num_selected), available)


def select_labels(labels: Sequence[Label], num_selected: float | int,
                  keep_unparsed: bool = False) -> list[Label]:
  """Stratified top-K of the labels by score within class; unparsed ones only if kept."""
  pool = [lab for lab in labels if keep_unparsed or lab.action_class != UNPARSED]
  pool = [lab for lab in pool if lab.text.strip()]  # an empty label cannot be an FDP action
  k = num_to_select(num_selected, len(pool))
  return stratified_top_k(pool, k, score=lambda lab: lab.score,
                          action_class=lambda lab: lab.action_class)


# ------------------------------------------------------------------------------------------------
# Records and statistics.


def _recognition_weights(example: Mapping[str, Any], n: int) -> tuple[np.ndarray, bool]:
  try:
    return sequences.example_recognition_weights(example), True
  except UserError:
    return np.ones((n,), np.float32), False


def synthetic_examples(unlabelled: Sequence[Mapping[str, Any]], selected: Sequence[Label]
                       ) -> tuple[list[dict[str, Any]], int]:
  """Records for the selected labels (in selection order) and how many lacked recognition weights
  (given weight 1 everywhere)."""
  out, missing = [], 0
  for lab in selected:
    ex = unlabelled[lab.index]
    src = np.asarray(ex['src_codes'], np.int32).reshape(-1)
    tgt = np.asarray(ex['tgt_codes'], np.int32).reshape(-1)
    rw, found = _recognition_weights(ex, tgt.size)
    missing += not found
    ident = ex.get('example_id', lab.index)
    out.append({
        'src_codes': src, 'tgt_codes': tgt, 'action': lab.text, 'action_type': lab.action_class,
        'recognition_weights': np.asarray(rw, np.float32), 'example_id': f'synthetic-{ident}',
        'split': SYNTHETIC_SPLIT, 'label_score': float(lab.score),
    })
  return out, missing


def _true_action(example: Mapping[str, Any], field: str) -> str | None:
  value = example.get(field) if field else None
  if isinstance(value, Mapping):  # the world's jsonl 'hidden' dict
    value = value.get('action')
  if isinstance(value, bytes):
    value = value.decode('utf-8')
  return value if isinstance(value, str) and value.strip() else None


def _effect_match(example: Mapping[str, Any], text: str, class_key: str,
                  world_config=None) -> bool | None:
  """Whether the label applied to the world pair's source scene gives its target scene; None
  without the scenes (real video) or outside the world's classes."""
  src, tgt = example.get('src_scene'), example.get('tgt_scene')
  if class_key != 'world' or src is None or tgt is None:
    return None
  scene = lambda v: Scene.from_json(json.loads(v.decode() if isinstance(v, bytes) else v))  # noqa: E731
  return bool(score_action_text(scene(src), text, scene(tgt),
                                world_config or DEFAULT_CONFIG)['effect_match'])


# Shares of the candidates whose stratified top-K label accuracy bootstrap_stats reports: how
# precision trades against the number of synthetic pairs.
SELECTION_CURVE = (0.1, 0.25, 0.5, 0.75, 1.0)


def bootstrap_stats(unlabelled: Sequence[Mapping[str, Any]], labels: Sequence[Label],
                    selected: Sequence[Label], true_action_field: str = 'hidden_action',
                    class_key: str = 'world', world_config=None,
                    keep_unparsed: bool = False) -> dict[str, Any]:
  """Label accuracy (all and selected) against the withheld true actions, when the records have
  them, per-class counts before/after selection, and the selected accuracy had K been each share
  of SELECTION_CURVE (`selection_curve`)."""
  hit_of: dict[int, bool] = {}
  effect_of: dict[int, bool] = {}
  for lab in labels:
    if (t := _true_action(unlabelled[lab.index], true_action_field)) is not None:
      hit_of[lab.index] = same_action(lab.text, t, class_key, world_config)
    if (effect := _effect_match(unlabelled[lab.index], lab.text, class_key, world_config)
        ) is not None:
      effect_of[lab.index] = effect

  def accuracy(group, of=hit_of):
    hits = [of[lab.index] for lab in group if lab.index in of]
    return (float(np.mean(hits)) if hits else None), len(hits)

  acc_all, n_all = accuracy(labels)
  acc_sel, n_sel = accuracy(selected)
  per_class_acc = {}
  for c in sorted({lab.action_class for lab in labels}):
    per_class_acc[c] = accuracy([lab for lab in labels if lab.action_class == c])[0]
  return {
      'num_unlabelled': len(unlabelled),
      'num_labelled': len(labels),
      'num_selected': len(selected),
      'num_unfinished_labels': sum(not lab.finished for lab in labels),
      'label_accuracy': acc_all, 'label_accuracy_pairs': n_all,
      'selected_label_accuracy': acc_sel, 'selected_label_accuracy_pairs': n_sel,
      'label_accuracy_per_class': per_class_acc,
      # A label whose action applied to the pair's source gives its target (world pairs with
      # their scenes): a right triplet for FDP even where it names the change another way than
      # the withheld action ("next to" for "right of"); label_accuracy counts those as wrong.
      'label_effect_match': accuracy(labels, effect_of)[0],
      'selected_label_effect_match': accuracy(selected, effect_of)[0],
      'class_counts_before': dict(sorted(collections.Counter(
          lab.action_class for lab in labels).items())),
      'class_counts_after': dict(sorted(collections.Counter(
          lab.action_class for lab in selected).items())),
      'mean_score_before': float(np.mean([lab.score for lab in labels])) if labels else None,
      'mean_score_after': float(np.mean([lab.score for lab in selected])) if selected else None,
      'selection_curve': {str(f): accuracy(select_labels(labels, f, keep_unparsed))[0]
                          for f in SELECTION_CURVE} if hit_of else {},
  }


def run_bootstrap(sampler: Sampler, params: Any, unlabelled: Sequence[Mapping[str, Any]],
                  bootstrap_cfg, sampling: SamplingParams, max_new_tokens: int, out_dir: str,
                  key, world_config=None) -> dict[str, Any]:
  """Labels, selects and writes `out_dir/synthetic` + `out_dir/stats.json`; returns the stats."""

  cfg = bootstrap_cfg
  require(cfg.decoding in DECODINGS,
          f'bootstrap.decoding={cfg.decoding!r} is unknown; use one of {", ".join(DECODINGS)}.')
  require(len(unlabelled) > 0, 'The unlabelled data set is empty; tokenize unlabelled pairs first.')
  if cfg.decoding == 'greedy':
    sampling = SamplingParams(greedy=True)
  pairs = [(ex['src_codes'], ex['tgt_codes']) for ex in unlabelled]
  labels = label_pairs(sampler, params, pairs, key, max_new_tokens, sampling,
                       int(cfg.batch_size), str(cfg.score), str(cfg.class_key), world_config)
  # Free-text actions (no action world beside the data) cannot parse: say what to set. On an action
  # world an untrained labeller may parse nothing; that is a result (0 pairs selected, named in
  # the reproduction's verdicts), not a mistake.
  if (cfg.class_key == 'world' and world_config is None and not cfg.keep_unparsed and labels
      and all(lab.action_class == UNPARSED for lab in labels)):
    raise UserError(f'None of the {len(labels)} labels parses as an action-world action (e.g. '
                    f'{labels[0].text[:60]!r}); for free-text actions set '
                    '--config.bootstrap.class_key=first_word (the verb) or none.')
  selected = select_labels(labels, cfg.num_selected, bool(cfg.keep_unparsed))
  examples, missing_rw = synthetic_examples(unlabelled, selected)
  report = write_records(os.path.join(out_dir, 'synthetic'), examples,
                         num_shards=int(cfg.num_shards))
  stats = bootstrap_stats(unlabelled, labels, selected, str(cfg.true_action_field),
                          str(cfg.class_key), world_config, bool(cfg.keep_unparsed))
  stats.update(num_written=report.num_written, skipped=dict(report.skipped),
               missing_recognition_weights=missing_rw, decoding=cfg.decoding,
               records=os.path.join(out_dir, 'synthetic'), shards=report.paths)
  with open(os.path.join(out_dir, 'stats.json'), 'w') as f:
    json.dump(stats, f, indent=1)
  logging.info('bootstrap: %d pairs labelled, %d selected, label accuracy %s', len(labels),
               len(selected), stats['label_accuracy'])
  return stats


def true_label_examples(synthetic: Sequence[Mapping[str, Any]],
                        unlabelled: Sequence[Mapping[str, Any]],
                        true_action_field: str = 'hidden_action', class_key: str = 'world',
                        world_config=None) -> tuple[list[dict[str, Any]], int]:
  """A control, not the method: the synthetic records (the pairs bootstrap selected) with each
  IDP label replaced by its pair's withheld true action; returns them and how many labels changed.

  FDM trained on these gets what a perfect labeller would give on the same pairs, so FDM with true
  labels against FDM measures what the IDP's label errors cost, and against FT whether the pairs
  help at all."""
  index = {f'synthetic-{ex.get("example_id", i)}': i for i, ex in enumerate(unlabelled)}
  out, changed = [], 0
  for rec in synthetic:
    i = index.get(str(rec['example_id']))
    truth = _true_action(unlabelled[i], true_action_field) if i is not None else None
    require(truth is not None, f'The synthetic pair {rec["example_id"]} has no withheld true '
            f'action ({true_action_field!r}) among the unlabelled pairs; the true-label control '
            'needs the embedded world\'s unlabelled split (leave reproduce.true_label_control '
            'off).')
    changed += not same_action(str(rec['action']), truth, class_key, world_config)
    out.append({**rec, 'action': truth, 'action_type': classify(truth, class_key, world_config)})
  return out, changed


# ------------------------------------------------------------------------------------------------
# The stage.


def _world_config(config):
  """The action world's config when the data is an action world (its world_config.json beside
  data.dir or in world.dir, the build_data stage's output), else None (free-text actions)."""
  data_cfg = config.data
  if data_cfg.get('name', '') != 'action_world':
    return None
  for d in (data_cfg.get('dir', ''), config.get('world', {}).get('dir', '')):
    if d and os.path.isfile(os.path.join(d, 'world_config.json')):
      return load_world_config(d)
  return DEFAULT_CONFIG


def labeller(config: ml_collections.ConfigDict, workdir: str):
  """(module, params, vocab) of the IDP labeller: `bootstrap.labeller_stage` names a stage of this
  workdir (its `params`, LoRA merged; the model is config.model, the vocabulary config.vocab) or a
  checkpoint directory (Orbax params or a transformers directory; training/loading.py)."""
  source = str(config.bootstrap.labeller_stage)
  params_dir = os.path.join(workdir, source, 'params')
  if os.path.isdir(params_dir):
    # Saved params have LoRA merged in: build the model without adapters.
    module = DecoderLM(TransformerConfig.from_config(config.model, lora_rank=0))
    return module, checkpointing.load_params(params_dir), UnifiedVocab.from_config(config.vocab)
  is_path = os.sep in source or source.startswith('.')
  require(is_path, f'{params_dir} does not exist; run the {source} stage first or set '
          'bootstrap.labeller_stage to a stage with params or an IDP checkpoint directory.')
  loaded = load_model(config, source, 'IDP labeller', flag='bootstrap.labeller_stage')
  return loaded.module, loaded.params, loaded.vocab


@registry.register('stage', 'bootstrap')
def bootstrap_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """Labels the unlabelled pairs (`bootstrap.unlabelled`, default WORKDIR/tokenize/unlabelled)
  with the IDP labeller (`labeller`) and writes the synthetic set."""

  cfg = config.bootstrap
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  module, params, vocab = labeller(config, workdir)
  prefix = cfg.unlabelled or os.path.join(workdir, 'tokenize', 'unlabelled')
  unlabelled = list(RecordSource.from_prefix(prefix))
  sampler = Sampler.from_config(module, vocab, config)
  sampling = SamplingParams.from_config(config.sampler, greedy=cfg.decoding == 'greedy')
  run_bootstrap(sampler, params, unlabelled, cfg, sampling,
                int(config.sampler.max_action_tokens) + 1, stage_dir,
                jax.random.PRNGKey(int(config.seed)), _world_config(config))


TRUE_LABELS_STAGE = 'bootstrap_true_labels'


@registry.register('stage', TRUE_LABELS_STAGE)
def true_labels_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """The true-label control (true_label_examples): WORKDIR/bootstrap's synthetic pairs with their
  withheld true actions, written as `stage_dir/synthetic` for the train_fdm_true_labels variant."""
  cfg = config.bootstrap
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  synthetic = list(RecordSource.from_prefix(os.path.join(workdir, 'bootstrap', 'synthetic')))
  prefix = cfg.unlabelled or os.path.join(workdir, 'tokenize', 'unlabelled')
  unlabelled = list(RecordSource.from_prefix(prefix))
  examples, changed = true_label_examples(synthetic, unlabelled, str(cfg.true_action_field),
                                          str(cfg.class_key), _world_config(config))
  report = write_records(os.path.join(stage_dir, 'synthetic'), examples,
                         num_shards=int(cfg.num_shards))
  with open(os.path.join(stage_dir, 'stats.json'), 'w') as f:
    json.dump(dict(num_written=report.num_written, skipped=dict(report.skipped),
                   labels_changed=changed, num_pairs=len(examples)), f, indent=1)
  logging.info('bootstrap_true_labels: %d pairs, %d IDP labels replaced by the true action',
               len(examples), changed)
