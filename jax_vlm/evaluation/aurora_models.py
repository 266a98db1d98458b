"""Model predictors for AURORA-BENCH (and any benchmark in its layout): FDP with best-of-K.

  python eval.py --config configs/aurora_bench.py --config.bench_root=ROOT \
      --config.eval.model=fdp --config.eval.fdp_checkpoint=DIR \
      [--config.eval.idp_checkpoint=DIR] --config.eval.num_candidates=K \
      --config.checkpoint.vqgan_dir=VQ --config.vocab.tokenizer_dir=TOK --workdir W

Per item: source image -> `preprocess` at the VQGAN's resolution -> VQGAN codes -> the FDP prompt
`<bos> instruction <boi> src <eoi> <boi>` -> K candidates from one prefill (inference/sampler.py;
config.sampler's temperature / top_k / top_p / cfg_* scales, by default plain sampling at T=1) ->
the IDP verifier's log p(instruction | src, candidate) per candidate (inference/verifier.py,
config.verifier.rank_by) -> best-of-K -> VQGAN decode -> the predicted frame (all K decoded and
saved). A checkpoint is this project's Orbax params directory (train.py's `<stage>/params`;
model sizes from its hf_config.json or model_config.json, else config.model) or a transformers
directory (config.json + safetensors; model sizes from it), read by training/loading.py. The
vocabulary is config.vocab; with vocab.tokenizer_dir empty, the tokenizer files inside the FDP
checkpoint (export copies them).

IDP (Table 1): `--config.eval.task=idp --config.eval.idp_checkpoint=DIR` decodes the action text
greedily for each (source, target) pair and writes BLEU / ROUGE-1 / ROUGE-L / BERTScore
(`--config.eval.bertscore_dir=DIR`, skipped with a note when empty) per task and `all`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import tqdm

from data.aurora import load_aurora_bench
from data.images import load_rgb
from jax_vlm.core import registry
from jax_vlm.core.batching import pad_rows
from jax_vlm.core.errors import UserError, require
from jax_vlm.core.files import write_json
from jax_vlm.evaluation import aurora
from jax_vlm.evaluation.aurora import Prediction
from jax_vlm.evaluation.metrics import text_metrics
from jax_vlm.evaluation.report import ReportItem, write_html_report
from jax_vlm.inference.sampler import (
  Sampler,
  SamplingParams,
  candidate_keys,
  guidance_from_config,
)
from jax_vlm.inference.verifier import Verifier, best_of_first_k, check_same_vocab
from jax_vlm.method.bootstrap import label_pairs
from jax_vlm.models.vqgan import VQGAN
from jax_vlm.tokens import sequences
from jax_vlm.tokens.image_processing import postprocess, preprocess
from jax_vlm.training.loading import LoadedModel, load_model  # noqa: F401  (re-exported)
from jax_vlm.weights import vqgan_files

SELECTION = 'best-of-K by the IDP verifier (config.verifier.rank_by: mean or sum log p(action))'


def _round8(n: int) -> int:
  return -(-int(n) // 8) * 8


def _load_vqgan(owner, config, model: LoadedModel) -> VQGAN:
  """Sets owner.vq_config, vq_params, resolution and a jitted _encode from
  config.checkpoint.vqgan_dir, after checking its codebook fits `model`'s vocabulary."""
  owner.vq_config, owner.vq_params = vqgan_files.load_vqgan(config.checkpoint.vqgan_dir)
  require(owner.vq_config.num_embeddings == model.vocab.num_image_codes,
          f'The VQGAN in {config.checkpoint.vqgan_dir} has {owner.vq_config.num_embeddings} '
          f'codes but the vocabulary of {model.path} has {model.vocab.num_image_codes} '
          'image tokens; use the VQGAN the model was trained with (vocab.num_image_codes).')
  owner.resolution = int(owner.vq_config.resolution)
  vq = VQGAN(owner.vq_config)
  owner._encode = jax.jit(lambda p, x: vq.apply({'params': p}, x, method=VQGAN.encode)[0])
  return vq


