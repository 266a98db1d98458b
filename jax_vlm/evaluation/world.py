"""Exact evaluation on the embedded action world: FDP with best-of-K verification, IDP, probe.

FDP: for every test triplet the FDP model samples K candidate next frames (inference/sampler.py, at
`sampler.temperature`); the IDP model scores each by log p(action | src, candidate)
(inference/verifier.py, ranked by `verifier.rank_by`); the best wins. Candidates are decoded with
the world's trained VQGAN, read back with `data.action_world.parse_frame` and scored against the
true next scene with `score_prediction`: edit success, minimal editing, item score = min of the two
(the world's analogue of the paper's GPT-4o judge) and exact scene match. The largest K is sampled
once and best-of-first-k is reported for every k in `k_list` (the same samples for every k).
`oracle` is the best item score among the first k candidates (what a perfect verifier would reach).

IDP: greedy action text for each (src, tgt), scored by canonical action match, effect match
(`score_action_text`: applying the text to the source gives the target) and BLEU / ROUGE.

Outputs of `evaluate_world` (in `out_dir`):
  metrics.json    per split: FDP per k (all + per action type), oracle, references (the target's own
                  codes, a copied source), IDP
  items.jsonl     one record per (split, item): candidates' scores, verifier scores, chosen index
  report.html     the tables, then a sample of items with frames and candidates

The `evaluate` stage evaluates every stage in `world_eval.fdp_stages` (verifier:
`world_eval.idp_stage`), the IDP model, learning curves over the checkpoints of
`world_eval.curve_stage` (continued by those of `world_eval.curve_next_stage`, a stage trained on
from its last params, when set) and the trajectory preference probe (random init vs trained).
Settings are tuned with `world_eval.splits=('validation',)` (built like `test`), never on `test`.
`run(config, workdir)` is eval.py's entry ('action_world').
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data.action_world import (
  Scene,
  load_world_config,
  parse_frame,
  render,
  score_action_text,
  score_prediction,
)
from data.records import RecordSource
from jax_vlm.core import registry
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import require
from jax_vlm.core.files import write_json
from jax_vlm.core.settings import section_with_defaults
from jax_vlm.evaluation.metrics import text_metrics
from jax_vlm.evaluation.report import ReportItem, write_html_report
from jax_vlm.inference.sampler import Sampler, SamplingParams, guidance_from_config
from jax_vlm.inference.verifier import Verifier, best_of_first_k
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.method import probe as probe_lib
from jax_vlm.models import lora
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.models.vqgan import VQGAN
from jax_vlm.tokens import sequences
from jax_vlm.tokens.image_processing import postprocess
from jax_vlm.tokens.vocab import UnifiedVocab
from jax_vlm.training import checkpointing
from jax_vlm.weights import vqgan_files

SPLITS = ('test', 'test_compositional')
K_LIST = (1, 2, 4, 8)
FDP_METRICS = ('edit_success', 'minimal_editing', 'item_score', 'exact_match')
IDP_METRICS = ('canonical_match', 'effect_match', 'parsed')
METRICS_FILE = 'metrics.json'
ITEMS_FILE = 'items.jsonl'
REPORT_FILE = 'report.html'

# world_eval settings and their defaults (a config may leave any of them out).
DEFAULTS = dict(
    fdp_stages=('train_dynamics',),  # FDP models to evaluate (stage names with params/)
    idp_stage='train_dynamics',  # the IDP model: verifier and IDP evaluation
    splits=SPLITS,
    k_list=K_LIST,
    max_items=0,  # items per split (0 = all)
    batch_size=64,  # prompts per sampler call
    score_batch_size=128,  # sequences per verifier forward pass
    report_items=12,  # items per split shown in the HTML report
    curve_stage='train_dynamics',  # learning curves over this stage's checkpoints ('' = none)
    # A stage that trained on from curve_stage's last params (train.init_from): its checkpoints
    # continue the curves, their steps counted on from curve_stage's last ('' = none)
    curve_next_stage='',
    curve_items=200,  # test items per checkpoint for the learning curves
    probe_items=200,  # test triplets for the preference probe (0 = no probe)
)


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.world_eval` on top of DEFAULTS; unknown keys are a UserError."""
  out = section_with_defaults(DEFAULTS, config.get('world_eval', None), 'world_eval')
  k_list = tuple(sorted(int(k) for k in out.k_list))
  require(k_list and k_list[0] >= 1, f'world_eval.k_list={out.k_list} must list K >= 1.')
  out.k_list = k_list
  return out


