"""Probe harness: how fast IDP is learned on the action world, outside the pipeline.

  python experiments/idp_probe.py --pretrain_steps 800 --docs cap1,t2i,cap2,diff \
      --idp_steps 1000 --eval_every 500 --save /tmp/base.pkl
  python experiments/idp_probe.py --load /tmp/base.pkl --pretrain_steps 0 --idp_steps 1000

It runs on a development world (--world_seed 100 by default), never the reported items. Cell codes
are the world patch encoder's bijection (colour, shape) or empty -> 25 ids, so no VQGAN is trained.
Document kinds: cap1 (caption), t2i (text to image), cap2 (multi-image caption), copy (repeat), diff
(difference), and five diagnostic kinds that are not pipeline documents: dimg (two scenes, then the
image of the cells the second changed), count (two scenes, then how many cells differ: every B cell
gets a gradient through an attention that can stay uniform), same (a scene twice, or a scene and its
perturbed self: "the" if identical, else "a"), mark (the second scene's caption with "a" for objects
the first lacks, "the" for the rest) and run (a scene, then itself with 3 consecutive cells redrawn:
a change at B's cell i predicts one at i+1); the documents and the model are the pipeline's own
(data/action_world/pretrain.py, jax_vlm.models), the training loop is a plain optax loop with the
per-objective loss. FIRST_CHANGE (with `diff` among the kinds) tells whether the base finds which
cell changed at all: the first colour word of a difference document, by how many cells differ.
Diagnostics: --train_split unlabelled (IDP on the unlabelled pairs' oracle actions), --qk_norm 0,
--pos_codes 1|2 (image codes that also say their cell or row). It prints training metrics, greedy
effect match on the dev `test` and the teacher-forced accuracy per word category.
docs/reproduction.md lists the runs.
"""
import argparse
import collections
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data.action_world import (
  Scene,
  WorldConfig,
  build_splits,
  pretrain,
  random_scene,
  score_action_text,
  vocabulary_words,
)
from data.action_world.tokenizer import build_tokenizer
from data.action_world.world import all_keys
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM
from jax_vlm.training.train_step import cross_entropy

p = argparse.ArgumentParser()
p.add_argument('--pretrain_steps', type=int, default=0)
p.add_argument('--idp_steps', type=int, default=1000)
p.add_argument('--mix', type=float, default=0.0, help='share of pretraining docs in IDP batches')
p.add_argument('--docs', default='cap1,t2i,cap2')
p.add_argument('--lr', type=float, default=3e-3)
p.add_argument('--batch', type=int, default=32)
p.add_argument('--seed', type=int, default=0)
p.add_argument('--world_seed', type=int, default=100)
p.add_argument('--d_model', type=int, default=128)
p.add_argument('--layers', type=int, default=4)
p.add_argument('--eval_every', type=int, default=0)
p.add_argument('--eval_items', type=int, default=300)
p.add_argument('--num_labelled', type=int, default=2000)
p.add_argument('--save', default='')
p.add_argument('--fdp_share', type=float, default=0.0)
p.add_argument('--idp_weight', type=float, default=1.0,
               help='IDP\'s weight in the average of the objectives\' losses (others 1)')
p.add_argument('--load', default='')
p.add_argument('--pos_codes', type=int, default=0,
               help='diagnostic: 1 = one code per (cell, content), so a code says where it is; '
               '2 = one per (row, content): it says its row only')
p.add_argument('--b2', type=float, default=0.999,
               help="Adam's b2 (the pipeline's train.b2 is 0.95)")
p.add_argument('--pipeline_tasks', type=int, default=0,
               help='1: group the loss as the pipeline does: every text-output document one '
               'objective, every image-output one another (here each kind is its own)')
p.add_argument('--qk_norm', type=int, default=1)
p.add_argument('--rope_theta', type=float, default=10000.0)
p.add_argument('--train_split', default='labelled',
               help="'unlabelled': train IDP on the unlabelled pairs with their oracle actions")
args = p.parse_args()
print(vars(args), flush=True)

