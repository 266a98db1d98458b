"""Checkpoint conversion on the command line.

  python -m jax_vlm.convert hf-to-flax SRC DST     transformers dir -> Orbax params at DST
                                                   (+ DST/hf_config.json, the source config.json)
  python -m jax_vlm.convert flax-to-hf SRC DST [--config C] [--source HF_DIR] [--dtype bfloat16]
                                                   Orbax params -> transformers dir; C is a
                                                   transformers dir, config.json or configs/*.py
                                                   (default SRC/hf_config.json)
  python -m jax_vlm.convert vqgan --ckpt vqgan.ckpt --yaml vqgan.yaml DST
                                                   Meta's VQGAN -> a VQGAN directory DST
                                                   (params.msgpack + vqgan_config.json; load it
                                                   with vqgan_files.load_vqgan)
  python -m jax_vlm.convert tiny DST [--words_from FILE ...] [--vocab_size 256]
                                                   stand-ins for dry runs of the real-data flow
                                                   (configs/real_smoke.py): DST/tokenizer, a word
                                                   tokenizer of the words in FILEs (text, or JSON
                                                   lists with 'instruction', e.g. test.json) plus
                                                   16 IMGIMG tokens, and DST/vqgan, a random
                                                   16 px VQGAN with 16 codes (TINY_VQGAN)
"""

import argparse
import collections
import json
import os
import re
import sys

import jax
import numpy as np

from jax_vlm.core import cli
from jax_vlm.core.errors import require
from jax_vlm.models.vqgan import VQGAN, VQGANConfig
from jax_vlm.tokens import vocab as vocab_lib
from jax_vlm.training import checkpointing
from jax_vlm.weights import hf, vqgan_files
from jax_vlm.weights.vqgan import convert_vqgan_checkpoint


def hf_to_flax(src: str, dst: str, scan_layers: bool, param_dtype: str) -> None:
  module, params = hf.from_pretrained(src, param_dtype=param_dtype, scan_layers=scan_layers)
  checkpointing.save_params(dst, params)
  with open(os.path.join(dst, hf.HF_CONFIG_FILE), 'w') as f:
    json.dump(hf.read_hf_config(src), f, indent=2, sort_keys=True)
  print(f'wrote {module.config.num_layers}-layer {module.config.family} params to {dst}')


def flax_to_hf(src: str, dst: str, config_path: str | None, source: str | None,
               dtype: str | None) -> None:
  if not config_path:
    config_path = os.path.join(src, hf.HF_CONFIG_FILE)
    require(os.path.exists(config_path), f'{src} has no {hf.HF_CONFIG_FILE}; pass --config with '
            'the transformers directory, config.json or configs/*.py preset of the model.')
  params = checkpointing.load_params(src)
  if isinstance(params, dict) and 'params' in params and 'embed_tokens' not in params:
    params = params['params']
  scan_layers = 'layers' in params
  config = hf.transformer_config_from_file(config_path, scan_layers=scan_layers)
  base = None
  if source is None and os.path.isdir(config_path):
    source = config_path  # keep that checkpoint's config extras, VQGAN and tokenizer files
  elif source is None and config_path.endswith('.json'):
    with open(config_path) as f:
      base = json.load(f)
  hf.save_pretrained(config, params, dst, source=source, dtype=dtype, base_config=base)
  print(f'wrote a transformers {hf.ARCHITECTURES[config.family]} checkpoint to {dst}')


def vqgan(ckpt: str, yaml: str, dst: str) -> None:
  config, params = convert_vqgan_checkpoint(ckpt, yaml)
  # The project's one VQGAN directory format (what the tokenizer stage and tools/prepare.py read).
  vqgan_files.save_vqgan(dst, params, config)
  print(f'wrote the VQGAN ({config.num_embeddings} codes, {config.resolution} px) to {dst}')


# The stand-in VQGAN of `tiny` (configs/real_smoke.py's vqgan section): 16 px frames, 4 x 4 codes.
TINY_VQGAN = dict(resolution=16, base_channels=16, channel_multiplier=(1, 2, 2), num_res_blocks=1,
                  z_channels=8, embed_dim=8, num_embeddings=16, norm_groups=8)


