r"""Per SASA layer of a detector, how its attention spreads over the window, on real inputs.

    # at initialisation (no checkpoint), on 8 images of the config's test split
    python tools/attention_stats.py configs/demo/retinanet_sasa_r26w16_demo.py --num-images 8

    # a trained model, as CSV too
    python tools/attention_stats.py CONFIG --checkpoint work_dirs/x/iter_1500.pth \
        --out work_dirs/x/attention_stats.csv

Columns (means over images, queries and heads; see sasa_det.analysis.attention_maps):
entropy (normalised: 1 = uniform blur over the window, 0 = one key), effective window (exp of the
entropy: how many keys a query averages), centre 3x3 mass, and the largest |logit|. A head layer
runs on every pyramid level: its row pools all levels.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from mmengine.config import DictAction

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from train import load_config  # noqa: E402  (also puts the repository on sys.path)

from sasa_det.analysis.attention_maps import capture_attention, layer_statistics  # noqa: E402

COLUMNS = ('entropy', 'effective_window', 'centre_mass', 'max_abs_logit')


def build_detector(cfg, checkpoint: str | None) -> torch.nn.Module:
    """The config's model in eval mode, initialised as for training or from a checkpoint."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmdet.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
    else:
        load_checkpoint(model, checkpoint, map_location='cpu')
    return model.eval()


def test_batches(cfg, num_images: int, batch_size: int):
    """Batches of the config's test split, ``num_images`` images in all."""
    from mmengine.runner import Runner

    loader_cfg = dict(cfg.test_dataloader, batch_size=batch_size, num_workers=0,
                      persistent_workers=False)
    seen = 0
    for batch in Runner.build_dataloader(loader_cfg):
        yield batch
        seen += len(batch['inputs'])
        if seen >= num_images:
            return


def collect(cfg, checkpoint: str | None, num_images: int,
            layer_names=None) -> dict[str, dict[str, float]]:
    """Layer name -> its statistics over ``num_images`` test images."""
    model = build_detector(cfg, checkpoint)
    captures: dict[str, list] = {}
    with torch.no_grad(), capture_attention(model, layer_names) as captured:
        for batch in test_batches(cfg, num_images, batch_size=min(num_images, 8)):
            model.test_step(batch)
        captures = {name: calls for name, calls in captured.items() if calls}
    if not captures:
        raise SystemExit('attention_stats.py: the model has no SASA layer, nothing to report')
    return {name: layer_statistics(calls) for name, calls in captures.items()}


def format_table(stats: dict[str, dict[str, float]]) -> str:
    header = ['layer', 'entropy', 'effective window', 'centre 3x3 mass', 'max |logit|']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    for name, row in stats.items():
        lines.append(f"| {name} | {row['entropy']:.3f} | {row['effective_window']:.2f} | "
                     f"{row['centre_mass']:.3f} | {row['max_abs_logit']:.2f} |")
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmdet config file')
    parser.add_argument('--checkpoint', help='trained weights (default: the initialisation)')
    parser.add_argument('--num-images', type=int, default=8,
                        help='test images to average over (default 8)')
    parser.add_argument('--layers', nargs='+', help='only these layers (module names)')
    parser.add_argument('--out', help='also write the statistics to this CSV file')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initialisation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, as in tools/train.py')
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f'--num-images must be at least 1, got {args.num_images}')
    return args


def main(argv=None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    args.work_dir, args.launcher = None, 'none'
    torch.manual_seed(args.seed)
    stats = collect(load_config(args), args.checkpoint, args.num_images, args.layers)
    print(format_table(stats))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['layer', *COLUMNS])
            for name, row in stats.items():
                writer.writerow([name, *(f'{row[c]:.6g}' for c in COLUMNS)])
    return stats


if __name__ == '__main__':
    main()