class FDPPredictor:
  """`item -> Prediction` with K candidates, their verifier scores and the verifier's choice."""

  def __init__(self, config):
    e = config.eval
    self.num_candidates = int(e.num_candidates)
    require(self.num_candidates >= 1,
            f'eval.num_candidates must be >= 1, got {self.num_candidates}.')
    require(bool(config.checkpoint.vqgan_dir),
            'No VQGAN given; pass --config.checkpoint.vqgan_dir=DIR (Flax VQGAN params).')
    self.fdp = load_model(config, e.fdp_checkpoint, 'fdp')
    vq = _load_vqgan(self, config, self.fdp)
    self._decode = jax.jit(lambda p, c: vq.apply({'params': p}, c, method=VQGAN.decode))
    grid = self._encode(self.vq_params, np.zeros((1, self.resolution, self.resolution, 3),
                                                 np.float32))
    self.grid = tuple(grid.shape[1:])
    n = int(np.prod(self.grid))
    self.max_action_tokens = int(config.sampler.max_action_tokens)
    prompt = _round8(n + 4 + self.max_action_tokens)
    self.sampler = Sampler(self.fdp.module, self.fdp.vocab, prompt + n + 8, (prompt,))
    self.sampling = SamplingParams.from_config(config.sampler)
    self.guidance = guidance_from_config(config.sampler)
    idp = load_model(config, e.idp_checkpoint, 'idp') if e.idp_checkpoint else self.fdp
    check_same_vocab(self.fdp.vocab, idp.vocab)
    require(idp.module.config.vocab_size >= self.fdp.vocab.vocab_size,
            f'The verifier {idp.path} has fewer token embeddings than the vocabulary needs.')
    self.idp, self.n = idp, n
    self.rank_by = str(config.verifier.rank_by)
    self.verifier_batch = int(config.verifier.batch_size)
    self.verifier = self._make_verifier(self.num_candidates)
    # predict_many: items per sampler call (each with K candidates); its verifier scores up to
    # verifier.batch_size of their batch_size * K rows per pass.
    self.batch_size = max(1, int(e.get('batch_size', 1)))
    self._batch_verifier = None
    self.key = jax.random.PRNGKey(int(config.get('seed', 0)))
    self.info = {'num_candidates': self.num_candidates, 'selection': SELECTION,
                 'rank_by': str(config.verifier.rank_by), 'fdp_checkpoint': self.fdp.path,
                 'idp_checkpoint': idp.path, 'temperature': self.sampling.temperature,
                 'top_k': self.sampling.top_k, 'top_p': self.sampling.top_p,
                 'resolution': self.resolution}

  def codes(self, image: np.ndarray) -> np.ndarray:
    pixels = preprocess(image, self.resolution)[None]
    return np.asarray(self._encode(self.vq_params, pixels))[0].reshape(-1)

  def __call__(self, item) -> Prediction:
    """One item (batch 1: what bench/bench_best_of_k.py times)."""
    out = self._predict([item], 1, self.verifier)[0]
    if isinstance(out, Exception):
      raise out
    return out

  def predict_many(self, items) -> list:
    """Up to `batch_size` items in one sampler call, one verifier pass and one VQGAN decode (each
    padded to batch_size items, so every call runs the same compiled programs); per item a
    Prediction, or the UserError that item failed with (an unreadable source image). Item i draws
    its candidates with fold_in(key, item.index), as a call on that item alone does."""
    if self._batch_verifier is None:
      self._batch_verifier = self._make_verifier(self.batch_size * self.num_candidates)
    out = []
    for start in range(0, len(items), self.batch_size):
      out += self._predict(items[start:start + self.batch_size], self.batch_size,
                           self._batch_verifier)
    return out

  def _make_verifier(self, rows: int) -> Verifier:
    return Verifier(self.idp.module, self.idp.params, self.idp.vocab, self.rank_by,
                    max(1, min(self.verifier_batch, rows)), (_round8(2 * self.n + 6 +
                                                                 self.max_action_tokens),),
                    min_window=self.max_action_tokens + 1)

  def _predict(self, items, pad_to: int, verifier: Verifier) -> list:
    k = self.num_candidates
    results: list = [None] * len(items)
    pixels, actions, keys, rows = [], [], [], []
    for i, item in enumerate(items):
      try:
        pixels.append(preprocess(load_rgb(item.input_path), self.resolution))
      except UserError as e:
        results[i] = e
        continue
      action, _ = sequences.action_ids_of({'action': item.instruction}, self.fdp.vocab,
                                          self.max_action_tokens)
      actions.append(action)
      keys.append(candidate_keys(jax.random.fold_in(self.key, int(item.index)), 1, k))
      rows.append(i)
    if not rows:
      return results
    m = len(rows)
    # One compiled shape per pad_to: padded rows repeat the last item and are dropped.
    src = np.asarray(self._encode(self.vq_params, pad_rows(np.stack(pixels), pad_to)))
    src = src.reshape(pad_to, -1)
    actions = pad_rows(actions, pad_to)
    row_keys = np.concatenate(pad_rows(keys, pad_to))
    out = self.sampler.sample_frames(self.fdp.params, list(src), actions, None, k, self.sampling,
                                     self.guidance, row_keys=row_keys)
    candidates = np.asarray(out.codes).reshape(pad_to, k, -1)
    summed, mean = verifier.score_items(list(src), candidates, actions)
    ranking = mean if verifier.rank_by == 'mean' else summed
    grids = candidates.reshape(pad_to * k, *self.grid)
    frames = postprocess(jax.device_get(self._decode(self.vq_params, grids)))
    frames = np.asarray(frames).reshape(pad_to, k, *np.shape(frames)[1:])
    for j, i in enumerate(rows[:m]):
      results[i] = Prediction(candidates=list(frames[j]),
                              verifier_scores=[float(x) for x in ranking[j]],
                              chosen=best_of_first_k(ranking[j], k))
    return results


