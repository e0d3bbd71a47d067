"""Speed and peak memory of SASA layers against the 3x3 convolution they replace (CPU, fp32).

For each ResNet-50 stage shape (C, H = W), forward + backward (input and parameter gradients) of
    conv     nn.Conv2d(C, C, 3, padding=1, bias=False), the layer SASA replaces
    unfold   LocalSelfAttention2d(..., implementation='reference'): the full layer with the
             unfold op (a k*k*C copy of K and V per pixel, as most public SASA code does)
    ours     LocalSelfAttention2d(..., implementation='auto'): the fused C++ kernel on CPU
    sliced   LocalSelfAttention2d(..., implementation='sliced'): the pure-PyTorch fallback
all measured side by side in one run, in interleaved order, on the same input.

Time: median of --repeats runs after --warmup runs. Peak memory: the largest amount of memory
live in PyTorch's CPU allocator during one forward + backward, above what was live before it
(inputs and weights excluded; activations, saved tensors and gradients included), from the
allocation and free events of torch.profiler(profile_memory=True). Scratch memory that a library
manages itself (oneDNN's convolution workspace, the kernel's per-thread row buffers of
k*k*W floats) is not seen by that allocator.

    python tools/benchmark.py                 # the issue-3 table
    python tools/benchmark.py --quick         # smoke test: one small shape, few repeats
"""
import argparse
import os
import platform
import statistics
import time

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler's own log off the table

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sasa_det.layers import LocalSelfAttention2d  # noqa: E402
from sasa_det.ops import cpu_kernel  # noqa: E402

STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))
METHODS = ('conv', 'unfold', 'ours', 'sliced')


def build(method: str, channels: int, kernel_size: int, heads: int) -> nn.Module:
    if method == 'conv':
        return nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    implementation = {'unfold': 'reference', 'ours': 'auto', 'sliced': 'sliced'}[method]
    return LocalSelfAttention2d(channels, channels, kernel_size, heads=heads,
                                implementation=implementation)


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    """One forward + backward; gradients are dropped so that each step allocates them anew."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).backward(grad)


def median_ms(layers, x, grad, warmup: int, repeats: int):
    """Median wall time per method; methods are interleaved so that load drifts hit all alike."""
    for _ in range(warmup):
        for layer in layers.values():
            step(layer, x, grad)
    times = {name: [] for name in layers}
    for _ in range(repeats):
        for name, layer in layers.items():
            start = time.perf_counter()
            step(layer, x, grad)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def peak_mib(layer, x, grad) -> float:
    """Peak of the running sum of allocations minus frees during one step, in MiB."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(layer, x, grad)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2 ** 20


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stages', default=','.join(f'{c}x{h}' for c, h in STAGES),
                        help='comma-separated CxH shapes, e.g. 64x56,128x28')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--kernel-size', type=int, default=7)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--methods', default=','.join(METHODS),
                        help=f'comma-separated subset of {METHODS}')
    parser.add_argument('--no-memory', action='store_true', help='skip the profiler pass')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: one small shape, 1 warm-up, 2 repeats')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = [tuple(int(v) for v in s.split('x')) for s in args.stages.split(',')]
    if args.quick:
        stages, args.warmup, args.repeats = [(32, 14)], 1, 2
    methods = [m for m in args.methods.split(',') if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f'unknown methods {sorted(unknown)}; allowed: {METHODS}')

    kernel = 'fused C++ kernel' if cpu_kernel.is_available() else 'C++ kernel UNAVAILABLE -> sliced'
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'machine: {cpu_name()}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, load average {load:.2f}; ours = {kernel}')
    print(f'forward+backward, fp32, batch {args.batch}, k={args.kernel_size}, '
          f'{args.heads} heads; median of {args.repeats} after {args.warmup} warm-up')
    print('peak = max live bytes in the PyTorch CPU allocator during one step, above the '
          'inputs and weights (torch.profiler memory events)\n')

    header = f"{'C x H':>9} | " + ' | '.join(f'{m + " ms":>10} {m + " MiB":>10}' for m in methods)
    ratios = [r for r, need in (('ours/conv', {'ours', 'conv'}), ('unfold/ours', {'unfold', 'ours'}),
                                ('sliced/conv', {'sliced', 'conv'}),
                                ('mem unfold/ours', {'unfold', 'ours'})) if need <= set(methods)]
    print(header + (' | ' + ' '.join(f'{r:>15}' for r in ratios) if ratios else ''))
    torch.manual_seed(0)
    for channels, size in stages:
        x = torch.randn(args.batch, channels, size, size, requires_grad=True)
        grad = torch.randn(args.batch, channels, size, size)
        layers = {m: build(m, channels, args.kernel_size, args.heads) for m in methods}
        ms = median_ms(layers, x, grad, args.warmup, args.repeats)
        mib = ({m: float('nan') for m in methods} if args.no_memory
               else {m: peak_mib(layer, x, grad) for m, layer in layers.items()})
        row = f'{channels:>4} x {size:<2} | ' + ' | '.join(
            f'{ms[m]:>10.1f} {mib[m]:>10.1f}' for m in methods)
        values = {'ours/conv': lambda: ms['ours'] / ms['conv'],
                  'unfold/ours': lambda: ms['unfold'] / ms['ours'],
                  'sliced/conv': lambda: ms['sliced'] / ms['conv'],
                  'mem unfold/ours': lambda: mib['unfold'] / mib['ours']}
        if ratios:
            row += ' | ' + ' '.join(f'{values[r]():>14.2f}x' for r in ratios)
        print(row, flush=True)


if __name__ == '__main__':
    main()