# ------------------------------------------------------------------------------------------------
# Pure pieces: selection and summaries (testable without a model).


def score_candidates(src_scene, action: str, tgt_scene, predicted_scenes: Sequence[Any],
                     world_config) -> list[dict]:
  """score_prediction of each predicted scene, as plain floats."""
  out = []
  for scene in predicted_scenes:
    s = score_prediction(src_scene, action, tgt_scene, scene, world_config)
    out.append({k: float(s[k]) for k in FDP_METRICS})
  return out


def select(candidate_scores: Sequence[dict], ranking: np.ndarray, k_list: Sequence[int]
           ) -> dict[int, dict]:
  """For each k: {'chosen': index, the chosen candidate's metrics, 'oracle': best item score}."""
  out = {}
  for k in k_list:
    best = best_of_first_k(ranking, k)
    out[k] = dict(candidate_scores[best], chosen=best,
                  oracle=max(s['item_score'] for s in candidate_scores[:k]))
  return out


def _mean(rows: Sequence[dict], keys: Sequence[str]) -> dict:
  return {k: float(np.mean([float(r[k]) for r in rows])) if rows else None for k in keys}


def summarize(rows: Sequence[dict], keys: Sequence[str], type_key: str = 'action_type') -> dict:
  """{'all': means, 'per_type': {type: means}, 'n': count} over rows (dicts with `keys`)."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[r[type_key]].append(r)
  return {'all': _mean(rows, keys), 'n': len(rows),
          'per_type': {t: dict(_mean(g, keys), n=len(g)) for t, g in sorted(groups.items())}}


# ------------------------------------------------------------------------------------------------
# The test data.


def load_items(config, workdir: str, split: str, max_items: int = 0) -> list[dict]:
  """Tokenized test triplets with their scenes: src_codes, tgt_codes [n], action, canonical,
  action_type, example_id, src_scene, tgt_scene (Scene)."""
  prefix = os.path.join(config.data.dir, split)
  older = (' (a world built before the validation split existed: add --rerun_stages=build_data,'
           'tokenize, which leaves its other splits as they were)' if split == 'validation' else '')
  require(os.path.isfile(prefix + '.meta.json'), f'No tokenized {split} split at {prefix}; run '
          f'the tokenize stage in {workdir} first{older}.')
  source = RecordSource.from_prefix(prefix)
  n = len(source) if not max_items else min(int(max_items), len(source))
  items = []
  for i in range(n):
    ex = source[i]
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    items.append(dict(
        example_id=text(ex['example_id']), split=split, action=text(ex['action']),
        canonical=text(ex['canonical']), action_type=text(ex['action_type']),
        src_codes=np.asarray(ex['src_codes'], np.int32).reshape(-1),
        tgt_codes=np.asarray(ex['tgt_codes'], np.int32).reshape(-1),
        src_scene=Scene.from_json(json.loads(text(ex['src_scene']))),
        tgt_scene=Scene.from_json(json.loads(text(ex['tgt_scene'])))))
  return items


# ------------------------------------------------------------------------------------------------
# Models: sampler, scorer, frame reader.


def _round8(n: int) -> int:
  return -(-int(n) // 8) * 8


class WorldModels:
  """Module, vocabulary, sampler, VQGAN decoder and world config of a run (params per call)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.world = load_world_config(config.world.dir)
    self.num_codes = self.world.num_cells
    # Saved params have LoRA merged in: the model has no adapters.
    self.module = DecoderLM(TransformerConfig.from_config(config.model, lora_rank=0))
    self.vocab = UnifiedVocab.from_config(config.vocab)
    self.action_max_tokens = int(config.data.action_max_tokens)
    n = self.num_codes
    fdp_bucket = _round8(n + 4 + self.action_max_tokens)
    idp_bucket = _round8(2 * n + 5)
    self.text_tokens = self.action_max_tokens + 1
    cache_len = max(fdp_bucket + n, idp_bucket + self.text_tokens)
    self.sampler = Sampler(self.module, self.vocab, cache_len, (fdp_bucket, idp_bucket))
    self._idp_bucket = idp_bucket
    self._long_text_samplers: dict[int, Sampler] = {}  # max new tokens -> sampler (greedy_actions)
    # Classifier-free guidance of the FDP samples (config.sampler.cfg_*_scale; 0 = none).
    self.guidance = guidance_from_config(config.sampler)
    self.score_bucket = _round8(2 * n + 6 + self.action_max_tokens)
    self.vq_config, self.vq_params = vqgan_files.load_vqgan(config.checkpoint.vqgan_dir)
    vq = VQGAN(self.vq_config)
    self._decode = jax.jit(lambda p, c: vq.apply({'params': p}, c, method=VQGAN.decode))
    self.code_grid = (self.world.rows, self.world.cols)
    self._scenes: dict[bytes, Any] = {}

  def action_ids(self, text: str) -> np.ndarray:
    ids, _ = sequences.action_ids_of({'action': text}, self.vocab, self.action_max_tokens)
    return ids

  # --- frames --------------------------------------------------------------------------------
  def frames(self, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """codes [m, n] -> uint8 frames [m, H, W, 3] (VQGAN decode), in batches of one shape."""
    codes = np.asarray(codes, np.int32).reshape(-1, *self.code_grid)
    out = []
    for start in range(0, len(codes), batch_size):
      chunk = codes[start:start + batch_size]
      m = len(chunk)
      chunk = pad_rows(chunk, batch_size)
      out.append(postprocess(jax.device_get(self._decode(self.vq_params, chunk)))[:m])
    return np.concatenate(out) if out else np.zeros((0, *self.world.frame_shape), np.uint8)

  def scenes(self, codes: np.ndarray) -> list:
    """codes [m, n] -> parsed scenes (decode + parse_frame), cached per distinct code grid."""
    codes = np.asarray(codes, np.int32).reshape(len(codes), -1)
    keys = [c.tobytes() for c in codes]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in self._scenes}.items(),
                  key=lambda kv: kv[1])
    if todo:
      frames = self.frames(np.stack([codes[i] for _, i in todo]))
      for (k, _), frame in zip(todo, frames):
        self._scenes[k] = parse_frame(frame, self.world)
    return [self._scenes[k] for k in keys]

  # --- generation ----------------------------------------------------------------------------
  def sample_candidates(self, params, items: Sequence[dict], key, num_candidates: int,
                        sampling, batch_size: int) -> np.ndarray:
    """[len(items), K, n] candidate codes; the last batch is padded so one program serves all."""
    batch_size = max(1, min(batch_size, len(items)))
    out = []
    for b, start in enumerate(range(0, len(items), batch_size)):
      chunk = list(items[start:start + batch_size])
      m = len(chunk)
      chunk = pad_rows(chunk, batch_size)
      res = self.sampler.sample_frames(params, [it['src_codes'] for it in chunk],
                                       [self.action_ids(it['action']) for it in chunk],
                                       jax.random.fold_in(key, b), num_candidates, sampling,
                                       self.guidance)
      out.append(np.asarray(res.codes)[:m])
    return np.concatenate(out).reshape(len(items), num_candidates, -1)

  def greedy_actions(self, params, items: Sequence[dict], batch_size: int,
                     max_new_tokens: int = 0) -> list[str]:
    """Greedy IDP action text for each item's (src, tgt). `max_new_tokens` (0 = an action's
    length) reads a longer text after the same prompt, e.g. a base's `difference` document."""
    new_tokens = int(max_new_tokens) or self.text_tokens
    sampler = self.sampler
    if new_tokens > self.text_tokens:  # a cache that holds the prompt and the longer text
      if new_tokens not in self._long_text_samplers:
        self._long_text_samplers[new_tokens] = Sampler(
            self.module, self.vocab, self._idp_bucket + new_tokens, (self._idp_bucket,))
      sampler = self._long_text_samplers[new_tokens]
    batch_size = max(1, min(batch_size, len(items)))
    texts = []
    for start in range(0, len(items), batch_size):
      chunk = list(items[start:start + batch_size])
      m = len(chunk)
      chunk = pad_rows(chunk, batch_size)
      prompts = [sequences.idp_prompt(it['src_codes'], it['tgt_codes'], self.vocab)
                 for it in chunk]
      res = sampler.generate_text(params, prompts, jax.random.PRNGKey(0), 1, new_tokens,
                                  SamplingParams(greedy=True))
      texts += [res.texts[r][0] for r in range(m)]
    return texts

  def verifier_scores(self, idp_params, items: Sequence[dict], candidates: np.ndarray,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed, mean) log p(action <eos> | src, candidate), each [len(items), K]."""
    rows_total = candidates.shape[0] * candidates.shape[1]
    verifier = Verifier(self.module, idp_params, self.vocab,
                        batch_size=max(1, min(batch_size, rows_total)),
                        length_buckets=(self.score_bucket,))
    return verifier.score_items([it['src_codes'] for it in items], candidates,
                                [self.action_ids(it['action']) for it in items])


# ------------------------------------------------------------------------------------------------
# Evaluations.


def fdp_evaluation(models: WorldModels, fdp_params, idp_params, items: Sequence[dict],
                   k_list: Sequence[int], key, sampling, rank_by: str = 'mean',
                   batch_size: int = 64, score_batch_size: int = 128
                   ) -> tuple[dict, list[dict], np.ndarray]:
  """Best-of-K on one split: (summary {k: summarize(...)} + oracle, item records, candidates)."""
  k_max = max(k_list)
  candidates = models.sample_candidates(fdp_params, items, key, k_max, sampling, batch_size)
  if idp_params is not None and k_max > 1:
    summed, mean = models.verifier_scores(idp_params, items, candidates, score_batch_size)
  else:  # nothing to choose between: candidate 0
    summed = mean = np.zeros(candidates.shape[:2], np.float32)
  ranking = mean if rank_by == 'mean' else summed
  scenes = models.scenes(candidates.reshape(-1, candidates.shape[-1]))
  records, per_k = [], {k: [] for k in k_list}
  for i, it in enumerate(items):
    preds = scenes[i * k_max:(i + 1) * k_max]
    cand_scores = score_candidates(it['src_scene'], it['canonical'], it['tgt_scene'], preds,
                                   models.world)
    chosen = select(cand_scores, ranking[i], k_list)
    for k in k_list:
      per_k[k].append(dict(chosen[k], action_type=it['action_type']))
    records.append(dict(
        example_id=it['example_id'], split=it['split'], action=it['action'],
        canonical=it['canonical'], action_type=it['action_type'],
        candidates=candidates[i].tolist(), candidate_scores=cand_scores,
        verifier_sum=[float(x) for x in summed[i]], verifier_mean=[float(x) for x in mean[i]],
        chosen={str(k): chosen[k]['chosen'] for k in k_list},
        predicted_scenes=[s.to_json() for s in preds]))
  summary = {f'k={k}': summarize(per_k[k], FDP_METRICS + ('oracle',)) for k in k_list}
  return summary, records, candidates


def reference_scores(models: WorldModels, items: Sequence[dict]) -> dict:
  """What the scores read for the true target's own codes (the tokenizer's ceiling) and for a
  copied source (minimal editing 1, edit success 0)."""
  out = {}
  for name, field in (('target_codes', 'tgt_codes'), ('copy_source', 'src_codes')):
    scenes = models.scenes(np.stack([it[field] for it in items]))
    rows = []
    for it, scene in zip(items, scenes):
      s = score_candidates(it['src_scene'], it['canonical'], it['tgt_scene'], [scene],
                           models.world)[0]
      rows.append(dict(s, action_type=it['action_type']))
    out[name] = summarize(rows, FDP_METRICS)
  return out


def idp_evaluation(models: WorldModels, idp_params, items: Sequence[dict], batch_size: int = 64
                   ) -> tuple[dict, list[str]]:
  """Greedy IDP on one split: summary (canonical/effect match, parsed, BLEU, ROUGE) and texts."""
  texts = models.greedy_actions(idp_params, items, batch_size)
  rows = []
  for it, text in zip(items, texts):
    s = score_action_text(it['src_scene'], text, it['tgt_scene'], models.world,
                          true_action=it['canonical'])
    rows.append(dict({k: float(s[k]) for k in IDP_METRICS}, action_type=it['action_type']))
  summary = summarize(rows, IDP_METRICS)
  refs = [it['action'] for it in items]
  summary['all']['BLEU'] = text_metrics.bleu(texts, refs)
  summary['all'].update(text_metrics.rouge(texts, refs))
  return summary, texts


def _sampling(config):
  return SamplingParams.from_config(config.sampler)


def _table_rows(metrics: dict) -> dict[str, list[dict]]:
  """Report tables: per split, one row per k (+ references), one per action type at the ends."""
  tables = {}
  for split, m in metrics['splits'].items():
    rows = []
    for name, s in m['fdp'].items():
      rows.append(dict(row=f'FDP best-of-{name[2:]}', n=s['n'], **s['all']))
    for name, s in m['reference'].items():
      rows.append(dict(row=f'reference: {name}', n=s['n'], **s['all']))
    if 'idp' in m:
      rows.append(dict(row='IDP (greedy)', n=m['idp']['n'], **m['idp']['all']))
    tables[f'{split}: overall'] = rows
    for name in sorted({min(m['fdp']), max(m['fdp'], key=lambda s: int(s[2:]))}):
      tables[f'{split}: FDP best-of-{name[2:]} per action type'] = [
          dict(action_type=t, **v) for t, v in m['fdp'][name]['per_type'].items()]
  return tables


def evaluate_world(config: ml_collections.ConfigDict, workdir: str, fdp_params, idp_params,
                   splits: Sequence[str] = SPLITS, k_list: Sequence[int] = K_LIST,
                   out_dir: str | None = None, max_items: int = 0, key=None,
                   models: WorldModels | None = None, title: str = 'action world') -> dict:
  """Evaluates FDP (best-of-K with the IDP verifier) and IDP on `splits`; writes metrics.json,
  items.jsonl and report.html into `out_dir` (default WORKDIR/evaluate) and returns the metrics.

  `config` has its '{workdir}' paths resolved; idp_params=None skips verification (candidate 0
  wins) and the IDP evaluation.
  """
  s = settings(config)
  out_dir = out_dir or os.path.join(workdir, 'evaluate')
  os.makedirs(out_dir, exist_ok=True)
  models = models or WorldModels(config)
  key = jax.random.PRNGKey(int(config.seed)) if key is None else key
  start = time.perf_counter()
  metrics: dict[str, Any] = {'splits': {}, 'k_list': list(k_list),
                             'temperature': float(config.sampler.temperature),
                             'rank_by': str(config.verifier.rank_by)}
  report_items = []
  with open(os.path.join(out_dir, ITEMS_FILE + '.tmp'), 'w') as items_file:
    for si, split in enumerate(splits):
      items = load_items(config, workdir, split, max_items)
      summary, records, candidates = fdp_evaluation(
          models, fdp_params, idp_params, items, k_list, jax.random.fold_in(key, si),
          _sampling(config), str(config.verifier.rank_by), int(s.batch_size),
          int(s.score_batch_size))
      m = {'fdp': summary, 'reference': reference_scores(models, items), 'n': len(items)}
      texts = [None] * len(items)
      if idp_params is not None:
        m['idp'], texts = idp_evaluation(models, idp_params, items, int(s.batch_size))
      metrics['splits'][split] = m
      for rec, text in zip(records, texts):
        if text is not None:
          rec['idp_prediction'] = text
        items_file.write(json.dumps(rec) + '\n')
      for i in range(min(int(s.report_items), len(items))):
        it, rec = items[i], records[i]
        k_top = str(max(k_list))
        scores = rec['verifier_mean'] if config.verifier.rank_by == 'mean' else rec['verifier_sum']
        report_items.append(ReportItem(
            title=f'{split} {it["example_id"]} ({it["action_type"]})', action=it['action'],
            src_frame=render(it['src_scene'], models.world),
            tgt_frame=render(it['tgt_scene'], models.world),
            candidates=list(models.frames(candidates[i])), verifier_scores=scores,
            chosen=rec['chosen'][k_top],
            fields=dict({f'candidate {j} item score / exact': f'{c["item_score"]:.2f} / '
                         f'{int(c["exact_match"])}' for j, c in enumerate(rec['candidate_scores'])},
                        idp_prediction=rec.get('idp_prediction', ''), canonical=it['canonical'])))
  os.replace(os.path.join(out_dir, ITEMS_FILE + '.tmp'), os.path.join(out_dir, ITEMS_FILE))
  metrics['seconds'] = round(time.perf_counter() - start, 1)
  write_json(os.path.join(out_dir, METRICS_FILE), metrics)
  notes = [f'K candidates sampled at temperature {config.sampler.temperature}; best-of-k uses the '
           f'first k of the same {max(k_list)} samples, ranked by the IDP verifier '
           f'({config.verifier.rank_by} log p(action | src, candidate)). oracle: best item score '
           'among the first k (a perfect verifier). reference target_codes: the true target\'s '
           'own codes decoded (the tokenizer\'s ceiling); copy_source: the source as prediction.']
  write_html_report(os.path.join(out_dir, REPORT_FILE), f'{title}: FDP best-of-K and IDP',
                    _table_rows(metrics), report_items, notes)
  return metrics


# ------------------------------------------------------------------------------------------------
# Learning curves and the probe.


def checkpoint_params(stage_dir: str, step: int, model_config=None) -> Any:
  """Params of training checkpoint `step` in stage_dir/checkpoints (LoRA merged if any)."""
  import orbax.checkpoint as ocp
  path = os.path.join(os.path.abspath(stage_dir), 'checkpoints', str(step), 'state')
  require(os.path.isdir(path), f'No checkpoint at {path}; train the stage first.')
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(path)
  params = state['params']
  if model_config is not None and model_config.lora_rank > 0:
    params = lora.merge_lora(params, model_config)
  return params


def checkpoint_steps(stage_dir: str) -> list[int]:
  d = os.path.join(stage_dir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()
                and os.path.isdir(os.path.join(d, n, 'state')))


def learning_curve(models: WorldModels, config, workdir: str, stage: str | Sequence[str],
                   items: Sequence[dict], key, batch_size: int = 64) -> list[dict]:
  """Held-out IDP canonical accuracy and FDP (one sample, no verifier) scores per checkpoint of
  `stage`, or of several stages each trained on from the one before's last params: a later
  stage's `step` counts on from the earlier one's last checkpoint (`stage_step` is its own)."""
  model_config = TransformerConfig.from_config(config.model)
  rows, offset = [], 0
  for name in ([stage] if isinstance(stage, str) else list(stage)):
    steps = checkpoint_steps(os.path.join(workdir, name))
    for step in steps:
      params = checkpoint_params(os.path.join(workdir, name), step, model_config)
      idp, _ = idp_evaluation(models, params, items, batch_size)
      fdp, _, _ = fdp_evaluation(models, params, None, items, (1,), key, _sampling(config),
                                 batch_size=batch_size)
      rows.append(dict(step=offset + step, stage=name, stage_step=step,
                       idp_canonical_match=idp['all']['canonical_match'],
                       idp_effect_match=idp['all']['effect_match'],
                       fdp_item_score=fdp['k=1']['all']['item_score'],
                       fdp_exact_match=fdp['k=1']['all']['exact_match'],
                       fdp_edit_success=fdp['k=1']['all']['edit_success'],
                       fdp_minimal_editing=fdp['k=1']['all']['minimal_editing']))
      logging.info('learning curve %s step %d: %s', name, step, rows[-1])
    offset += steps[-1] if steps else 0
  return rows


def probe(models: WorldModels, config, params, items: Sequence[dict]) -> dict:
  """Trajectory preference probe shares (jax_vlm.method.probe) for `params` on `items`."""
  triplets = [probe_lib.Triplet(it['src_codes'], models.action_ids(it['action']),
                                it['tgt_codes']) for it in items]
  return probe_lib.run_probe(models.module, params, models.vocab, triplets,
                             seed=int(config.seed), normalize=True,
                             batch_size=int(settings(config).score_batch_size))


def random_init_params(models: WorldModels, seed: int) -> Any:
  """Freshly initialised params of the run's model (the probe's 'before training')."""
  import flax.linen as nn
  variables = jax.jit(models.module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))
  return nn.unbox(variables['params'])


# ------------------------------------------------------------------------------------------------
# The stage and eval.py's entry.


def _stage_params(workdir: str, stage: str):
  path = os.path.join(workdir, stage, 'params')
  require(os.path.isdir(path), f'{path} does not exist; run the {stage} stage first.')
  return checkpointing.load_params(path)


def _resolved(config, workdir):
  return resolve_paths(config, workdir)


def _params_stamp(workdir: str, stage: str, sub: str = 'params') -> str:
  """A digest of the files under WORKDIR/<stage>/<sub> (names and contents): a retrained stage
  writes other params, so a part computed from the old ones is known to be stale."""
  root = os.path.join(workdir, stage, sub)
  digest = hashlib.sha256()
  for here, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      digest.update(os.path.relpath(os.path.join(here, name), root).encode() + b'\0')
      with open(os.path.join(here, name), 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
  return digest.hexdigest()


def _source_path(path: str) -> str:
  """Where a part's output at `path` records what it was computed from: `<name>.source.json`."""
  return os.path.splitext(path)[0] + '.source.json'


