"""Speed and peak memory of SASA layers against the 3x3 convolution they replace (CPU or CUDA).

For each layer shape C x H (x W), on the same input, methods measured side by side in interleaved
order (so that load drifts hit all alike):
    conv             nn.Conv2d(C, C, 3, padding=1, bias=False), the layer SASA replaces
    unfold           LocalSelfAttention2d(..., implementation='reference'): the unfold op (a
                     k*k*C copy of K and V per pixel, as most public SASA code does)
    ours             implementation='auto': the fused C++ kernel on CPU, Triton on CUDA (on CPU
                     the whole layer as one autograd Function, sasa_det.ops.cpu_layer)
    composed         ours on CPU with the layer composed of recorded PyTorch ops around the
                     kernel (sasa_det.ops.cpu_layer.composed())
    sliced           implementation='sliced': the pure-PyTorch loop over the k*k offsets
    triton           implementation='triton' (CUDA only); triton@<tile>/<warps>, e.g.
                     triton@1024/8, with other tile sizes (triton_op.TILE_ELEMENTS, NUM_WARPS)
    sliced_compiled  the sliced layer under torch.compile (compilation happens in the warm-up)

CPU runs use the training tools' allocator settings (glibc keeps freed memory for reuse,
sasa_det.utils.keep_freed_memory; --malloc-defaults for glibc's own) and print them.

Time: median of --repeats runs after --warmup runs, of forward + backward (input and parameter
gradients) and, with --device cuda, of the forward alone under no_grad. Peak memory of one
forward + backward, above what was live before it (inputs and weights excluded; activations,
saved tensors and gradients included): on CPU from torch.profiler's allocation events (scratch
memory that a library manages itself, like oneDNN's workspace, is not seen), on CUDA from
torch.cuda.max_memory_allocated.

--dtype bfloat16 or float16 runs under torch.autocast(device, dtype), as --amp training does:
convolutions and projections run in that dtype and the attention op receives it.

--detector times whole RetinaNet training steps (forward, loss, backward, SGD step) instead: the
conv R-50, the SASA backbone with the conv FPN/head, and attention everywhere, at 640 x 640 on CPU
(and 1333 x 800 on CUDA), one step of each config in turn so that load drifts hit all alike.
--demo does the same for the demo's conv and SASA models at their own size (128 x 128), batch and
optimizer (AdamW with gradient clipping). --composed adds a row per attention config with its
layers composed of recorded ops (the 'composed' method), interleaved with the others.
--per-layer breaks the attention configs' steps down instead: each distinct SASA layer call of
one forward (input shape, window, stride), forward + backward, against the 3x3 convolution with
the same channels and stride that it replaces, with its number of calls per step. Both need
mmdet (and, on CUDA, an mmcv built with CUDA ops for mmdet's focal loss). The layer benchmark
needs PyTorch only.

    python tools/benchmark.py                            # CPU, fp32: the ResNet-50 stage shapes
    python tools/benchmark.py --dtype bfloat16           # the same under bf16 autocast
    python tools/benchmark.py --layer configs            # cosine similarity + position bias
    python tools/benchmark.py --device cuda              # GPU: fp32 and bf16, + COCO stage 1
    python tools/benchmark.py --device cuda --methods conv,triton,sliced_compiled
    python tools/benchmark.py --device cuda --methods triton,triton@256/4,triton@1024/8
    python tools/benchmark.py --detector                 # RetinaNet R-50 training steps
    python tools/benchmark.py --demo                     # the demo models' training steps
    python tools/benchmark.py --demo --profile           # ... and where each step's time goes
    python tools/benchmark.py --demo --composed          # ... and with the composed layer
    python tools/benchmark.py --demo --per-layer         # ... each attention layer against conv
    python tools/benchmark.py --device cuda --detector   # GPU: RetinaNet training steps
    python tools/benchmark.py --quick                    # smoke test: one small shape
"""
import argparse
import contextlib
import copy
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler's own log off the table

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sasa_det.layers import LocalSelfAttention2d  # noqa: E402
from sasa_det.ops import cpu_layer  # noqa: E402
from sasa_det.utils import keep_freed_memory  # noqa: E402
from sasa_det.utils.allocator import chosen_by_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ('64x56', '128x28', '256x14', '512x7')  # ResNet-50's 3x3 convs at a 224 x 224 input
COCO_STAGE1 = '64x200x336'  # stage 1 (stride 4) of a 1333 x 800 COCO input
METHODS = ('conv', 'unfold', 'ours', 'composed', 'sliced', 'triton', 'sliced_compiled')
# sliced_compiled is opt-in: Inductor compiles the 49-offset loop anew per shape, dtype and grad
# mode, which may take minutes in all.
DEFAULT_METHODS = {'cpu': 'conv,unfold,ours,sliced', 'cuda': 'conv,sliced,triton'}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# conv; SASA backbone with the conv FPN/head; attention everywhere.
DETECTOR_CONFIGS = ('retinanet_r50.py', 'retinanet_sasa_r50_convhead.py', 'retinanet_sasa_r50.py')
# The SASA layer as the paper defines it, or as the shipped configs set it.
LAYER_OPTIONS = {'paper': {}, 'configs': dict(similarity='cosine', position_bias=True)}
DETECTOR_SIZES = {'cpu': '640x640', 'cuda': '640x640,800x1333'}  # H x W
DEMO_CONFIGS = ('demo/retinanet_r26w16_demo.py', 'demo/retinanet_sasa_r26w16_demo.py')