world = WorldConfig.preset('default', phrasings='plain')
t0 = time.time()
splits = build_splits(world, args.world_seed)
tok = build_tokenizer(vocabulary_words(world))
V_TEXT = tok.get_vocab_size()
KEYS = all_keys(world)
NUM_CODES = len(KEYS) + 1
POS_TAGS = {0: 1, 1: world.rows * world.cols, 2: world.rows}[args.pos_codes]
VOCAB = -(-(V_TEXT + NUM_CODES * POS_TAGS) // 16) * 16
BOS, EOS, BOI, EOI, PAD = (tok.token_to_id(t)
                           for t in ('<bos>', '<eos>', '<boi>', '<eoi>', '<pad>'))
L = 112
print('vocab', V_TEXT, VOCAB, 'build', round(time.time() - t0, 1), flush=True)


def codes(scene: Scene):
  c = np.full(world.rows * world.cols, len(KEYS), np.int32)
  for o in scene.objects:
    c[o.row * world.cols + o.col] = KEYS.index(o.key)
  if args.pos_codes:
    cell = np.arange(len(c))
    c = c + NUM_CODES * (cell if args.pos_codes == 1 else cell // world.cols)
  return list(V_TEXT + c)


def text(s):
  return tok.encode(s).ids


caption = pretrain.caption


def example(prompt, completion, task):
  ids = prompt + completion
  assert len(ids) <= L, len(ids)
  w = [0.0] * len(prompt) + [1.0] * len(completion)
  n = len(ids)
  return (ids + [PAD] * (L - n), w + [0.0] * (L - n), [1] * n + [0] * (L - n), task)


def idp_example(src, tgt, action):
  return example([BOS, BOI] + codes(src) + [EOI, BOI] + codes(tgt) + [EOI], text(action) + [EOS], 0)


def fdp_example(src, tgt, action):
  return example([BOS] + text(action) + [BOI] + codes(src) + [EOI, BOI], codes(tgt) + [EOI], 1)


def perturb(scene, rng):
  return pretrain.perturb(scene, rng, world)


diff_caption = pretrain.difference


def doc_example(kind, rng):
  a = random_scene(rng, world)
  if kind == 'cap1':
    return example([BOS, BOI] + codes(a) + [EOI], text(caption(a)) + [EOS], 2)
  if kind == 't2i':
    return example([BOS] + text(caption(a)) + [BOI], codes(a) + [EOI], 3)
  if kind == 'copy':
    return example([BOS, BOI] + codes(a) + [EOI, BOI], codes(a) + [EOI], 3)
  if kind == 'diff':
    b = perturb(a, rng)
    if rng.random() < 0.5:
      a, b = b, a
    return example([BOS, BOI] + codes(a) + [EOI, BOI] + codes(b) + [EOI],
                   text(diff_caption(a, b)) + [EOS], 4)
  if kind == 'dimg':  # two scenes, then the image of what the second has that the first lacks
    b = perturb(a, rng)
    if rng.random() < 0.5:
      a, b = b, a
    ca, cb = codes(a), codes(b)
    empty = V_TEXT + len(KEYS)
    cd = [y if x != y else empty for x, y in zip(ca, cb)]
    return example([BOS, BOI] + ca + [EOI, BOI] + cb + [EOI, BOI], cd + [EOI], 3)
  if kind == 'mark':  # two scenes, then the second's caption with 'a' for what the first lacks
    b = perturb(a, rng)
    if rng.random() < 0.5:
      a, b = b, a
    old = {(o.key, o.cell) for o in a.objects}
    words = ' '.join(f"{'the' if (o.key, o.cell) in old else 'a'} {o.color} {o.shape} at row "
                     f'{o.row + 1} column {o.col + 1}' for o in b.objects)
    return example([BOS, BOI] + codes(a) + [EOI, BOI] + codes(b) + [EOI], text(words) + [EOS], 4)
  if kind == 'count':  # two scenes, then how many cells differ (1-5, 5 = five or more)
    b = perturb(a, rng)
    if rng.random() < 0.5:
      a, b = b, a
    n = sum(x != y for x, y in zip(codes(a), codes(b)))
    return example([BOS, BOI] + codes(a) + [EOI, BOI] + codes(b) + [EOI], text(str(min(n, 5)))
                   + [EOS], 4)
  if kind == 'same':  # a scene twice or a scene and its perturbed self: 'the' if the same, else 'a'
    b = perturb(a, rng) if rng.random() < 0.5 else a
    return example([BOS, BOI] + codes(a) + [EOI, BOI] + codes(b) + [EOI],
                   text('the' if a == b else 'a') + [EOS], 4)
  if kind == 'run':  # a scene, then itself with a run of 3 cells (reading order) redrawn at random:
    # whether B's cell i changed predicts whether cell i+1 did, so predicting B's next token
    # rewards knowing, at B's own tokens, that a cell differs from A's
    ca = codes(a)
    cb = list(ca)
    while cb == ca:
      start = int(rng.integers(len(ca) - 2))
      for j in range(start, start + 3):
        cb[j] = V_TEXT + int(rng.integers(len(KEYS) + 1))
    return example([BOS, BOI] + ca + [EOI, BOI], cb + [EOI], 3)
  if kind == 'cap2':
    b = random_scene(rng, world)
    return example([BOS, BOI] + codes(b) + [EOI, BOI] + codes(a) + [EOI],
                   text(caption(a)) + [EOS], 2 if args.pipeline_tasks else 4)
  raise ValueError(kind)


def stack(exs):
  ids, w, seg, task = zip(*exs)
  return dict(token_ids=np.array(ids, np.int32), loss_weights=np.array(w, np.float32),
              segment_ids=np.array(seg, np.int32), task=np.array(task, np.int32))


NTASK = 5
cfg = TransformerConfig(family='chameleon', vocab_size=VOCAB, d_model=args.d_model,
                        num_layers=args.layers, num_heads=4, num_kv_heads=4,
                        head_dim=args.d_model // 4, mlp_dim=4 * args.d_model, max_positions=128,
                        dtype='float32', param_dtype='float32', scan_layers=False,
                        remat_policy='none', qk_norm=bool(args.qk_norm),
                        rope_theta=args.rope_theta)
model = DecoderLM(cfg)


def loss_fn(params, batch):
  logits = model.apply({'params': params}, batch['token_ids'], segment_ids=batch['segment_ids'])
  tgt = jnp.concatenate([batch['token_ids'][:, 1:], jnp.zeros_like(batch['token_ids'][:, :1])], 1)
  lw = batch['loss_weights']
  w = jnp.concatenate([lw[:, 1:], jnp.zeros_like(lw[:, :1])], 1)
  nll, hit = cross_entropy(logits, tgt)
  onehot = jax.nn.one_hot(batch['task'], NTASK)  # [b, T]
  per_task_nll = jnp.einsum('bs,bt->t', w * nll, onehot)
  per_task_w = jnp.einsum('bs,bt->t', w, onehot)
  per_task_hit = jnp.einsum('bs,bt->t', w * hit, onehot)
  present = (per_task_w > 0).astype(jnp.float32)
  # each objective normalised by its own token count, objectives averaged
  ow = jnp.ones(NTASK).at[0].set(args.idp_weight) * present
  loss = jnp.sum(ow * per_task_nll / jnp.maximum(per_task_w, 1)) / jnp.maximum(ow.sum(), 1e-8)
  denom = jnp.maximum(per_task_w, 1)
  return loss, (per_task_nll / denom, per_task_hit / denom)


def make_tx(steps):
  sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(50, steps // 10), steps,
                                             args.lr * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(sched, b2=args.b2, weight_decay=0.01))


def train(params, steps, batch_fn, name):
  tx = make_tx(steps)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss, aux

  t = time.time()
  rng = np.random.default_rng([args.seed, hash(name) % 1000])
  for i in range(steps):
    params, opt, loss, (tl, ta) = step(params, opt, batch_fn(rng))
    if (i + 1) % 100 == 0 or i == 0:
      print(f'{name} {i+1} loss {float(loss):.3f} task_loss {np.round(np.asarray(tl), 3).tolist()} '
            f'acc {np.round(np.asarray(ta), 3).tolist()} {time.time()-t:.0f}s', flush=True)
    if args.eval_every and (i + 1) % args.eval_every == 0 and name == 'idp':
      evaluate(params, 'test', args.eval_items, quick=True)
  return params


labelled = [dict(e, **e.get('hidden', {})) for e in splits[args.train_split][:args.num_labelled]]
idp_train = [idp_example(Scene.from_json(e['src']), Scene.from_json(e['tgt']), e['action'])
             for e in labelled]
fdp_train = [fdp_example(Scene.from_json(e['src']), Scene.from_json(e['tgt']), e['action'])
             for e in labelled]
docs = args.docs.split(',')


def idp_batch(rng):
  n_doc = int(round(args.mix * args.batch))
  n_fdp = int(round(args.fdp_share * args.batch))
  exs = [idp_train[i] for i in rng.integers(0, len(idp_train), args.batch - n_doc - n_fdp)]
  exs += [fdp_train[i] for i in rng.integers(0, len(fdp_train), n_fdp)]
  exs += [doc_example(docs[rng.integers(len(docs))], rng) for _ in range(n_doc)]
  return stack(exs)


def pre_batch(rng):
  return stack([doc_example(docs[rng.integers(len(docs))], rng) for _ in range(args.batch)])


@jax.jit
def fwd(params, ids):
  logits = model.apply({'params': params}, ids)
  return logits


IMG_MASK = np.zeros(VOCAB, bool)
IMG_MASK[V_TEXT:] = True
IMG_MASK[[BOS, BOI, EOI, PAD]] = True


def greedy(params, exs, max_new=18):
  P = 55
  ids = np.full((len(exs), P + max_new), PAD, np.int32)
  for i, (s, t) in enumerate(exs):
    ids[i, :P] = [BOS, BOI] + codes(s) + [EOI, BOI] + codes(t) + [EOI]
  done = np.zeros(len(exs), bool)
  for j in range(max_new):
    logits = np.array(fwd(params, jnp.asarray(ids)))[:, P - 1 + j]
    logits[:, IMG_MASK] = -1e9
    nxt = logits.argmax(-1)
    nxt = np.where(done, PAD, nxt)
    ids[:, P + j] = nxt
    done |= nxt == EOS
    if done.all():
      break
  out = []
  for row in ids[:, P:]:
    r = list(row)
    r = r[:r.index(EOS)] if EOS in r else r
    out.append(tok.decode([x for x in r if x != PAD]))
  return out


CATS = {wd: cat for words, cat in ((world.colors, 'colour'), (world.shapes, 'shape'),
                                   (('up', 'down', 'left', 'right'), 'direction'),
                                   (('above', 'below', 'next'), 'relation'), ('12345', 'digit'),
                                   (('move', 'remove', 'add', 'make', 'swap'), 'verb'),
                                   (('a', 'the'), 'article'))
        for wd in words}


def evaluate(params, split, n, quick=False):
  items = splits[split][:n] if split != 'labelled' else labelled[:n]
  pairs = [(Scene.from_json(e['src']), Scene.from_json(e['tgt'])) for e in items]
  preds = []
  for i in range(0, len(pairs), 100):
    preds += greedy(params, pairs[i:i + 100])
  by_type = collections.defaultdict(list)
  canon = []
  for e, (s, t), pr in zip(items, pairs, preds):
    sc = score_action_text(s, pr, t, world, true_action=e['canonical'])
    by_type[e['action_type']].append(sc['effect_match'])
    canon.append(sc['canonical_match'])
  eff = np.mean([x for v in by_type.values() for x in v])
  res = dict(split=split, effect=round(float(eff), 3), canonical=round(float(np.mean(canon)), 3),
             by_type={k: round(float(np.mean(v)), 2) for k, v in sorted(by_type.items())})
  if not quick:
    # teacher-forced accuracy per word category
    exs = [idp_example(s, t, e['action']) for e, (s, t) in zip(items, pairs)]
    hits = collections.defaultdict(list)
    for i in range(0, len(exs), 100):
      b = stack(exs[i:i + 100])
      lg = np.asarray(fwd(params, jnp.asarray(b['token_ids'])))
      pred = lg[:, :-1].argmax(-1)
      tg = b['token_ids'][:, 1:]
      w = b['loss_weights'][:, 1:]
      for r in range(len(tg)):
        for c in np.nonzero(w[r])[0]:
          wd = tok.id_to_token(int(tg[r, c]))
          hits[CATS.get(wd, 'other')].append(pred[r, c] == tg[r, c])
    res['teacher_forced'] = {k: round(float(np.mean(v)), 2) for k, v in sorted(hits.items())}
    res['examples'] = list(zip([e['action'] for e in items[:4]], preds[:4]))
  print('EVAL', json.dumps(res), flush=True)
  return res


def reading(params, kinds, n=200):
  """Teacher-forced accuracy per word category on n fresh documents of each kind (the base's
  reading; never trained on: their own rng)."""
  rng = np.random.default_rng(999)
  for kind in kinds:
    exs = [doc_example(kind, rng) for _ in range(n)]
    hits, whole = collections.defaultdict(list), []
    for i in range(0, n, 100):
      b = stack(exs[i:i + 100])
      pred = np.asarray(fwd(params, jnp.asarray(b['token_ids'])))[:, :-1].argmax(-1)
      tg, w = b['token_ids'][:, 1:], b['loss_weights'][:, 1:]
      for r in range(len(tg)):
        cols = np.nonzero(w[r])[0]
        whole.append(bool(np.all(pred[r, cols] == tg[r, cols])))
        for c in cols:
          hits[CATS.get(tok.id_to_token(int(tg[r, c])), 'other')].append(pred[r, c] == tg[r, c])
    print('READING', kind, json.dumps(dict(
        document=round(float(np.mean(whole)), 3),
        **{k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())})), flush=True)


def first_change(params, n=400):
  """Does the base find a changed cell? Teacher-forced accuracy of the first colour word of fresh
  `diff` documents (the first object only one scene has: which object changed), by the number of
  cells the pair differs in (4 = four or more), and whole documents by the same count. A reader
  that names a random object of the photo the phrase is about gets that colour right 0.31 of the
  time (measured on 20,000 pairs of this stream); one that finds the changed cell, nearly always
  (colour is read off single frames at 0.93)."""
  rng = np.random.default_rng(4242)
  first, whole = collections.defaultdict(list), collections.defaultdict(list)
  for _ in range(0, n, 100):
    rows, meta = [], []
    for _ in range(100):
      a = random_scene(rng, world)
      b = perturb(a, rng)
      if rng.random() < 0.5:
        a, b = b, a
      prompt = [BOS, BOI] + codes(a) + [EOI, BOI] + codes(b) + [EOI]
      out = text(diff_caption(a, b)) + [EOS]
      rows.append(example(prompt, out, 4)[0])
      meta.append((len(prompt), len(out), min(sum(x != y for x, y in zip(codes(a), codes(b))), 4)))
    ids = np.array(rows, np.int32)
    pred = np.asarray(fwd(params, jnp.asarray(ids))).argmax(-1)
    for r, (p, m, changed) in enumerate(meta):
      right = [pred[r, p + j - 1] == ids[r, p + j] for j in range(m)]
      colours = [j for j in range(m) if CATS.get(tok.id_to_token(int(ids[r, p + j]))) == 'colour']
      first[changed].append(right[colours[0]])
      whole[changed].append(all(right))
  print('FIRST_CHANGE', json.dumps({
      f'{k} cells': dict(n=len(first[k]), first_colour=round(float(np.mean(first[k])), 3),
                         whole=round(float(np.mean(whole[k])), 3)) for k in sorted(first)}),
        flush=True)


params = model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 8), jnp.int32))['params']
params = jax.tree.map(lambda x: x.value if hasattr(x, 'value') else x, params,
                      is_leaf=lambda x: hasattr(x, 'value'))
if args.load:
  import pickle
  with open(args.load, 'rb') as f:
    params = jax.tree.map(jnp.asarray, pickle.load(f))
if args.pretrain_steps:
  t = time.time()
  params = train(params, args.pretrain_steps, pre_batch, 'pretrain')
  print('pretrain seconds', round(time.time() - t), flush=True)
  if args.save:
    import pickle
    with open(args.save, 'wb') as f:
      pickle.dump(jax.tree.map(np.asarray, params), f)
if args.pretrain_steps or args.load:
  reading(params, [d for d in dict.fromkeys(docs) if d not in ('t2i', 'dimg', 'run')])
  if 'diff' in docs:
    first_change(params)
t = time.time()
if args.idp_steps:
  params = train(params, args.idp_steps, idp_batch, 'idp')
print('idp seconds', round(time.time() - t), flush=True)
evaluate(params, 'test', args.eval_items)
evaluate(params, 'labelled', 200, quick=True)
