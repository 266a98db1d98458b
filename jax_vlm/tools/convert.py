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
"""

import argparse
import json
import os
import sys

from jax_vlm.core import cli
from jax_vlm.core.errors import require
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

  def body(args) -> None:
    if args.command == 'hf-to-flax':
      hf_to_flax(args.src, args.dst, not args.no_scan, args.param_dtype)
    elif args.command == 'flax-to-hf':
      flax_to_hf(args.src, args.dst, args.config, args.source, args.dtype)
    else:
      os.makedirs(args.dst, exist_ok=True)
      vqgan(args.ckpt, args.yaml, args.dst)

  # Errors (jax_vlm/core/cli.py): a mistake in the command exits 2, a bad input file 1.
  return cli.run_argparse(parser, body, argv)

if __name__ == '__main__':
  sys.exit(main())