def _words(path: str) -> list[str]:
  require(os.path.isfile(path), f'--words_from {path} does not exist; pass text or JSON files.')
  with open(path, encoding='utf-8', errors='replace') as f:
    text = f.read()
  if path.endswith('.json'):
    try:
      entries = json.loads(text)
    except ValueError:
      entries = None
    if isinstance(entries, list):
      text = ' '.join(str(e.get('instruction', '')) for e in entries if isinstance(e, dict))
  return re.findall(r'\w+|[^\w\s]+', text)  # the word tokenizer's own split


def tiny(dst: str, words_from: list[str], vocab_size: int, seed: int = 0) -> None:
  """Writes DST/tokenizer and DST/vqgan (see the module docstring)."""
  vq_config = VQGANConfig(**TINY_VQGAN)
  room = vocab_size - vq_config.num_embeddings - len(vocab_lib.DEFAULT_SPECIAL_TOKENS)
  require(room > 0, f'--vocab_size={vocab_size} leaves no room for words; pass a larger one.')
  counts = collections.Counter(w for path in words_from for w in _words(path))
  words = [w for w, _ in counts.most_common(room)]
  tok = vocab_lib.build_word_tokenizer(words, os.path.join(dst, 'tokenizer'),
                                       num_image_codes=vq_config.num_embeddings)
  size = len(vocab_lib.DEFAULT_SPECIAL_TOKENS) + len(words) + vq_config.num_embeddings
  x = np.zeros((1, vq_config.resolution, vq_config.resolution, 3), np.float32)
  params = VQGAN(vq_config).init(jax.random.PRNGKey(seed), x)['params']
  vqgan_files.save_vqgan(os.path.join(dst, 'vqgan'), params, vq_config)
  print(f'wrote a {size}-token word tokenizer to {tok} and a random '
        f'{vq_config.resolution} px VQGAN ({vq_config.num_embeddings} codes) to {dst}/vqgan')


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog='python -m jax_vlm.convert', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('hf-to-flax', help='transformers checkpoint -> Orbax params')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--no_scan', action='store_true', help='per-layer params (layers_0, ...)')
  p.add_argument('--param_dtype', default='float32')
  p = sub.add_parser('flax-to-hf', help='Orbax params -> transformers checkpoint')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--config', default=None)
  p.add_argument('--source', default=None,
                 help='transformers dir whose config extras, VQGAN and tokenizer files to keep')
  p.add_argument('--dtype', default=None, help='tensor dtype to write (default: the params\')')
  p = sub.add_parser('vqgan', help="Meta's vqgan.ckpt + vqgan.yaml -> a VQGAN directory")
  p.add_argument('--ckpt', required=True)
  p.add_argument('--yaml', required=True)
  p.add_argument('dst')
  p = sub.add_parser('tiny', help='a word tokenizer and a random 16 px VQGAN for dry runs')
  p.add_argument('dst')
  p.add_argument('--words_from', nargs='*', default=[],
                 help="text files, or JSON lists of {'instruction': ...} (AURORA's test.json)")
  p.add_argument('--vocab_size', type=int, default=256,
                 help='the model\'s vocab_size (configs/real_smoke.py: 256); words are cut to fit')

  def body(args) -> None:
    if args.command == 'hf-to-flax':
      hf_to_flax(args.src, args.dst, not args.no_scan, args.param_dtype)
    elif args.command == 'flax-to-hf':
      flax_to_hf(args.src, args.dst, args.config, args.source, args.dtype)
    elif args.command == 'tiny':
      tiny(args.dst, args.words_from, args.vocab_size)
    else:
      os.makedirs(args.dst, exist_ok=True)
      vqgan(args.ckpt, args.yaml, args.dst)

  # Errors (jax_vlm/core/cli.py): a mistake in the command exits 2, a bad input file 1.
  return cli.run_argparse(parser, body, argv)

if __name__ == '__main__':
  cli.prepare_host()  # first: threads for simulated devices, malloc on huge pages (core/cli.py)
  sys.exit(main())
