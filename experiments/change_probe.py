"""Linear probes: does a base know, for IDP inputs (A, B), what changed between the two frames?

  python experiments/change_probe.py random /tmp/base.pkl [...]

For each saved base (idp_probe.py --save) or 'random' (an untrained model of the same shape), on
2,000 development-world pairs (world seed 100, never the reported items), it fits two linear
probes per layer (0 = token embeddings) on 1,500 pairs and scores them on the other 500:
  - at each of B's 25 cell tokens: did this cell change? (balanced accuracy; the embedding alone
    scores well above 0.5 because occupied cells change more often than empty ones)
  - at B's <eoi> (where the action text starts): which cell changed? (top-1 hits a changed cell)
A layer that compares the frames would score above the embedding's baseline.
"""
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data.action_world import Scene, WorldConfig, build_splits, vocabulary_words
from data.action_world.tokenizer import build_tokenizer
from data.action_world.world import all_keys, changed_cells
from jax_vlm.models.config import TransformerConfig
from jax_vlm.models.transformer import DecoderLM

world = WorldConfig.preset('default', phrasings='plain')
tok = build_tokenizer(vocabulary_words(world))
V_TEXT, KEYS = tok.get_vocab_size(), all_keys(world)
CELLS = world.rows * world.cols
VOCAB = -(-(V_TEXT + len(KEYS) + 1) // 16) * 16
BOS, BOI, EOI = (tok.token_to_id(t) for t in ('<bos>', '<boi>', '<eoi>'))
B_CELLS = slice(4 + CELLS, 4 + 2 * CELLS)  # <bos> <boi> A <eoi> <boi> | B | <eoi>
B_EOI = 4 + 2 * CELLS
N_FIT = 1500


def codes(scene):
  c = np.full(CELLS, len(KEYS), np.int32)
  for o in scene.objects:
    c[o.row * world.cols + o.col] = KEYS.index(o.key)
  return list(V_TEXT + c)


def data():
  ids, changed = [], []
  for e in build_splits(world, 100)['labelled'][:2000]:
    s, t = Scene.from_json(e['src']), Scene.from_json(e['tgt'])
    ids.append([BOS, BOI] + codes(s) + [EOI, BOI] + codes(t) + [EOI])
    m = np.zeros(CELLS, np.float32)
    for r, c in changed_cells(s, t):
      m[r * world.cols + c] = 1
    changed.append(m)
  return jnp.asarray(np.array(ids, np.int32)), np.array(changed)


def fit(x, y, loss_fn, n_fit, steps=400):
  """A linear map x -> y fit by Adam on rows [:n_fit] of standardised x; its outputs on the rest."""
  x = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-6)
  p = (jnp.zeros((x.shape[1], y.shape[1])), jnp.zeros(y.shape[1]))
  tx = optax.adam(1e-2)
  opt = tx.init(p)
  grad = jax.jit(jax.grad(lambda p: loss_fn(x[:n_fit] @ p[0] + p[1], y[:n_fit])))
  for _ in range(steps):
    u, opt = tx.update(grad(p), opt, p)
    p = optax.apply_updates(p, u)
  return np.asarray(x[n_fit:] @ p[0] + p[1])


def cell_probe(h, changed):
  """h [n, 25, d] at B's cells -> balanced accuracy of 'this cell changed' on held-out pairs."""
  n, cells, d = h.shape
  n_fit = N_FIT * cells
  y = changed.reshape(-1, 1)
  pos = float(y[:n_fit].mean())
  loss = lambda z, y: jnp.mean(optax.sigmoid_binary_cross_entropy(z, y)  # noqa: E731
                               * jnp.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)))
  pred = fit(jnp.asarray(h.reshape(n * cells, d)), jnp.asarray(y), loss, n_fit)[:, 0] > 0
  truth = y[n_fit:, 0] > 0
  return 0.5 * (pred[truth].mean() + (~pred[~truth]).mean())


def where_probe(h, changed):
  """h [n, d] at B's <eoi> -> share of held-out pairs whose top-1 cell is a changed one."""
  target = changed / changed.sum(1, keepdims=True)
  z = fit(jnp.asarray(h), jnp.asarray(target),
          lambda z, y: -jnp.mean(jnp.sum(jax.nn.log_softmax(z) * y, -1)), N_FIT)
  return float(np.mean(changed[N_FIT:][np.arange(len(z)), z.argmax(-1)] > 0))


def main():
  cfg = TransformerConfig(family='chameleon', vocab_size=VOCAB, d_model=128, num_layers=4,
                          num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=512,
                          max_positions=128, dtype='float32', param_dtype='float32',
                          scan_layers=False, remat_policy='none', qk_norm=True)
  model = DecoderLM(cfg)
  ids, changed = data()
  for name in sys.argv[1:]:
    if name == 'random':
      params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params']
    else:
      with open(name, 'rb') as f:
        params = jax.tree.map(jnp.asarray, pickle.load(f))
    _, state = model.apply({'params': params}, ids, capture_intermediates=True,
                           mutable=['intermediates'])
    inter = state['intermediates']
    layers = [model.apply({'params': params}, ids, method=lambda m, x: m.embed_tokens(x))]
    layers += [inter[f'layers_{i}']['__call__'][0][0][0] for i in range(cfg.num_layers)]
    print(name, flush=True)
    for i, h in enumerate(layers):
      h = np.asarray(h)
      cell, where = cell_probe(h[:, B_CELLS], changed), where_probe(h[:, B_EOI], changed)
      print(f'  layer {i}: B cell changed? balanced accuracy {cell:.3f} | B <eoi>: top-1 cell is '
            f'a changed one {where:.3f}', flush=True)


if __name__ == '__main__':
  main()