def triton_setting(method: str):
    """(TILE_ELEMENTS, NUM_WARPS) of a triton method: its own for triton@<tile>/<warps>, the
    shipped ones for triton; None for the other methods."""
    if method.split('@')[0] != 'triton':
        return None
    from sasa_det.ops import triton_op
    tile, _, warps = method.partition('@')[2].partition('/')
    return int(tile or triton_op.TILE_ELEMENTS), int(warps or triton_op.NUM_WARPS)


def build(method: str, channels: int, kernel_size: int, heads: int,
          layer: str = 'paper') -> nn.Module:
    if method == 'conv':
        return nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    implementation = {'unfold': 'reference', 'ours': 'auto', 'composed': 'auto',
                      'sliced': 'sliced', 'triton': 'triton',
                      'sliced_compiled': 'sliced'}[method.split('@')[0]]
    module = LocalSelfAttention2d(channels, channels, kernel_size, heads=heads,
                                  implementation=implementation, **LAYER_OPTIONS[layer])
    module.triton_setting = triton_setting(method)
    module.composed = method == 'composed'
    return torch.compile(module) if method == 'sliced_compiled' else module


def autocast(device: str, dtype: torch.dtype):
    """torch.autocast for bfloat16/float16, nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype,
         backward: bool = True) -> None:
    """One forward (+ backward); gradients are dropped so that each step allocates them anew."""
    setting = getattr(layer, 'triton_setting', None)
    if setting is not None:  # the Triton launches read these at each call
        from sasa_det.ops import triton_op
        triton_op.TILE_ELEMENTS, triton_op.NUM_WARPS = setting
    with composed_if(getattr(layer, 'composed', False)):
        if not backward:
            with torch.no_grad(), autocast(x.device.type, dtype):
                layer(x)
            return
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(x.device.type, dtype):
            y = layer(x)
        y.backward(grad.to(y.dtype))


def composed_if(condition: bool):
    """sasa_det.ops.cpu_layer.composed() when condition holds, else nothing."""
    return cpu_layer.composed() if condition else contextlib.nullcontext()


def median_ms(layers, x, grad, dtype, warmup: int, repeats: int, backward: bool = True):
    """Median wall time per method; methods are interleaved so that load drifts hit all alike."""
    device = x.device.type
    for _ in range(warmup):
        for layer in layers.values():
            step(layer, x, grad, dtype, backward)
    times = {name: [] for name in layers}
    for _ in range(repeats):
        for name, layer in layers.items():
            synchronize(device)
            start = time.perf_counter()
            step(layer, x, grad, dtype, backward)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def peak_mib(layer, x, grad, dtype) -> float:
    """Peak live memory above the start during one forward + backward, in MiB."""
    if x.device.type == 'cuda':
        synchronize('cuda')
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(layer, x, grad, dtype)
        synchronize('cuda')
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    # CPU: the running sum of the profiler's allocation and free events.
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                           profile_memory=True) as prof:
        step(layer, x, grad, dtype)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2 ** 20


def print_profile(label: str, fn, steps: int, rows: int = 15) -> None:
    """torch.profiler's operators of `steps` calls of fn, by self CPU time: where a step's time
    goes. On CPU the SASA layer's forward and backward are _SasaLayerCpu[Backward], the kernel
    included (_CpuLocalAttention[Backward] where the layer takes the composed path)."""
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    print(f'\nprofile of {label}, {steps} steps (times are totals over the steps):')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


def machine(device: str, malloc: str) -> str:
    if device == 'cuda':
        name = torch.cuda.get_device_name()
        try:
            import triton
            extra = f', triton {triton.__version__}'
        except ImportError:
            extra = ', triton not installed'
        return f'{name}, torch {torch.__version__} (CUDA {torch.version.cuda}){extra}'
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    return (f'{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
            f'load average {load:.2f}, {malloc}')


def parse_shape(text: str):
    """'CxH' (square) or 'CxHxW' -> (C, H, W)."""
    sizes = text.split('x')
    if len(sizes) not in (2, 3) or not all(v.isdigit() and int(v) > 0 for v in sizes):
        raise argparse.ArgumentTypeError(f'--stages are CxH or CxHxW, got {text!r}')
    sizes = [int(v) for v in sizes]
    return (sizes[0], sizes[1], sizes[-1])


def parse_size(text: str):
    """'HxW' -> (H, W)."""
    sizes = text.split('x')
    if len(sizes) != 2 or not all(v.isdigit() and int(v) > 0 for v in sizes):
        raise argparse.ArgumentTypeError(f'--sizes are HxW, got {text!r}')
    return int(sizes[0]), int(sizes[1])


@contextlib.contextmanager
def native_stderr_silenced():
    """Drop what native code writes to stderr inside the block: torch.profiler's kineto prints
    a 'USDT: ... profiler_start/profiler_stop' pair per profile, which interleaved the table."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def layer_inputs(shape, batch: int, device: str):
    channels, height, width = shape
    x = torch.randn(batch, channels, height, width, device=device, requires_grad=True)
    return x, torch.randn(batch, channels, height, width, device=device)


