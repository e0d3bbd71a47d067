"""Print the complexity tables of docs/complexity.md, counted by sasa_det.analysis.complexity.

(a) ImageNet classifiers at 224 x 224 with the 1000-class classifier: convolutional ResNet
    baselines (mmdet's ResNet + global pool + fc), conv stem + attention (timm ``sasa_resnetD``)
    and full attention (``sasa_resnetD_attnstem``), beside the paper's Table 1.
(b) RetinaNet at 640 x 640 for the five COCO configs (README, "Configs"): backbone, FPN and head
    (the detector's 'tensor' mode; no anchors, no NMS), against the convolutional RetinaNet.
(c) One SASA layer with each opt-in option of LocalSelfAttention2d, against the paper's layer.

FLOPs are 2 x multiply-adds, the paper's convention; the GMACs column is the number mmengine's
FlopAnalyzer would print as "flops". CPU-only; the 640 x 640 detectors take a few minutes.

    python tools/complexity_tables.py                      # all three tables (a few minutes)
    python tools/complexity_tables.py --tables imagenet    # only (a)
    python tools/complexity_tables.py --tables coco --coco-size 800
"""
import argparse
import logging
import os.path as osp
import sys
import time

import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import sasa_det  # noqa: E402  (registers SASAResNet, SASAFPN, SASARetinaHead, timm models)
from sasa_det.analysis import complexity_breakdown  # noqa: E402

# Paper (Ramachandran et al. 2019, Table 1): (GFLOPs, M params) at 224 x 224.
PAPER_IMAGENET = {
    ('baseline', 26): (4.7, 13.7), ('baseline', 38): (6.5, 19.6), ('baseline', 50): (8.2, 25.6),
    ('conv-stem + attention', 26): (4.5, 10.3), ('conv-stem + attention', 38): (5.7, 14.1),
    ('conv-stem + attention', 50): (7.0, 18.0),
    ('full attention', 26): (4.7, 10.3), ('full attention', 38): (6.0, 14.1),
    ('full attention', 50): (7.2, 18.0),
}

# Paper (Table 2 and abstract): conv RetinaNet R-50 182 GFLOPs / 33.4M at 640 x 640; attention
# in backbone, FPN and heads: 39% fewer FLOPs and 34% fewer parameters (so about 111 / 22.0).
PAPER_COCO = {'retinanet_r50.py': '182 / 33.4',
              'retinanet_sasa_r50_attnstem.py': '-39% / -34% (111 / 22.0)'}
COCO_CONFIGS = [
    ('retinanet_r50.py', 'convolutional RetinaNet (baseline)', None),
    ('retinanet_sasa_r50_convhead.py', 'conv stem + attention backbone, conv FPN/head', None),
    ('retinanet_sasa_r50_attnstem_convhead.py', 'attention stem + backbone, conv FPN/head',
     None),
    ('retinanet_sasa_r50.py', 'conv stem + attention backbone, attention FPN/head', None),
    ('retinanet_sasa_r50_attnstem.py', 'attention everywhere', None),
]
# Where the paper is silent, the other reading of each open choice: P6 from C5 (mmdet's default,
# RetinaNet's paper) rather than from P5; the head's pointwise convolution being the class/box
# predictors (head_mixing='predictor') rather than preceding RetinaNet's 3x3 predictors
# (head_mixing='extra', the default).
COCO_VARIANTS = [
    ('retinanet_r50.py', 'conv baseline, P6 from C5 (mmdet default)',
     {'model.neck.add_extra_convs': 'on_input'}),
    ('retinanet_sasa_r50_attnstem.py', "attention everywhere, head_mixing='predictor'",
     {'model.bbox_head.head_mixing': 'predictor'}),
]


class _LastStage(nn.Module):
    """mmdet backbones return a tuple of stages; the classifier reads the last."""

    def forward(self, outs):
        return outs[-1]


