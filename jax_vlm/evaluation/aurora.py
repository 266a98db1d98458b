"""AURORA-BENCH evaluation: predict the next frame for each item, score it, summarise per task.

A predictor is any callable `item -> frame` (`uint8 [h, w, 3]`) or `item -> Prediction` (K
candidate frames, their verifier scores and the chosen index); `copy` (the source frame as the
prediction) is built in, others register with `registry.register('predictor', NAME)`. A
predictor may also offer `predict_many(items)` (one answer or exception per item) and `batch_size`:
items that need a prediction then go to it `batch_size` at a time (the FDP predictor samples them
in one call). Items
that list no target (clevr, emu, epic) are not scored; items whose target file is missing are
counted and left out, as in the paper (248 of the benchmark's 250 target-bearing items).

Outputs under the workdir:
  items.jsonl     one JSON record per item, appended as items finish; a rerun skips items already
                  there and only fills in what is missing (a metric newly enabled, a judge
                  verdict after an outage), so a crash or a judge outage loses nothing
  predictions/    the predicted frames (and candidates) as PNG, reused by reruns and the report
  metrics.json    per task and `all`, in the schema of the paper's released outputs: L1, CLIP_I,
                  CLIP_T, DINO, #sample, GPT4o, GPT4o_all_predictions, #gpt4o_valid (plus
                  #gpt4o_invalid, #missing_target) and `notes` on what was skipped
  report.html     metric table and a sample of items with their frames

A bad item (an unreadable source or target image, a prediction that fails with a UserError or a
malformed output) is recorded as failed, with `failed` (the reason) and `error` (the sentence), and
the run goes on; a rerun tries failed items again. metrics.json's `run` entry says which model and
K / selection rule produced the numbers, counts failures per reason and whether the run is
`complete`; a note says so too. A judge outage still stops the run (items scored so far are kept).
"""

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import tqdm

from data.aurora import load_aurora_bench
from data.images import encode_png, load_rgb
from jax_vlm.core import registry
from jax_vlm.core.errors import UserError, require
from jax_vlm.core.files import write_json
from jax_vlm.evaluation.judge import JudgeClient
from jax_vlm.evaluation.metrics.image_metrics import ClipScorer, DinoScorer, l1_distance
from jax_vlm.evaluation.report import ReportItem, write_html_report

ITEMS_FILE = 'items.jsonl'
METRICS_FILE = 'metrics.json'
REPORT_FILE = 'report.html'
PREDICTIONS_DIR = 'predictions'
RUN_INFO_FILE = 'run_info.json'

IMAGE_METRICS = ('L1', 'CLIP_I', 'CLIP_T', 'DINO')


@dataclasses.dataclass
class Prediction:
  """A predictor's answer for one item.

  frame: the predicted next frame, `uint8 [h, w, 3]` (default: `candidates[chosen]`).
  candidates: K sampled frames, each `uint8 [h, w, 3]` (empty for a single prediction).
  verifier_scores: `[K]` the verifier's score of each candidate (e.g. IDP log p(action | ...)).
  chosen: index of the chosen candidate.
  """
  frame: np.ndarray | None = None
  candidates: Sequence[np.ndarray] = ()
  verifier_scores: Sequence[float] = ()
  chosen: int | None = None


Predictor = Callable[[Any], Union[np.ndarray, Prediction, Mapping[str, Any]]]


def _check_frame(frame, what: str) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'{what} must be uint8 [h, w, 3], got shape {frame.shape}.')
  if frame.dtype != np.uint8:
    if np.issubdtype(frame.dtype, np.floating) or frame.min() < 0 or frame.max() > 255:
      raise ValueError(f'{what} must be uint8 [h, w, 3] in 0..255, got dtype {frame.dtype}.')
    frame = frame.astype(np.uint8)
  return frame


