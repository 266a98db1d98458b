"""Command line for the action world.

  python -m data.action_world build --out DIR [--size default|smoke] [--seed 0]
      writes DIR/<split>.jsonl, DIR/world_config.json, DIR/tokenizer/ and prints the numbers
  python -m data.action_world show --out DIR [--n 8] [--split labelled] [--scale 4]
      writes DIR/examples.png: source | target frames of n examples with their action text
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from data.action_world.actions import ACTION_TYPES
from data.action_world.splits import (
  SPLITS,
  example_action,
  load_split,
  load_world_config,
  write_world,
)
from data.action_world.world import Scene, WorldConfig, render
from data.errors import UserError


def _print_stats(stats: dict) -> None:
  print(f'{"split":<20}{"examples":>9}' + ''.join(f'{t:>9}' for t in ACTION_TYPES)
        + f'{"changed":>9}{"objects":>9}')
  for name, s in stats.items():
    print(f'{name:<20}{s["examples"]:>9}' + ''.join(f'{s["action_types"][t]:>9}'
                                                    for t in ACTION_TYPES)
          + f'{s["mean_changed_cells"]:>9.3f}{s["mean_objects"]:>9.2f}')
  print('mean changed cells per action type (all splits):')
  for t in ACTION_TYPES:
    n = sum(s['action_types'][t] for s in stats.values())
    total = sum(s['action_types'][t] * s['mean_changed_cells_per_type'][t] for s in stats.values())
    print(f'  {t:<10}{total / max(n, 1):.3f}')


def build(args) -> None:
  config = WorldConfig.preset(args.size)
  start = time.perf_counter()
  result = write_world(args.out, config, args.seed, size=args.size)
  print(f'action world ({args.size}, seed {args.seed}): {config.rows}x{config.cols} cells, '
        f'frames {config.frame_shape}, {config.num_cells} image tokens a frame -> {args.out}')
  _print_stats(result['stats'])
  print(f'generated in {result["build_seconds"]:.2f} s, written in '
        f'{time.perf_counter() - start:.2f} s')


def show(args) -> None:
  import numpy as np
  from PIL import Image, ImageDraw

  config = load_world_config(args.out)
  examples = load_split(args.out, args.split)[:args.n]
  h, w, _ = config.frame_shape
  s, gap, text_h, text_w = args.scale, 8, 14, 420
  row_h = h * s + gap
  canvas = Image.new('RGB', (2 * w * s + 3 * gap + text_w, row_h * len(examples) + gap),
                     (200, 200, 200))
  draw = ImageDraw.Draw(canvas)
  for i, ex in enumerate(examples):
    y = gap + i * row_h
    for j, key in enumerate(('src', 'tgt')):
      frame = render(Scene.from_json(ex[key]), config)
      big = np.kron(frame, np.ones((s, s, 1), np.uint8))
      canvas.paste(Image.fromarray(big), (gap + j * (w * s + gap), y))
    a = example_action(ex)
    x = 2 * (w * s + gap) + gap
    draw.text((x, y), a['action'], fill=(0, 0, 0))
    draw.text((x, y + text_h), a['canonical'], fill=(60, 60, 160))
  path = os.path.join(args.out, 'examples.png')
  canvas.save(path)
  print(f'wrote {path}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data.action_world', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  b = sub.add_parser('build', help='generate and write the splits')
  b.add_argument('--out', required=True)
  b.add_argument('--size', default='default', choices=('default', 'smoke'))
  b.add_argument('--seed', type=int, default=0)
  b.set_defaults(fn=build)
  v = sub.add_parser('show', help='write a PNG of a few examples')
  v.add_argument('--out', required=True)
  v.add_argument('--n', type=int, default=8)
  v.add_argument('--split', default='labelled', choices=SPLITS)
  v.add_argument('--scale', type=int, default=4)
  v.set_defaults(fn=show)
  args = parser.parse_args(argv)
  try:
    args.fn(args)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