def auto_implementation(device: str, methods) -> str:
    """'; ours = <what implementation='auto' runs here>' when 'ours' is measured, else ''."""
    if 'ours' not in methods:
        return ''
    return f'; ours = {_auto(device)}'


def _auto(device: str) -> str:
    if device == 'cuda':
        from sasa_det.ops.local_attention import _triton
        return 'Triton kernel' if _triton() is not None else 'Triton UNAVAILABLE -> sliced'
    from sasa_det.ops import cpu_kernel
    with native_stderr_silenced():  # torch.utils.cpp_extension's "No CUDA runtime" warning
        available = cpu_kernel.is_available()
    return 'fused C++ kernel' if available else 'C++ kernel UNAVAILABLE -> sliced'


def wide_table(args, device: str, dtype_name: str) -> None:
    """One row per shape: forward+backward ms and peak MiB per method, and their ratios."""
    dtype = DTYPES[dtype_name]
    print(f'machine: {machine(device, args.malloc)}{auto_implementation(device, args.methods)}')
    print(f'forward+backward, {dtype_name}{" autocast" if dtype != torch.float32 else ""}, '
          f'batch {args.batch}, k={args.kernel_size}, {args.heads} heads, {args.layer} layer; '
          f'median of {args.repeats} after {args.warmup} warm-up')
    print('peak = max live bytes in the PyTorch allocator during one step, above the inputs and '
          'weights (CPU: torch.profiler memory events)\n')
    methods = args.methods
    ratios = [r for r, need in (('ours/conv', {'ours', 'conv'}),
                                ('unfold/ours', {'unfold', 'ours'}),
                                ('ours/composed', {'ours', 'composed'}),
                                ('sliced/conv', {'sliced', 'conv'}),
                                ('mem unfold/ours', {'unfold', 'ours'})) if need <= set(methods)]
    header = f"{'C x H':>9} | " + ' | '.join(f'{m + " ms":>10} {m + " MiB":>10}' for m in methods)
    print(header + (' | ' + ' '.join(f'{r:>15}' for r in ratios) if ratios else ''))
    for shape in args.stages:
        x, grad = layer_inputs(shape, args.batch, device)
        layers = {m: build(m, shape[0], args.kernel_size, args.heads, args.layer).to(device)
                  for m in methods}
        ms = median_ms(layers, x, grad, dtype, args.warmup, args.repeats)
        mib = ({m: float('nan') for m in methods} if args.no_memory
               else {m: peak_mib(layer, x, grad, dtype) for m, layer in layers.items()})
        size = f'{shape[1]}' if shape[1] == shape[2] else f'{shape[1]}x{shape[2]}'
        row = f'{shape[0]:>4} x {size:<2} | ' + ' | '.join(
            f'{ms[m]:>10.1f} {mib[m]:>10.1f}' for m in methods)
        values = {'ours/conv': lambda: ms['ours'] / ms['conv'],
                  'unfold/ours': lambda: ms['unfold'] / ms['ours'],
                  'ours/composed': lambda: ms['ours'] / ms['composed'],
                  'sliced/conv': lambda: ms['sliced'] / ms['conv'],
                  'mem unfold/ours': lambda: mib['unfold'] / mib['ours']}
        if ratios:
            row += ' | ' + ' '.join(f'{values[r]():>14.2f}x' for r in ratios)
        print(row, flush=True)
        if args.profile:
            for method, layer in layers.items():
                print_profile(f'{method} at {shape}', lambda: step(layer, x, grad, dtype),
                              args.repeats)