def as_prediction(output) -> Prediction:
  """Normalises what a predictor returns: an array, a `Prediction` or a mapping of its fields."""
  if isinstance(output, Mapping):
    output = Prediction(**output)
  elif not isinstance(output, Prediction):
    output = Prediction(frame=output)
  candidates = [_check_frame(c, f'candidate {k}') for k, c in enumerate(output.candidates)]
  scores = [float(s) for s in output.verifier_scores]
  chosen = output.chosen
  if candidates:
    if len(scores) != len(candidates):
      raise ValueError(f'{len(candidates)} candidates but {len(scores)} verifier scores.')
    if chosen is None or not 0 <= int(chosen) < len(candidates):
      raise ValueError(f'chosen={chosen} is not a candidate index (0..{len(candidates) - 1}).')
    chosen = int(chosen)
  frame = output.frame if output.frame is not None else (candidates[chosen] if candidates else None)
  if frame is None:
    raise ValueError('The prediction has neither a frame nor candidates.')
  return Prediction(_check_frame(frame, 'prediction'), candidates, scores, chosen)


def copy_predictor(item) -> np.ndarray:
  """The copy baseline: the source frame, unchanged, as the predicted next frame."""
  return load_rgb(item.input_path)


@registry.register('predictor', 'copy')
def copy_factory(config) -> Predictor:
  del config
  return copy_predictor


def make_predictor(name: str, config) -> Predictor:
  """The predictor `config.eval.model=name` names, built by its registered factory(config)."""
  names = registry.names('predictor')
  require(name in names, f'Unknown eval.model {name!r}; use one of {names}.')
  return registry.get('predictor', name)(config)


@dataclasses.dataclass
class Scorers:
  """The optional scorers; None means the metric is skipped (and a note says so)."""
  clip: ClipScorer | None = None
  dino: DinoScorer | None = None
  judge: JudgeClient | None = None
  rejudge_invalid: bool = False  # on a rerun, ask again about items the judge failed on


# --- per-item records -----------------------------------------------------------------------------


def read_records(path: str) -> dict[int, dict]:
  """Last record per item index from a JSON-lines file; a torn last line (a crash) is ignored."""
  records = {}
  if not os.path.exists(path):
    return records
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
        records[int(record['index'])] = record
      except (ValueError, KeyError, TypeError):
        logging.warning('Ignoring unreadable line %d of %s (an interrupted write).', n, path)
  return records