def _fresh(path: str, source: dict) -> bool:
  """A part's output at `path` is there and was computed from `source` (a part written before
  sources were recorded is taken as it is)."""
  if not os.path.isfile(path):
    return False
  if not os.path.isfile(_source_path(path)):
    return True
  with open(_source_path(path)) as f:
    return json.load(f) == json.loads(json.dumps(source))


def _record_source(path: str, source: dict) -> None:
  write_json(_source_path(path), source)


def run_evaluations(config: ml_collections.ConfigDict, workdir: str, out_dir: str) -> dict:
  """Everything world_eval asks for, each part skipped when its output is already there and was
  computed from the same params and settings (a retrained stage's part is computed again)."""
  s = settings(config)
  config = _resolved(config, workdir)
  models = WorldModels(config)
  idp_params = _stage_params(workdir, s.idp_stage) if s.idp_stage else None
  summary: dict[str, Any] = {'fdp': {}, 'settings': s.to_dict()}
  verifier = dict(stage=s.idp_stage, params=_params_stamp(workdir, s.idp_stage)
                  if s.idp_stage else '')
  # What every part's numbers depend on besides its params: the seed, the sampler and verifier
  # sections whole, and the batch size (each batch folds its own key).
  common = dict(seed=int(config.seed), sampler=config.sampler.to_dict(),
                verifier=config.verifier.to_dict(), batch_size=int(s.batch_size))
  for stage in s.fdp_stages:
    sub = os.path.join(out_dir, stage)
    path = os.path.join(sub, METRICS_FILE)
    source = dict(common, params=_params_stamp(workdir, stage), verifier=verifier,
                  splits=list(s.splits), k_list=list(s.k_list), max_items=int(s.max_items))
    if not _fresh(path, source):
      logging.info('evaluate: FDP of %s (verifier %s)', stage, s.idp_stage)
      evaluate_world(config, workdir, _stage_params(workdir, stage), idp_params, tuple(s.splits),
                     s.k_list, sub, int(s.max_items), models=models, title=stage)
      _record_source(path, source)
    with open(path) as f:
      summary['fdp'][stage] = json.load(f)
  test_items = None
  if s.curve_stage and int(s.curve_items) > 0:
    path = os.path.join(out_dir, 'learning_curve.json')
    curve_stages = [s.curve_stage] + ([s.curve_next_stage] if s.curve_next_stage else [])
    source = dict(common, checkpoints=_params_stamp(workdir, s.curve_stage, 'checkpoints'),
                  items=int(s.curve_items))
    if s.curve_next_stage:
      source['next_checkpoints'] = _params_stamp(workdir, s.curve_next_stage, 'checkpoints')
    if not _fresh(path, source):
      test_items = load_items(config, workdir, 'test', int(s.curve_items))
      write_json(path, learning_curve(models, config, workdir, curve_stages, test_items,
                                       jax.random.PRNGKey(int(config.seed) + 1),
                                       int(s.batch_size)))
      _record_source(path, source)
    with open(path) as f:
      summary['learning_curve'] = json.load(f)
  if int(s.probe_items) > 0 and idp_params is not None:
    path = os.path.join(out_dir, 'probe.json')
    source = dict(common, verifier=verifier, items=int(s.probe_items))
    if not _fresh(path, source):
      items = load_items(config, workdir, 'test', int(s.probe_items))
      result = {
          'random_init': probe(models, config, random_init_params(models, int(config.seed)),
                               items),
          'trained': probe(models, config, idp_params, items),
          'trained_stage': s.idp_stage, 'items': len(items)}
      write_json(path, result)
      _record_source(path, source)
    with open(path) as f:
      summary['probe'] = json.load(f)
  write_json(os.path.join(out_dir, METRICS_FILE), summary)
  return summary