@registry.register('predictor', 'fdp')
def fdp_factory(config):
  return FDPPredictor(config)


# --- IDP: action text for each (source, target) pair ----------------------------------------------


class IDPEvaluator:
  """Greedy IDP action text per (source, target) pair of AURORA-BENCH (the paper's Table 1)."""

  def __init__(self, config):
    e = config.eval
    path = e.idp_checkpoint or e.fdp_checkpoint
    require(bool(path), 'No IDP checkpoint given; pass --config.eval.idp_checkpoint=DIR.')
    require(bool(config.checkpoint.vqgan_dir),
            'No VQGAN given; pass --config.checkpoint.vqgan_dir=DIR (Flax VQGAN params).')
    self.idp = load_model(config, path, 'idp')
    _load_vqgan(self, config, self.idp)
    n = int(np.prod(self._encode(self.vq_params, np.zeros(
        (1, self.resolution, self.resolution, 3), np.float32)).shape[1:]))
    self.max_new_tokens = int(config.sampler.max_action_tokens) + 1
    prompt = _round8(2 * n + 5)
    self.sampler = Sampler(self.idp.module, self.idp.vocab, prompt + self.max_new_tokens + 8,
                           (prompt,))
    self.batch_size = max(1, int(e.batch_size))

  def codes(self, image: np.ndarray) -> np.ndarray:
    pixels = preprocess(image, self.resolution)[None]
    return np.asarray(self._encode(self.vq_params, pixels))[0].reshape(-1)

  def texts(self, pairs) -> list[str]:
    """[(src_codes, tgt_codes)] -> greedy action texts: the bootstrap labeller's decoding
    (method/bootstrap.label_pairs; batches of one compiled shape)."""
    labels = label_pairs(self.sampler, self.idp.params, pairs, jax.random.PRNGKey(0),
                         self.max_new_tokens, SamplingParams(greedy=True), self.batch_size,
                         class_key='none')
    return [lab.text for lab in labels]


def _text_summary(records, bertscore_dir: str) -> tuple[dict, list[str]]:
  tasks: dict[str, list[dict]] = {}
  for r in records:
    tasks.setdefault(r['task'], []).append(r)
  out, notes = {}, []
  for task, recs in list(tasks.items()) + [('all', list(records))]:
    if not recs:
      continue
    m = text_metrics.text_metrics([r['prediction'] for r in recs],
                                  [r['instruction'] for r in recs], bertscore_dir or None)
    notes += [n for n in m.pop('notes') if n not in notes]
    out[task] = m
  return out, notes