def _append_record(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _matches(record: dict | None, item) -> bool:
  return (record is not None and record.get('task') == item.task
          and record.get('id') == item.id and record.get('input_path') == item.input_path)


def _needed(record: dict | None, scorers: Scorers) -> set[str]:
  if record is None:
    record = {}
  needed = set()
  if record.get('L1') is None:
    needed.add('L1')
  if scorers.clip is not None and (record.get('CLIP_I') is None or record.get('CLIP_T') is None):
    needed.add('CLIP')
  if scorers.dino is not None and record.get('DINO') is None:
    needed.add('DINO')
  if scorers.judge is not None:
    verdict = record.get('judge')
    if verdict is None or (scorers.rejudge_invalid and not verdict.get('valid')):
      needed.add('judge')
  return needed


class _Lookahead:
  """`item -> prediction` over a predictor; one with `predict_many(items)` (and `batch_size`) is
  called on the next `batch_size` items of `todo` (in order, those that need a fresh prediction)
  at once, its answers kept until their items come up. An answer that is an exception is raised
  for its item only."""

  def __init__(self, predictor: Predictor, todo: Sequence[Any]):
    self.predictor = predictor
    self.many = getattr(predictor, 'predict_many', None)
    self.size = max(1, int(getattr(predictor, 'batch_size', 1) or 1))
    self.todo = list(todo)
    self.position = {it.index: i for i, it in enumerate(self.todo)}
    self.ready: dict[int, Any] = {}

  def __call__(self, item):
    if self.many is None or item.index not in self.position:
      return self.predictor(item)
    if item.index not in self.ready:
      start = self.position[item.index]
      chunk = [it for it in self.todo[start:start + self.size] if it.index not in self.ready]
      self.ready.update(zip((it.index for it in chunk), self.many(chunk)))
    out = self.ready.pop(item.index)
    if isinstance(out, Exception):
      raise out
    return out


def _save_png(path: str, image: np.ndarray) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(encode_png(image))
  os.replace(tmp, path)


def _prediction_for(item, record: dict, predictor: Predictor, workdir: str,
                    save_predictions: bool) -> np.ndarray:
  """The saved prediction when there is one (reruns), else a fresh one (saved when asked)."""
  saved = record.get('prediction_path')
  if saved and os.path.isfile(os.path.join(workdir, saved)):
    return load_rgb(os.path.join(workdir, saved))
  prediction = as_prediction(predictor(item))
  record['chosen'] = prediction.chosen
  record['verifier_scores'] = list(prediction.verifier_scores)
  record['prediction_path'] = None
  record['candidate_paths'] = []
  if save_predictions:
    folder = os.path.join(workdir, PREDICTIONS_DIR)
    os.makedirs(folder, exist_ok=True)
    name = f'{item.index:05d}'
    record['prediction_path'] = os.path.join(PREDICTIONS_DIR, f'{name}.png')
    _save_png(os.path.join(workdir, record['prediction_path']), prediction.frame)
    for k, candidate in enumerate(prediction.candidates):
      rel = os.path.join(PREDICTIONS_DIR, f'{name}_cand{k}.png')
      _save_png(os.path.join(workdir, rel), candidate)
      record['candidate_paths'].append(rel)
  return prediction.frame


# --- summaries ------------------------------------------------------------------------------------


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def summarize(records: Sequence[dict], missing_targets: Mapping[str, int] | None = None,
              judged: bool = True) -> dict:
  """Per-task and `all` metrics from item records (each with `task`, metric values, `judge`).

  Per task: metric means over its items; `GPT4o` is the mean of min(success, minimal) over items
  the judge scored (`#gpt4o_valid`), invalid verdicts are counted in `#gpt4o_invalid`.
  `all`: image metrics are #sample-weighted means of the task means; `GPT4o` is the mean over all
  valid verdicts (how the paper's released `all` numbers are computed).
  """
  missing_targets = dict(missing_targets or {})
  tasks: dict[str, list[dict]] = {}
  for record in records:
    tasks.setdefault(record['task'], []).append(record)
  for task in missing_targets:
    tasks.setdefault(task, [])
  out = {}
  for task, recs in tasks.items():
    verdicts = [r.get('judge') for r in recs if r.get('judge') is not None]
    valid = [v for v in verdicts if v.get('valid')]
    entry = {name: _mean(r.get(name) for r in recs) for name in IMAGE_METRICS}
    entry['#sample'] = len(recs)
    entry['GPT4o'] = _mean(v['final_score'] for v in valid) if judged else None
    entry['GPT4o_all_predictions'] = [
        {'final_score': v['final_score'], 'response': v['response']} for v in valid]
    entry['#gpt4o_valid'] = len(valid)
    entry['#gpt4o_invalid'] = len(verdicts) - len(valid)
    entry['#missing_target'] = missing_targets.get(task, 0)
    out[task] = entry
  total = sum(e['#sample'] for e in out.values())
  overall = {}
  for name in IMAGE_METRICS:
    weighted = [(e[name], e['#sample']) for e in out.values() if e[name] is not None]
    weight = sum(n for _, n in weighted)
    overall[name] = float(sum(m * n for m, n in weighted) / weight) if weight else None
  overall['#sample'] = total
  all_valid = [p['final_score'] for e in out.values() for p in e['GPT4o_all_predictions']]
  overall['GPT4o'] = _mean(all_valid) if judged else None
  overall['#gpt4o_valid'] = len(all_valid)
  overall['#gpt4o_invalid'] = sum(e['#gpt4o_invalid'] for e in out.values())
  overall['#missing_target'] = sum(missing_targets.values())
  out['all'] = overall
  return out


def _count(things, one: str, many: str) -> str:
  return f'{len(things)} {one if len(things) == 1 else many}'


def _report_items(records: Sequence[dict], workdir: str, per_task: int) -> list[ReportItem]:
  shown: dict[str, int] = {}
  items = []
  for r in records:
    if per_task >= 0 and shown.get(r['task'], 0) >= per_task:
      continue
    shown[r['task']] = shown.get(r['task'], 0) + 1
    verdict = r.get('judge') or {}
    fields = {name: r.get(name) for name in IMAGE_METRICS if r.get(name) is not None}
    if verdict:
      fields['GPT4o'] = verdict.get('final_score') if verdict.get('valid') else 'invalid'
      fields['judge reply'] = verdict.get('response') or verdict.get('error')
    at = lambda rel: os.path.join(workdir, rel) if rel else None
    items.append(ReportItem(
        title=f'{r["task"]} #{r["index"]}' + (f' (id {r["id"]})' if r.get('id') else ''),
        action=r.get('instruction', ''), src_frame=r['input_path'], tgt_frame=r['output_path'],
        prediction=at(r.get('prediction_path')),
        candidates=[at(p) for p in r.get('candidate_paths') or []],
        verifier_scores=r.get('verifier_scores') or [], chosen=r.get('chosen'), fields=fields))
  return items


FAILURE_UNREADABLE = 'unreadable image'
FAILURE_PREDICTION = 'prediction failed'
NON_TASK_KEYS = ('notes', 'run')


def _finish(workdir: str, records: list[dict], missing: Mapping[str, int], notes: list[str],
            scorers: Scorers, title: str, report_items_per_task: int,
            run_info: Mapping[str, Any] | None = None) -> dict:
  failed = [r for r in records if r.get('failed')]
  scored = [r for r in records if not r.get('failed')]
  metrics = summarize(scored, missing, judged=scorers.judge is not None)
  failures: dict[str, int] = {}
  for r in failed:
    failures[r['failed']] = failures.get(r['failed'], 0) + 1
  notes = list(notes)
  if failed:
    notes.append(f'Incomplete run: {_count(failed, "item", "items")} failed ('
                 + ', '.join(f'{n} {reason}' for reason, n in sorted(failures.items()))
                 + '); see `failed`/`error` in items.jsonl. A rerun tries them again.')
  metrics['run'] = dict(run_info or {}, failures=failures, num_failed=len(failed),
                        complete=not failed)
  metrics['notes'] = notes
  write_json(os.path.join(workdir, METRICS_FILE), metrics)
  rows = [{'task': task, **{k: v for k, v in entry.items() if k != 'GPT4o_all_predictions'}}
          for task, entry in metrics.items() if task not in NON_TASK_KEYS]
  records = scored
  write_html_report(os.path.join(workdir, REPORT_FILE), title, {'AURORA-BENCH': rows},
                    _report_items(records, workdir, report_items_per_task), notes=notes)
  return metrics


# --- the loop -------------------------------------------------------------------------------------


def evaluate_aurora_bench(items: Sequence[Any], predictor: Predictor, workdir: str,
                          scorers: Scorers | None = None, *, model_name: str = '',
                          save_predictions: bool = True, notes: Sequence[str] = (),
                          report_items_per_task: int = 8, progress: bool = True,
                          run_info: Mapping[str, Any] | None = None) -> dict:
  """Scores `predictor` on AURORA-BENCH items and writes items.jsonl, metrics.json, report.html.

  Args:
    items: bench items with `index`, `task`, `instruction`, `input_path`, `output_path` (or None),
      `id` (as `data.aurora.load_aurora_bench` returns them).
    predictor: `item -> frame uint8 [h, w, 3] | Prediction | mapping of Prediction fields`.
    workdir: output folder; results already there for the same model are kept and reused.
    scorers: CLIP / DINO / judge; None or a None field skips that metric with a note.
    model_name: recorded in run_info.json; a workdir of another model is refused.
    save_predictions: write predicted frames (and candidates) as PNG under predictions/; without
      them a rerun that fills in a metric has to predict again (a sampler may then differ).
    notes: extra sentences for metrics.json and the report.
    report_items_per_task: items per task shown in the report (-1: all).
    progress: show a tqdm progress bar.
    run_info: recorded in metrics.json's `run` entry (e.g. num_candidates and the selection rule;
      default: the predictor's `info` attribute when it has one).

  Returns:
    The metrics dict written to metrics.json.

  Raises:
    UserError: an unreachable judge; items scored before it are kept. Bad items do not raise:
      they are recorded as failed and counted in metrics.json's `run` entry.
  """
  scorers = scorers or Scorers()
  run_info = dict(model=model_name, **(run_info if run_info is not None
                                       else getattr(predictor, 'info', None) or {}))
  os.makedirs(workdir, exist_ok=True)
  info_path = os.path.join(workdir, RUN_INFO_FILE)
  if os.path.exists(info_path):
    with open(info_path) as f:
      previous = json.load(f).get('model', '')
    require(previous == model_name,
            f'Workdir {workdir} holds results of model {previous!r}, not {model_name!r}; use '
            'another --workdir for this model.')
  else:
    write_json(info_path, {'model': model_name})

  notes = list(notes)
  if scorers.clip is None:
    notes.append('CLIP_I and CLIP_T skipped: no CLIP model directory given (eval.clip_dir).')
  if scorers.dino is None:
    notes.append('DINO skipped: no DINO model directory given (eval.dino_dir).')
  if scorers.judge is None:
    notes.append('GPT4o skipped: the judge is off (eval.judge.enabled=False).')
  no_target = [it for it in items if it.output_path is None]
  listed = [it for it in items if it.output_path is not None]
  missing_items = [it for it in listed if not os.path.isfile(it.output_path)]
  scorable = [it for it in listed if os.path.isfile(it.output_path)]
  missing: dict[str, int] = {}
  for it in missing_items:
    missing[it.task] = missing.get(it.task, 0) + 1
  if no_target:
    notes.append(f'{_count(no_target, "item lists", "items list")} no target frame (tasks '
                 f'{", ".join(sorted({it.task for it in no_target}))}) and not scored.')
  if missing_items:
    notes.append(f'{_count(missing_items, "item lists", "items list")} a target file that does '
                 'not exist, left out: ' + ', '.join(it.output_path for it in missing_items) + '.')
  for note in notes:
    logging.info('%s', note)

  items_path = os.path.join(workdir, ITEMS_FILE)
  stored = read_records(items_path)
  records = {it.index: stored[it.index] for it in scorable if _matches(stored.get(it.index), it)}
  logging.info('AURORA-BENCH: %d items to score, %d already scored in %s.', len(scorable),
               sum(not _needed(r, scorers) for r in records.values()), items_path)

  def finish():
    ordered = [records[it.index] for it in scorable if it.index in records]
    return _finish(workdir, ordered, missing, notes, scorers,
                   f'AURORA-BENCH: {model_name or "predictions"}', report_items_per_task,
                   run_info)

  newly_invalid = 0
  # Items wait here for their judge verdicts, so up to `judge.max_in_flight` requests run at once.
  pending: list[tuple[Any, dict, np.ndarray, np.ndarray]] = []

  def flush_judged():
    nonlocal newly_invalid
    if not pending:
      return
    try:
      asks = [(it.instruction, src, pred) for it, _, src, pred in pending]
      judge_many = getattr(scorers.judge, 'judge_many', None)  # a custom judge may lack it
      verdicts = (judge_many(asks) if judge_many is not None
                  else [scorers.judge.judge(*ask) for ask in asks])
    except UserError:  # unreachable or rejected: keep what these items have, stop cleanly
      for it, rec, _, _ in pending:
        _append_record(items_path, rec)
        records[it.index] = rec
      pending.clear()
      finish()
      raise
    for (it, rec, _, _), verdict in zip(pending, verdicts):
      rec['judge'] = verdict.to_json()
      if not verdict.valid:
        newly_invalid += 1
        logging.warning('Judge gave no usable score for item %d after %d attempts (%s); counted '
                        'as invalid.', it.index, verdict.attempts, verdict.error)
      _append_record(items_path, rec)
      records[it.index] = rec
    pending.clear()

  in_flight = max(1, int(getattr(scorers.judge, 'max_in_flight', 1) or 1))

  def has_saved_prediction(record):
    saved = (record or {}).get('prediction_path')
    return bool(saved) and os.path.isfile(os.path.join(workdir, saved))

  predict = _Lookahead(predictor, [
      it for it in scorable if _needed(records.get(it.index), scorers)
      and not has_saved_prediction(records.get(it.index))])
  bar = tqdm.tqdm(scorable, desc='aurora_bench', unit='item', disable=not progress)
  for item in bar:
    record = records.get(item.index)
    needed = _needed(record, scorers)
    if not needed:
      continue
    record = {k: v for k, v in (record or {
        'index': item.index, 'id': item.id, 'task': item.task, 'instruction': item.instruction,
        'input_path': item.input_path, 'output_path': item.output_path}).items()
              if k not in ('failed', 'error')}
    reason = FAILURE_UNREADABLE
    try:
      src_frame = load_rgb(item.input_path)
      tgt_frame = load_rgb(item.output_path)
      reason = FAILURE_PREDICTION
      pred_frame = _prediction_for(item, record, predict, workdir, save_predictions)
    except (UserError, ValueError) as e:
      logging.warning('Item %d failed (%s): %s The run goes on.', item.index, reason, e)
      record.update(failed=reason, error=str(e))
      _append_record(items_path, record)
      records[item.index] = record
      continue
    # L1 at the source frame's resolution, as the paper computes it.
    size = (src_frame.shape[1], src_frame.shape[0])
    if 'L1' in needed:
      record['L1'] = l1_distance(pred_frame, tgt_frame, size)
    if 'CLIP' in needed:
      record.update(scorers.clip.scores(pred_frame, tgt_frame, item.instruction))
    if 'DINO' in needed:
      record.update(scorers.dino.scores(pred_frame, tgt_frame))
    if 'judge' in needed:
      pending.append((item, record, src_frame, pred_frame))
      if len(pending) >= in_flight:
        flush_judged()
      continue
    _append_record(items_path, record)
    records[item.index] = record
  flush_judged()
  bar.close()
  metrics = finish()
  if newly_invalid:
    logging.warning('%d judge verdicts were invalid (counted in #gpt4o_invalid).', newly_invalid)
  logging.info('Wrote %s, %s and %s.', os.path.join(workdir, METRICS_FILE), items_path,
               os.path.join(workdir, REPORT_FILE))
  return metrics


@registry.register('benchmark', 'aurora_bench')
def run(config, workdir: str) -> dict:
  """eval.py's entry for `config.eval.benchmark == 'aurora_bench'`."""
  eval_config = config.eval
  task = eval_config.get('task', 'fdp')
  require(task in ('fdp', 'idp'), f"eval.task={task!r} is unknown; use 'fdp' or 'idp'.")
  if task == 'idp':  # jax_vlm/evaluation/aurora_models.py
    return registry.get('benchmark', 'aurora_bench_idp')(config, workdir)
  require(bool(eval_config.bench_root),
          'No AURORA-BENCH root given; pass --config.bench_root=DIR (a McGill-NLP/AURORA checkout '
          'with test.json and data/).')
  items, load_report = load_aurora_bench(eval_config.bench_root)
  logging.info('%s', load_report.summary())
  notes = [f'{n} bench entries skipped while loading: {reason}.'
           for reason, n in sorted(load_report.skipped.items())]
  if eval_config.max_items > 0:
    items = items[:eval_config.max_items]
    notes.append(
        f'Only the first {eval_config.max_items} bench entries were used (eval.max_items).')
  predictor = make_predictor(eval_config.model, config)
  scorers = Scorers(
      clip=ClipScorer(eval_config.clip_dir) if eval_config.clip_dir else None,
      dino=DinoScorer(eval_config.dino_dir) if eval_config.dino_dir else None,
      judge=JudgeClient.from_config(eval_config.judge) if eval_config.judge.enabled else None,
      rejudge_invalid=eval_config.judge.rejudge_invalid)
  metrics = evaluate_aurora_bench(
      items, predictor, workdir, scorers, model_name=eval_config.model,
      save_predictions=eval_config.save_predictions, notes=notes,
      report_items_per_task=eval_config.report_items_per_task, progress=eval_config.progress)
  return metrics