def long_table(args, device: str, dtype_name: str) -> None:
    """One line per shape and method: forward ms, forward+backward ms, peak MiB, x conv."""
    dtype = DTYPES[dtype_name]
    print(f'\n{dtype_name}{" autocast" if dtype != torch.float32 else ""}, batch {args.batch}, '
          f'k={args.kernel_size}, {args.heads} heads, {args.layer} layer; median of '
          f'{args.repeats} after {args.warmup} warm-up; peak = max allocated above the start of '
          f'one fwd+bwd step')
    print(f"{'C x H x W':>14} {'method':>16} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} "
          f"{'fwd+bwd / conv':>15}")
    for shape in args.stages:
        x, grad = layer_inputs(shape, args.batch, device)
        layers = {m: build(m, shape[0], args.kernel_size, args.heads, args.layer).to(device)
                  for m in args.methods}
        train = median_ms(layers, x, grad, dtype, args.warmup, args.repeats)
        infer = median_ms(layers, x, grad, dtype, args.warmup, args.repeats, backward=False)
        for method, layer in layers.items():
            mib = float('nan') if args.no_memory else peak_mib(layer, x, grad, dtype)
            ratio = train[method] / train['conv'] if 'conv' in train else float('nan')
            print(f"{'x'.join(map(str, shape)):>14} {method:>16} {infer[method]:>9.2f} "
                  f"{train[method]:>11.2f} {mib:>9.1f} {ratio:>14.2f}x", flush=True)


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, device: str):
    """Random images and 4 random boxes per image, as mmdet's model.loss takes them."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    images = torch.randn(batch, 3, height, width, device=device)
    samples = []
    for _ in range(batch):
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), pad_shape=(height, width),
                                             batch_input_shape=(height, width),
                                             scale_factor=(1.0, 1.0)))
        size = torch.tensor([width, height], device=device, dtype=torch.float32)
        corner = torch.rand(4, 2, device=device) * size / 2
        boxes = torch.cat([corner, corner + size / 3], 1)  # (x1, y1, x2, y2) inside the image
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(0, num_classes, (4,), device=device))
        samples.append(sample)
    return images, samples


class TrainStep:
    """One training step of a config's model on a fixed synthetic batch: forward, loss,
    backward and the optimizer step (the config's own optim_wrapper with --demo, plain SGD
    otherwise)."""

    def __init__(self, path: Path, args, device: str, dtype: torch.dtype, size=None):
        from mmdet.registry import MODELS
        from mmengine.config import Config
        from mmengine.optim import build_optim_wrapper
        cfg = Config.fromfile(path)
        self.name = str(path.relative_to(ROOT / 'configs'))
        self.composed = False
        self.model = MODELS.build(cfg.model).to(device).train()
        if args.demo:
            self.optim = build_optim_wrapper(self.model, cfg.optim_wrapper)
            batch = cfg.train_dataloader.batch_size
            size = size or (cfg.image_size[1], cfg.image_size[0])  # image_size is (w, h)
        else:
            self.optim = build_optim_wrapper(self.model, dict(
                type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-4, momentum=0.9)))
            batch = args.batch
        self.height, self.width = size
        self.batch = batch
        self.params = sum(p.numel() for p in self.model.parameters())
        self.inputs = synthetic_batch(batch, *size, cfg.model.bbox_head.num_classes, device)
        self.device, self.dtype = device, dtype

    def has_attention(self) -> bool:
        return any(isinstance(m, LocalSelfAttention2d) for m in self.model.modules())

    def composed_twin(self) -> 'TrainStep':
        """The same model, optimizer and batch, its SASA layers composed of recorded ops."""
        twin = copy.copy(self)
        twin.name, twin.composed = f'{self.name}:composed', True
        return twin

    def __call__(self) -> None:
        with composed_if(self.composed):
            with autocast(self.device, self.dtype):
                losses = self.model.loss(*self.inputs)
            loss = sum(v if torch.is_tensor(v) else sum(v) for v in losses.values())
            self.optim.update_params(loss)


def attention_calls(train_step: TrainStep):
    """{(input shape, kernel size, stride, out channels): [first module, calls]} over the SASA
    layer calls of one forward of the model on its batch."""
    calls = {}

    def record(module, inputs, output):
        key = (tuple(inputs[0].shape), module.kernel_size, module.stride, module.out_channels)
        calls.setdefault(key, [module, 0])[1] += 1

    hooks = [m.register_forward_hook(record) for m in train_step.model.modules()
             if isinstance(m, LocalSelfAttention2d)]
    try:
        with torch.no_grad():
            train_step.model.loss(*train_step.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def per_layer_table(train_step: TrainStep, args, dtype: torch.dtype) -> None:
    """Forward + backward of each distinct SASA layer call of the model against the 3x3
    convolution (same channels, stride 1 or 2) that it replaces, interleaved."""
    print(f'\n{train_step.name}: each distinct attention layer call, forward + backward, median '
          f'of {args.repeats} after {args.warmup} warm-up; gap = (SASA - conv) x calls per step')
    print(f"{'input B x C x H x W':>22} {'k':>2} {'stride':>6} {'calls':>5} {'conv ms':>8} "
          f"{'SASA ms':>8} {'SASA/conv':>9} {'gap ms':>7}")
    totals = [0.0, 0.0]
    for (shape, kernel_size, stride, out_channels), (module, count) in \
            attention_calls(train_step).items():
        conv = nn.Conv2d(shape[1], out_channels, 3, stride=stride, padding=1,
                         bias=False).to(train_step.device)
        x = torch.randn(shape, device=train_step.device, requires_grad=True)
        with torch.no_grad():
            grad = torch.randn_like(module(x))
        times = median_ms({'conv': conv, 'sasa': module}, x, grad, dtype, args.warmup,
                          args.repeats)
        totals[0] += count * times['conv']
        totals[1] += count * times['sasa']
        print(f"{' x '.join(map(str, shape)):>22} {kernel_size:>2} {stride:>6} {count:>5} "
              f"{times['conv']:>8.2f} {times['sasa']:>8.2f} "
              f"{times['sasa'] / times['conv']:>8.2f}x "
              f"{count * (times['sasa'] - times['conv']):>7.1f}", flush=True)
    print(f"{'all calls of a step':>22} {'':>2} {'':>6} {'':>5} {totals[0]:>8.1f} "
          f"{totals[1]:>8.1f} {totals[1] / totals[0]:>8.2f}x {totals[1] - totals[0]:>7.1f}")


def detector_steps(args, device: str, dtype_name: str) -> None:
    """Median training-step time of whole RetinaNets, the configs interleaved step by step so
    that load drifts hit all alike (needs mmdet); with --per-layer, the attention configs' layer
    calls against the convolutions they replace instead."""
    try:
        import mmdet  # noqa: F401
    except ImportError:
        sys.exit('--detector and --demo need mmdet (and mmengine, mmcv); the layer benchmark '
                 'does not')
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    import sasa_det  # noqa: F401  (registers the SASA models)
    register_all_modules()
    # The current logger: mmengine's INFO lines (one per parameter group) would bury the table.
    MMLogger.get_instance('sasa_det_benchmark', log_level='WARNING')
    dtype = DTYPES[dtype_name]
    if args.per_layer:
        for size in args.sizes or [None]:
            for name in args.detector_configs:
                train_step = TrainStep(ROOT / 'configs' / name, args, device, dtype, size)
                if train_step.has_attention():
                    per_layer_table(train_step, args, dtype)
        return
    what = 'demo models, their own batch and optimizer' if args.demo else \
        f'batch {args.batch}, SGD'
    print(f'\nwhole-detector training step (forward, loss, backward, optimizer step), {what}, '
          f'{dtype_name}{" autocast" if dtype != torch.float32 else ""}; median of '
          f'{args.repeats} after {args.warmup} warm-up, configs interleaved; ratio = step / the '
          f'first config\'s step')
    print(f"{'config':>45} {'H x W':>9} {'batch':>5} {'params M':>8} {'step ms':>9} "
          f"{'ratio':>6} {'peak MiB':>9}")
    for size in args.sizes or [None]:
        steps = [TrainStep(ROOT / 'configs' / name, args, device, dtype, size)
                 for name in args.detector_configs]
        if args.composed:
            steps += [step.composed_twin() for step in steps if step.has_attention()]
        times = {step.name: [] for step in steps}
        peaks = {}
        for repeat in range(args.warmup + args.repeats):
            for step in steps:
                if device == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                if repeat >= args.warmup:
                    times[step.name].append(time.perf_counter() - start)
                if device == 'cuda':
                    peaks[step.name] = torch.cuda.max_memory_allocated() / 2 ** 20
        if args.profile:
            for step in steps:
                print_profile(step.name, step, args.repeats)
        first = statistics.median(times[steps[0].name])
        for step in steps:
            median = statistics.median(times[step.name])
            print(f'{step.name:>45} {step.height:>4}x{step.width:<4} {step.batch:>5} '
                  f'{step.params / 1e6:>8.2f} {1e3 * median:>9.1f} {median / first:>5.2f}x '
                  f'{peaks.get(step.name, float("nan")):>9.1f}', flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--dtype', default=None,
                        help=f'comma-separated subset of {tuple(DTYPES)}; default float32 on '
                             'CPU, float32,bfloat16 on CUDA')
    parser.add_argument('--stages', default=None,
                        help='comma-separated CxH or CxHxW shapes; default the ResNet-50 stages '
                             f'{",".join(STAGES)} (CUDA: and COCO stage 1, {COCO_STAGE1})')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--kernel-size', type=int, default=7)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--layer', choices=tuple(LAYER_OPTIONS), default='paper',
                        help='the SASA layer as the paper defines it (dot product; default) or '
                             'as the shipped configs set it (cosine similarity, position bias)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--methods', default=None,
                        help=f'comma-separated subset of {METHODS}; default '
                             f'{DEFAULT_METHODS["cpu"]} on CPU, {DEFAULT_METHODS["cuda"]} on CUDA')
    parser.add_argument('--table', choices=('wide', 'long'), default=None,
                        help='wide (CPU default): fwd+bwd per method in columns; long (CUDA '
                             'default): a line per method with forward and fwd+bwd times')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory pass')
    parser.add_argument('--detector', action='store_true',
                        help=f'time whole RetinaNet training steps instead, interleaved: '
                             f'{", ".join(DETECTOR_CONFIGS)} (needs mmdet)')
    parser.add_argument('--demo', action='store_true',
                        help=f'time the demo models\' training steps instead, interleaved, at '
                             f'their size, batch and optimizer: {", ".join(DEMO_CONFIGS)}')
    parser.add_argument('--composed', action='store_true',
                        help='with --detector or --demo: also time each attention config with '
                             'its SASA layers composed of recorded ops (the composed method)')
    parser.add_argument('--per-layer', action='store_true',
                        help='with --detector or --demo: instead of whole steps, time each '
                             'distinct SASA layer call of the attention configs against the 3x3 '
                             'convolution it replaces')
    parser.add_argument('--detector-configs', default=None,
                        help='comma-separated config files under configs/ for --detector or '
                             '--demo; the first is the ratio\'s reference')
    parser.add_argument('--sizes', default=None,
                        help=f'comma-separated HxW input sizes for --detector; default '
                             f'{DETECTOR_SIZES["cpu"]} on CPU, {DETECTOR_SIZES["cuda"]} on CUDA '
                             '(--demo: the config\'s own)')
    parser.add_argument('--profile', action='store_true',
                        help='after timing, print torch.profiler\'s operator table of each '
                             'method (layer benchmark) or config (--detector, --demo)')
    parser.add_argument('--malloc-defaults', action='store_true',
                        help='run under glibc\'s malloc defaults instead of the settings '
                             'tools/train.py uses (sasa_det.utils.keep_freed_memory)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: one small shape, 1 warm-up, 2 repeats')
    args = parser.parse_args()
    device = args.device
    if device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch.cuda.is_available() is False here')
    args.dtypes = (args.dtype or ('float32,bfloat16' if device == 'cuda' else 'float32')).split(',')
    bad = [d for d in args.dtypes if d not in DTYPES]
    if bad:
        parser.error(f'unknown --dtype {bad}; allowed: {tuple(DTYPES)}')
    args.methods = [m for m in (args.methods or DEFAULT_METHODS[device]).split(',') if m]
    unknown = [m for m in args.methods
               if m not in METHODS and not re.fullmatch(r'triton@\d+(/\d+)?', m)]
    if unknown:
        parser.error(f'unknown methods {unknown}; allowed: {METHODS} and triton@<tile>/<warps>')
    if device == 'cpu' and any(m.startswith('triton') for m in args.methods):
        parser.error('method triton needs --device cuda')
    stages = args.stages or ','.join(STAGES + ((COCO_STAGE1,) if device == 'cuda' else ()))
    try:
        args.stages = [parse_shape(s) for s in stages.split(',')]
        sizes = args.sizes or (None if args.demo else DETECTOR_SIZES[device])
        args.sizes = [parse_size(s) for s in sizes.split(',')] if sizes else None
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.detector and args.demo:
        parser.error('--detector and --demo each choose the configs; give one of them')
    if args.per_layer and not (args.detector or args.demo):
        parser.error('--per-layer breaks down the models of --detector or --demo; give one')
    if args.composed and args.per_layer:
        parser.error('--composed adds whole-step rows; --per-layer times layers: give one')
    if args.composed and not (args.detector or args.demo):
        parser.error('--composed adds rows to --detector or --demo; for one layer use '
                     '--methods ...,composed')
    args.detector_configs = (args.detector_configs or ','.join(
        DEMO_CONFIGS if args.demo else DETECTOR_CONFIGS)).split(',')
    missing = [c for c in args.detector_configs if not (ROOT / 'configs' / c).is_file()]
    if missing:
        parser.error(f'--detector-configs: no such config under configs/: {missing}')
    args.table = args.table or ('long' if device == 'cuda' else 'wide')
    if args.quick:
        args.stages, args.warmup, args.repeats = [(32, 14, 14)], 1, 2
        if args.detector:
            args.sizes = [(64, 96)]
    return args


def main() -> None:
    args = parse_args()
    # The training tools' allocator settings (sasa_det.utils.allocator): as a training run has them.
    args.malloc = keep_freed_memory() if not args.malloc_defaults else \
        chosen_by_environment() or 'glibc malloc defaults (--malloc-defaults)'
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.table == 'long' or args.detector or args.demo:
        print(f'machine: {machine(args.device, args.malloc)}'
              f'{auto_implementation(args.device, args.methods)}')
    for dtype_name in args.dtypes:
        if args.detector or args.demo:
            detector_steps(args, args.device, dtype_name)
        elif args.table == 'long':
            long_table(args, args.device, dtype_name)
        else:
            wide_table(args, args.device, dtype_name)


if __name__ == '__main__':
    main()
