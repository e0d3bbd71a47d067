r"""Time a ResNet-50 backbone's forward+backward with 3x3 convolutions against the SASA one.

    # on a GPU: 640 x 640 and 800 x 1333, batch 2, float32 and bfloat16 autocast
    python tools/backbone_benchmark.py --device cuda

    # tiny shapes on CPU (the dry run of tools/gpu_check.sh)
    python tools/backbone_benchmark.py --device cpu --sizes 64x64 --batch 1 --repeats 1

With mmdet importable the two are mmdet's ``ResNet`` (depth 50) and sasa_det's ``SASAResNet``
(depth 50, attention in every stage, convolutional stem), as the COCO configs build them.
Without OpenMMLab (a bare GPU machine with only PyTorch and Triton) both are built here from the
same bottleneck blocks, the 3x3 convolution or ``sasa_det.layers.LocalSelfAttention2d`` (k = 7,
8 heads, stride 2 as stride-1 attention and a 2x2 average pool) in each block's middle: the same
layer counts and widths, BatchNorm, no FPN. Prints median milliseconds and peak memory (CUDA).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sasa_det.layers import LocalSelfAttention2d  # noqa: E402

DEPTHS = (3, 4, 6, 3)  # ResNet-50
WIDTHS = (64, 128, 256, 512)


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, attention: bool):
        super().__init__()
        out = width * 4
        if attention:
            spatial = LocalSelfAttention2d(width, width, 7, stride=stride, heads=8)
        else:
            spatial = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            spatial, nn.BatchNorm2d(width), nn.ReLU(True),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out else nn.Sequential(
            nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
            nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def standalone_resnet50(attention: bool) -> nn.Module:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
              nn.MaxPool2d(3, 2, 1)]
    channels = 64
    for stage, (depth, width) in enumerate(zip(DEPTHS, WIDTHS)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(Bottleneck(channels, width, stride, attention))
            channels = width * 4
    return nn.Sequential(*layers)


def backbones() -> tuple[str, dict[str, nn.Module]]:
    """('mmdet' or 'standalone', {'conv': ..., 'sasa': ...})."""
    try:
        import sasa_det.models  # noqa: F401  (registers SASAResNet)
        from mmdet.registry import MODELS
    except ImportError:
        return 'standalone', dict(conv=standalone_resnet50(False),
                                  sasa=standalone_resnet50(True))
    return 'mmdet', dict(conv=MODELS.build(dict(type='ResNet', depth=50)),
                         sasa=MODELS.build(dict(type='SASAResNet', depth=50)))


def time_step(model, x, dtype, device, warmup, repeats):
    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
            loss = sum(o.float().mean() for o in (out if isinstance(out, (tuple, list)) else [out]))
        loss.backward()
    for _ in range(warmup):
        step()
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == 'cuda' else float('nan')
    return statistics.median(times), peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', choices=('cpu', 'cuda'))
    parser.add_argument('--sizes', default='640x640,800x1333', help='H x W, comma separated')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dtypes', default='float32,bfloat16')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    args = parser.parse_args(argv)
    source, models = backbones()
    print(f'ResNet-50 backbones ({source}), batch {args.batch}, fwd+bwd, median of '
          f'{args.repeats} after {args.warmup} warm-up steps, device {args.device}')
    print('| size | dtype | conv ms | SASA ms | SASA / conv | conv peak MiB | SASA peak MiB |')
    print('|---|---|---|---|---|---|---|')
    for model in models.values():
        model.to(args.device).train()
    for size in args.sizes.split(','):
        height, width = map(int, size.lower().split('x'))
        x = torch.randn(args.batch, 3, height, width, device=args.device)
        for dtype_name in args.dtypes.split(','):
            dtype = getattr(torch, dtype_name)
            conv_ms, conv_mib = time_step(models['conv'], x, dtype, args.device, args.warmup,
                                          args.repeats)
            sasa_ms, sasa_mib = time_step(models['sasa'], x, dtype, args.device, args.warmup,
                                          args.repeats)
            print(f'| {size} | {dtype_name} | {conv_ms:.1f} | {sasa_ms:.1f} | '
                  f'{sasa_ms / conv_ms:.2f}x | {conv_mib:.0f} | {sasa_mib:.0f} |', flush=True)


if __name__ == '__main__':
    main()
