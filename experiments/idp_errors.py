"""Where a trained IDP goes wrong, by true action type: right, right type with wrong details, or
named as another type (with a few examples of each type's misses).

  python experiments/idp_errors.py SEED_DIR [--split unlabelled] [--items 1000] [--stage S]
  python experiments/idp_errors.py SEED_DIR --difference   # what the base itself reads

SEED_DIR is one seed's folder of a reproduction (it has train_dynamics/ and tokenize/). The
default split is `unlabelled`, scored against its withheld actions: the bootstrap's own training
data, never a reported item, so reading it to decide what to try next does not tune on `test`.
`--split validation` reads the validation split.

`--difference` asks the pretrained base instead (SEED_DIR/pretrain/params, before any action):
given the same two frames it writes a `difference` document (data/action_world/pretrain.py: the
objects only the first frame has, "to", those only the second has, with their cells), and this
prints how often that text is exactly the true difference, and each of its two halves, by action
type. It tells whether the base can already say what changed, and where, for an action's frames.
"""
import argparse
import collections
import json
import os
import sys

import ml_collections
import numpy as np

from data.action_world.actions import parse_action, parse_canonical, score_action_text
from data.action_world.pretrain import difference
from data.records import RecordSource
from jax_vlm.core.errors import UserError
from jax_vlm.evaluation import world as world_eval
from jax_vlm.input.datasets import resolve_paths
from jax_vlm.training import checkpointing

DIFFERENCE_TOKENS = 48  # a swap's difference names four objects with their cells (~38 words)


def _text(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def load(seed_dir: str, split: str, items: int, stage: str):
  config_path = os.path.join(seed_dir, stage, 'config.json')
  if not os.path.isfile(config_path):
    raise UserError(f'{config_path} does not exist; give a seed folder whose {stage} stage ran.')
  with open(config_path) as f:
    config = resolve_paths(ml_collections.ConfigDict(json.load(f)), seed_dir)
  models = world_eval.WorldModels(config)
  params = checkpointing.load_params(os.path.join(seed_dir, stage, 'params'))
  rows = world_eval.load_items(config, seed_dir, split, items)
  if split == 'unlabelled':  # the actions are withheld in the records' hidden_* fields
    source = RecordSource.from_prefix(os.path.join(config.data.dir, split))
    for i, it in enumerate(rows):
      rec = source[i]
      it['canonical'] = _text(rec['hidden_canonical'])
      it['action_type'] = _text(rec['hidden_action_type'])
  return models, params, rows


def error_table(models, params, items, batch_size: int = 64) -> dict:
  """{true type: {'n', 'ok', 'same_type', 'as_<type>'..., 'examples'}} (shares of n)."""
  texts = models.greedy_actions(params, items, batch_size)
  counts = collections.defaultdict(collections.Counter)
  examples = collections.defaultdict(list)
  for it, text in zip(items, texts):
    s = score_action_text(it['src_scene'], text, it['tgt_scene'], models.world)
    true_type = it['action_type']
    predicted = parse_action(text, models.world)
    p_type = parse_canonical(predicted).type if predicted else 'unparsed'
    outcome = 'ok' if s['effect_match'] else ('same_type' if p_type == true_type
                                                 else f'as_{p_type}')
    counts[true_type]['n'] += 1
    counts[true_type][outcome] += 1
    if outcome != 'ok' and len(examples[true_type]) < 4:
      shown = predicted if predicted else repr(text)  # canonical, or the unparsed words
      examples[true_type].append(f'{it["canonical"]} -> {shown}')
  out = {}
  for t, c in sorted(counts.items()):
    n = c.pop('n')
    out[t] = dict(n=n, **{k: round(v / n, 3) for k, v in sorted(c.items())},
                  examples=examples[t])
  return out


def _halves(text: str) -> tuple[list[str], list[str]]:
  words = text.split()
  cut = words.index('to') if 'to' in words else len(words)
  return words[:cut], words[cut + 1:]


def difference_table(texts, items) -> dict:
  """{true type: {'n', 'whole', 'first_frame_only', 'second_frame_only'}}: shares of the base's
  difference texts that equal the true difference, and its part before / after "to"."""
  rows = collections.defaultdict(list)
  for it, text in zip(items, texts):
    true = difference(it['src_scene'], it['tgt_scene'])
    (a, b), (ta, tb) = _halves(text), _halves(true)
    rows[it['action_type']].append((text.split() == true.split(), a == ta, b == tb))
  return {t: dict(n=len(r), **{k: round(float(v), 3) for k, v in zip(
      ('whole', 'first_frame_only', 'second_frame_only'), np.mean(r, axis=0))})
          for t, r in sorted(rows.items())}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('seed_dir')
  p.add_argument('--split', default='unlabelled')
  p.add_argument('--items', type=int, default=1000, help='items scored (0 = all)')
  p.add_argument('--stage', default='train_dynamics', help='the stage whose params are the IDP')
  p.add_argument('--difference', action='store_true',
                 help="read the base's own difference text (pretrain params) instead")
  args = p.parse_args(argv)
  try:
    models, params, items = load(args.seed_dir, args.split, args.items, args.stage)
    if args.difference:
      base = os.path.join(args.seed_dir, 'pretrain', 'params')
      if not os.path.isdir(base):
        raise UserError(f'{base} does not exist; give a seed folder whose pretrain stage ran.')
      params = checkpointing.load_params(base)
  except UserError as e:
    sys.exit(f'idp_errors: {e}')
  if args.difference:
    texts = models.greedy_actions(params, items, 64, max_new_tokens=DIFFERENCE_TOKENS)
    table = difference_table(texts, items)
    print(f'{args.seed_dir} (pretrain: the base), {len(items)} {args.split} items: its difference '
          'text equals the true one (whole / the first frame\'s objects / the second\'s):')
    for t, row in table.items():
      print(f'  {t} ({row["n"]}): {row["whole"]:.2f} / {row["first_frame_only"]:.2f} / '
            f'{row["second_frame_only"]:.2f}')
    return 0
  table = error_table(models, params, items)
  right = sum(row['n'] * row.get('ok', 0.0) for row in table.values()) / max(len(items), 1)
  print(f'{args.seed_dir} ({args.stage}), {len(items)} {args.split} items: effect match '
        f'{right:.3f}; by true action type:')
  for t, row in table.items():
    shares = ', '.join(f'{k} {v:.2f}' for k, v in row.items() if k not in ('n', 'examples'))
    print(f'  {t} ({row["n"]}): {shares}')
    for e in row['examples']:
      print(f'      {e}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