@registry.register('benchmark', 'aurora_bench_idp')
def run_idp(config, workdir: str) -> dict:
  """`eval.task=idp`: greedy action text per (source, target) pair; BLEU, ROUGE-1, ROUGE-L and
  BERTScore (eval.bertscore_dir; skipped with a note when empty) per task and `all`. Writes
  items.jsonl (one record per item, with `prediction`; resumable, bad items recorded as failed),
  metrics.json and report.html in the workdir."""

  e = config.eval
  require(bool(e.bench_root), 'No AURORA-BENCH root given; pass --config.bench_root=DIR.')
  items, load_report = load_aurora_bench(e.bench_root)
  notes = [f'{n} bench entries skipped while loading: {reason}.'
           for reason, n in sorted(load_report.skipped.items())]
  if e.max_items > 0:
    items = items[:e.max_items]
    notes.append(f'Only the first {e.max_items} bench entries were used (eval.max_items).')
  items = [it for it in items if it.output_path is not None and os.path.isfile(it.output_path)]
  evaluator = IDPEvaluator(config)
  os.makedirs(workdir, exist_ok=True)
  items_path = os.path.join(workdir, aurora.ITEMS_FILE)
  stored = aurora.read_records(items_path)
  records = {i: r for i, r in stored.items() if r.get('prediction') is not None}
  todo = [it for it in items if it.index not in records]
  bar = tqdm.tqdm(total=len(todo), desc='aurora_bench idp', unit='item', disable=not e.progress)
  for start in range(0, len(todo), evaluator.batch_size):
    chunk, pairs = [], []
    for it in todo[start:start + evaluator.batch_size]:
      base = {'index': it.index, 'id': it.id, 'task': it.task, 'instruction': it.instruction,
              'input_path': it.input_path, 'output_path': it.output_path}
      try:
        pairs.append((evaluator.codes(load_rgb(it.input_path)),
                      evaluator.codes(load_rgb(it.output_path))))
        chunk.append(base)
      except (UserError, ValueError) as err:
        failed = dict(base, failed=aurora.FAILURE_UNREADABLE, error=str(err))
        aurora._append_record(items_path, failed)  # pylint: disable=protected-access
        records[it.index] = failed
    for base, text in zip(chunk, evaluator.texts(pairs) if pairs else []):
      record = dict(base, prediction=text)
      aurora._append_record(items_path, record)  # pylint: disable=protected-access
      records[base['index']] = record
    bar.update(len(todo[start:start + evaluator.batch_size]))
  bar.close()
  ordered = [records[it.index] for it in items if it.index in records]
  scored = [r for r in ordered if not r.get('failed')]
  failures: dict[str, int] = {}
  for r in ordered:
    if r.get('failed'):
      failures[r['failed']] = failures.get(r['failed'], 0) + 1
  metrics, text_notes = _text_summary(scored, e.bertscore_dir) if scored else ({}, [])
  notes += text_notes
  if failures:
    notes.append(f'Incomplete run: {sum(failures.values())} items failed; see `failed` in '
                 'items.jsonl. A rerun tries them again.')
  metrics['run'] = {'model': 'idp', 'task': 'idp', 'idp_checkpoint': evaluator.idp.path,
                    'decoding': 'greedy', 'failures': failures,
                    'num_failed': sum(failures.values()), 'complete': not failures}
  metrics['notes'] = notes
  write_json(os.path.join(workdir, aurora.METRICS_FILE), metrics)
  rows = [{'task': t, **m} for t, m in metrics.items() if t not in aurora.NON_TASK_KEYS]
  shown: dict[str, int] = {}
  report_items = []
  for r in scored:
    if e.report_items_per_task >= 0 and shown.get(r['task'], 0) >= e.report_items_per_task:
      continue
    shown[r['task']] = shown.get(r['task'], 0) + 1
    report_items.append(ReportItem(
        title=f'{r["task"]} #{r["index"]}', action=r['instruction'], src_frame=r['input_path'],
        tgt_frame=r['output_path'], fields={'reference': r['instruction'],
                                            'predicted action': r['prediction']}))
  write_html_report(os.path.join(workdir, aurora.REPORT_FILE), 'AURORA-BENCH: IDP action text',
                    {'IDP (Table 1)': rows}, report_items, notes=notes)
  return metrics