def resnet_classifier(depth: int) -> nn.Module:
    """mmdet's convolutional ResNet-D (D in 26, 38, 50, ...) + global average pool + 1000-way fc."""
    from mmdet.models.backbones import ResNet
    from mmdet.models.backbones.resnet import Bottleneck

    class ResNetWithSmallDepths(ResNet):
        arch_settings = {**ResNet.arch_settings,
                         26: (Bottleneck, (1, 2, 4, 1)), 38: (Bottleneck, (2, 3, 5, 2))}

    return nn.Sequential(ResNetWithSmallDepths(depth, out_indices=(3,)), _LastStage(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def imagenet_model(variant: str, depth: int) -> nn.Module:
    if variant == 'baseline':
        return resnet_classifier(depth)
    import timm
    name = f'sasa_resnet{depth}' + ('_attnstem' if variant == 'full attention' else '')
    return timm.create_model(name, num_classes=1000)


def detector(config: str, options: dict = None) -> nn.Module:
    """The detector of an mmdet config file, ``options`` merged in as with ``--cfg-options``."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options or {})
    return MODELS.build(cfg.model)


def percent(ours: float, reference: float) -> str:
    return f'{100 * (ours - reference) / reference:+.1f}%'


def measure(build, input_shape, depth: int = 0):
    """complexity_breakdown() of build() ({'': totals, child: ...}), or why it failed to build."""
    try:
        model = build()
    except Exception as error:  # a model that has not landed yet is reported, not fatal
        return f'not available ({type(error).__name__}: {error})'.replace('\n', ' ')[:160]
    return complexity_breakdown(model, input_shape, depth=depth)


def imagenet_table(size: int) -> None:
    print(f'### ImageNet classifiers at {size} x {size} (1000-class classifier)\n')
    print('| model | depth | params (M) | paper | diff | GMACs | GFLOPs | paper | diff |')
    print('|---|---|---|---|---|---|---|---|---|')
    for variant in ('baseline', 'conv-stem + attention', 'full attention'):
        for depth in (26, 38, 50):
            paper_flops, paper_params = PAPER_IMAGENET[variant, depth]
            result = measure(lambda: imagenet_model(variant, depth), (3, size, size))
            if not isinstance(result, str):
                result = result['']
            if isinstance(result, str):
                print(f'| {variant} | R{depth} | {result} | {paper_params} | | | | '
                      f'{paper_flops} | |')
                continue
            params, gflops = result['params'] / 1e6, result['flops'] / 1e9
            print(f'| {variant} | R{depth} | {params:.2f} | {paper_params} | '
                  f'{percent(params, paper_params)} | {result["macs"] / 1e9:.2f} | {gflops:.2f} '
                  f'| {paper_flops} | {percent(gflops, paper_flops)} |', flush=True)
    print()


def coco_table(size: int) -> None:
    print(f'### RetinaNet R-50 at {size} x {size} (backbone + FPN + head)\n')
    print('| config | params (M) | GMACs | GFLOPs | params vs conv | FLOPs vs conv | '
          'paper (GFLOPs / M params) |')
    print('|---|---|---|---|---|---|---|')
    parts = {}
    baseline = None
    for name, description, options in COCO_CONFIGS + COCO_VARIANTS:
        if (name, description, options) == COCO_VARIANTS[0]:
            print('| *choices the paper leaves open* | | | | | | |')
        start = time.time()
        table = measure(lambda: detector(osp.join(ROOT, 'configs', name), options),
                        (3, size, size), depth=1)
        paper = PAPER_COCO.get(name, 'not stated') if not options else 'not stated'
        if isinstance(table, str):
            print(f'| `{name}` ({description}) | {table} | | | | | {paper} |')
            continue
        result = table['']
        parts[description] = table
        if baseline is None and name == 'retinanet_r50.py' and not options:
            baseline = result
        params, gflops = result['params'] / 1e6, result['flops'] / 1e9
        versus = ('|' if baseline is None else
                  f'{percent(result["params"], baseline["params"])} | '
                  f'{percent(result["flops"], baseline["flops"])}')
        print(f'| `{name}` ({description}) | {params:.2f} | {result["macs"] / 1e9:.1f} | '
              f'{gflops:.1f} | {versus} | {paper} |', flush=True)
        print(f'{name} {options or ""}: measured in {time.time() - start:.0f} s', file=sys.stderr)

    print(f'\n#### Per part: params (M) / GFLOPs at {size} x {size}\n')
    print('| model | backbone | neck | bbox_head |')
    print('|---|---|---|---|')
    for description, table in parts.items():
        cells = [f'{table[p]["params"] / 1e6:.2f} / {table[p]["flops"] / 1e9:.1f}'
                 if p in table else '-' for p in ('backbone', 'neck', 'bbox_head')]
        print(f'| {description} | ' + ' | '.join(cells) + ' |')
    print()


# SASA-ResNet-50's spatial layers of stage 1 (64 channels at 56 x 56 for a 224 input): the
# stride-1 layer of a block and the stride-2 layer that opens stage 2 (128 channels, 56 -> 28).
OPTION_LAYERS = [('stage 1, stride 1: 64 -> 64, 56 x 56', dict(in_channels=64, out_channels=64),
                  (1, 64, 56, 56)),
                 ('stage 2 entry, stride 2: 128 -> 128, 56 x 56 -> 28 x 28',
                  dict(in_channels=128, out_channels=128, stride=2), (1, 128, 56, 56))]
OPTIONS = [('paper (8 heads, shared tables, no bias, avgpool)', {}),
           ('head_dim=16', dict(heads=None, head_dim=16)),
           ('position_bias=True', dict(position_bias=True)),
           ("relative_tables='per_head'", dict(relative_tables='per_head')),
           ("downsample='query'", dict(downsample='query'))]


def options_table() -> None:
    from sasa_det.layers import LocalSelfAttention2d
    from sasa_det.analysis import complexity
    print('### One SASA layer (k = 7) with each opt-in option\n')
    print('| layer | option | params | MMACs | params vs paper | MACs vs paper |')
    print('|---|---|---|---|---|---|')
    for layer_name, shape_args, input_shape in OPTION_LAYERS:
        paper = None
        for option_name, options in OPTIONS:
            layer = LocalSelfAttention2d(kernel_size=7, **shape_args, **options)
            result = complexity(layer, input_shape)
            paper = paper or result
            print(f'| {layer_name} | {option_name} | {result["params"]} | '
                  f'{result["macs"] / 1e6:.1f} | {result["params"] - paper["params"]:+d} | '
                  f'{percent(result["macs"], paper["macs"])} |', flush=True)
    print()


def main() -> None:
    from mmengine.logging import MMLogger
    # The current logger is the one mmengine's init messages go to: keep the tables readable.
    MMLogger.get_instance('complexity_tables', log_level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tables', nargs='+', choices=('imagenet', 'coco', 'options'),
                        default=['imagenet', 'coco', 'options'],
                        help='which tables to print (default: all three)')
    parser.add_argument('--imagenet-size', type=int, default=224,
                        help='square input side of the ImageNet table (default 224)')
    parser.add_argument('--coco-size', type=int, default=640,
                        help='square input side of the RetinaNet table (default 640)')
    args = parser.parse_args()
    torch.manual_seed(0)
    if 'imagenet' in args.tables:
        imagenet_table(args.imagenet_size)
    if 'coco' in args.tables:
        coco_table(args.coco_size)
    if 'options' in args.tables:
        options_table()


if __name__ == '__main__':
    main()
