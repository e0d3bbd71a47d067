"""Write the embedded demo detection set (synthetic shapes, COCO format); no download.

    python tools/make_demo_data.py                       # data/demo, 800 train + 200 val, 128 px
    python tools/make_demo_data.py --out data/tiny --num-train 8 --num-val 4 --image-size 64
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from sasa_det.datasets import CLASSES, ShapeStyle, make_demo_dataset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo', help='output directory (default: data/demo)')
    parser.add_argument('--num-train', type=int, default=800, help='training images')
    parser.add_argument('--num-val', type=int, default=200, help='held-out validation images')
    parser.add_argument('--image-size', type=int, default=128, help='square image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed, same bytes)')
    parser.add_argument('--max-objects', type=int, default=ShapeStyle.max_objects,
                        help='most objects in one image')
    parser.add_argument('--empty-fraction', type=float, default=ShapeStyle.empty_fraction,
                        help='fraction of images with no objects')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    style = ShapeStyle(max_objects=args.max_objects, empty_fraction=args.empty_fraction)
    start = time.perf_counter()
    files = make_demo_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                              image_size=args.image_size, seed=args.seed, style=style)
    print(f'demo data: {args.num_train} train + {args.num_val} val images of '
          f'{args.image_size}x{args.image_size}, classes {", ".join(CLASSES)}, seed {args.seed}, '
          f'written to {args.out} in {time.perf_counter() - start:.1f} s')
    for split, path in files.items():
        print(f'  {split}: {path}')


if __name__ == '__main__':
    main()
