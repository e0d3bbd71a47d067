r"""Draw where one SASA layer's heads look: each head's weights around chosen query pixels.

    python tools/visualize_attention.py configs/demo/retinanet_sasa_r26w16_demo.py \
        data/demo/val/000000.png --checkpoint work_dirs/x/iter_1500.pth \
        --layer bbox_head.reg_convs.0.conv --points 40,64 90,30 --out attention.png

    # the layer names of a config
    python tools/visualize_attention.py CONFIG IMAGE --list-layers

One row per query point, one panel per head: the image around the query, and over it the query's
k x k window with its attention weights (brighter = more weight; the window's cells are the
layer's input pixels). Points are x,y in the original image's pixels. A head layer runs on every
pyramid level; ``--level`` picks the call (0 = the finest level, P3).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from attention_stats import build_detector  # noqa: E402
from train import load_config  # noqa: E402

from sasa_det.analysis.attention_maps import capture_attention  # noqa: E402


def image_batch(cfg, image: str) -> dict:
    """``image`` through the config's test pipeline (without annotations), as a batch of one."""
    from mmcv.transforms import Compose

    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s['type'] != 'LoadAnnotations']
    data = Compose(steps)(dict(img_path=image, img_id=0))
    return dict(inputs=[data['inputs']], data_samples=[data['data_samples']])


def query_cells(points, meta: dict, grid: tuple[int, int], input_grid: tuple[int, int]):
    """Each (x, y) original-image point -> (query row, query col) on the layer's query grid."""
    ori_h, ori_w = meta['ori_shape']
    cells = []
    for x, y in points:
        if not (0 <= x < ori_w and 0 <= y < ori_h):
            raise ValueError(f'point ({x}, {y}) is outside the image of size {ori_w} x {ori_h}')
        cells.append((min(int(y / ori_h * grid[0]), grid[0] - 1),
                      min(int(x / ori_w * grid[1]), grid[1] - 1)))
    return cells


def draw(image: np.ndarray, capture: dict, cells, input_grid, out: str) -> None:
    """One row per query cell, one column per head, window weights over the image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    weights = capture['weights'][0]  # (Ho, Wo, heads, k*k)
    ho, wo, heads, _ = weights.shape
    k = capture['kernel_size']
    img_h, img_w = image.shape[:2]
    cell_h, cell_w = img_h / input_grid[0], img_w / input_grid[1]  # image px per input pixel
    stride_h, stride_w = input_grid[0] / ho, input_grid[1] / wo
    fig, axes = plt.subplots(len(cells), heads, figsize=(2 * heads, 2 * len(cells)),
                             squeeze=False)
    for row, (i, j) in enumerate(cells):
        # The query sits on input pixel (round(s * i), round(s * j)); its window spans k pixels.
        top = (round(stride_h * i) - k // 2) * cell_h
        left = (round(stride_w * j) - k // 2) * cell_w
        extent = (left, left + k * cell_w, top + k * cell_h, top)
        for head in range(heads):
            ax = axes[row][head]
            ax.imshow(image, cmap='gray' if image.ndim == 2 else None, alpha=0.6)
            ax.imshow(weights[i, j, head].reshape(k, k).numpy(), cmap='inferno', alpha=0.6,
                      extent=extent, vmin=0)
            ax.plot(left + (k / 2) * cell_w, top + (k / 2) * cell_h, 'c+', markersize=8)
            margin = 2 * max(cell_h, cell_w)
            ax.set_xlim(max(extent[0] - margin, 0), min(extent[1] + margin, img_w))
            ax.set_ylim(min(extent[2] + margin, img_h), max(extent[3] - margin, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f'head {head}', fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is x,y in image pixels, got {text!r}')
    return x, y


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('image')
    parser.add_argument('--checkpoint', help='trained weights (default: the initialisation)')
    parser.add_argument('--layer', help='module name of the SASA layer (see --list-layers)')
    parser.add_argument('--level', type=int, default=0,
                        help='which call of the layer (pyramid level for head layers)')
    parser.add_argument('--points', nargs='+', type=parse_point, default=[],
                        help='query points x,y in the original image')
    parser.add_argument('--out', default='attention.png', help='PNG file to write')
    parser.add_argument('--list-layers', action='store_true', help='print the SASA layers')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initialisation')
    args = parser.parse_args(argv)
    if not args.list_layers and (args.layer is None or not args.points):
        parser.error('--layer and --points are needed (or --list-layers)')
    if not Path(args.image).is_file():
        parser.error(f'image {args.image} does not exist')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work_dir, args.launcher, args.cfg_options = None, 'none', None
    cfg = load_config(args)
    torch.manual_seed(args.seed)
    model = build_detector(cfg, args.checkpoint)
    batch = image_batch(cfg, args.image)
    layers = None if args.list_layers else [args.layer]
    with torch.no_grad(), capture_attention(model, layers) as captured:
        model.test_step(batch)
    if args.list_layers:
        for name, calls in captured.items():
            print(name, [tuple(c['weights'].shape[1:3]) for c in calls])
        return
    calls = captured[args.layer]
    if not 0 <= args.level < len(calls):
        raise SystemExit(f'visualize_attention.py: --level must be in [0, {len(calls)}) for '
                         f'{args.layer}, got {args.level}')
    capture = calls[args.level]
    meta = batch['data_samples'][0].metainfo
    input_grid = capture['input_size']
    cells = query_cells(args.points, meta, capture['weights'].shape[1:3], input_grid)
    image = batch['inputs'][0].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB, model input
    draw(np.ascontiguousarray(image), capture, cells, input_grid, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