@registry.register('stage', 'evaluate')
def evaluate_stage(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """The world evaluation stage: see the module docstring; writes under `stage_dir`."""
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  run_evaluations(config, workdir, stage_dir)


def _latest_fdp_stage(workdir: str) -> str:
  for stage in ('train_fdm', 'train_fdp', 'train_dynamics'):
    if os.path.isdir(os.path.join(workdir, stage, 'params')):
      return stage
  return 'train_dynamics'


def _latest_idp_stage(workdir: str) -> str:
  """The IDP a pipeline's workdir ended with: the second round's when it ran, else
  train_dynamics'."""
  for stage in ('train_idp_round2', 'train_dynamics'):
    if os.path.isdir(os.path.join(workdir, stage, 'params')):
      return stage
  return 'train_dynamics'


@registry.register('benchmark', 'action_world')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """eval.py's entry: evaluates the pipeline in `workdir` (FDP stage: world_eval.fdp_stages[0] if
  set in the config, else the newest of train_fdm / train_fdp / train_dynamics; the IDP, which
  verifies: world_eval.idp_stage if set, else train_idp_round2 when it ran, else train_dynamics)
  into WORKDIR/eval_<stage>/; returns the metrics with an 'all' summary of the test split."""
  s = settings(config)
  given = config.get('world_eval', None)
  stage = (tuple(given.fdp_stages)[0] if given and 'fdp_stages' in given
           else _latest_fdp_stage(os.path.abspath(workdir)))
  workdir = os.path.abspath(workdir)
  if not (given and 'idp_stage' in given):
    s.idp_stage = _latest_idp_stage(workdir)
  logging.info('action_world: FDP %s, verified by the IDP of %s', stage, s.idp_stage)
  rconfig = _resolved(config, workdir)
  idp = _stage_params(workdir, s.idp_stage) if s.idp_stage else None
  out_dir = os.path.join(workdir, f'eval_{stage}')
  metrics = evaluate_world(rconfig, workdir, _stage_params(workdir, stage), idp, tuple(s.splits),
                           s.k_list, out_dir, int(s.max_items), title=stage)
  split = tuple(s.splits)[0]
  m = metrics['splits'][split]
  overall = {'fdp_stage': stage, 'idp_stage': s.idp_stage, 'split': split}
  for k in s.k_list:
    overall[f'item_score@{k}'] = m['fdp'][f'k={k}']['all']['item_score']
    overall[f'exact@{k}'] = m['fdp'][f'k={k}']['all']['exact_match']
  if 'idp' in m:
    overall['idp_canonical_match'] = m['idp']['all']['canonical_match']
  metrics['all'] = overall
  print(f'action_world: metrics, items and report in {out_dir}')
  return metrics
