"""tools/benchmark.py runs end to end and prints every method, the ratios and the machine."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(*args, check=True):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'benchmark.py'), *args],
                          capture_output=True, text=True, timeout=600, check=check)


def test_quick_benchmark_prints_times_memory_and_ratios():
    out = _benchmark('--quick').stdout
    assert re.search(r'machine: .*threads, load average', out)
    header = next(line for line in out.splitlines() if line.strip().startswith('C x H'))
    for column in ('conv ms', 'unfold ms', 'ours ms', 'sliced ms', 'ours/conv', 'unfold/ours',
                   'mem unfold/ours'):
        assert column in header
    row = next(line for line in out.splitlines() if line.strip().startswith('32 x 14'))
    numbers = [float(v) for v in re.findall(r'(\d+\.\d+)', row)]
    assert len(numbers) == 4 * 2 + 4 and all(v > 0 for v in numbers)  # ms+MiB per method, ratios


def test_profiler_lines_do_not_reach_the_output():
    """The CPU peak-memory pass runs torch.profiler, whose kineto prints USDT start/stop lines
    to stderr from C++; the benchmark silences them, so the table is not interleaved."""
    result = _benchmark('--quick')
    assert 'profiler_start' not in result.stderr + result.stdout
    assert 'USDT' not in result.stderr + result.stdout


def test_profile_prints_each_methods_operators_with_the_kernel_by_name():
    out = _benchmark('--quick', '--profile', '--methods', 'conv,ours', '--no-memory').stdout
    assert 'profile of conv at (32, 14, 14)' in out and 'profile of ours at (32, 14, 14)' in out
    ours = out[out.index('profile of ours'):]
    assert 'aten::convolution_backward' in out[:out.index('profile of ours')]
    assert '_SasaLayerCpuBackward' in ours and 'aten::bmm' in ours


def test_composed_method_profiles_the_kernel_inside_the_recorded_ops():
    """'ours' runs the whole layer as one autograd Function on CPU; 'composed' runs the same
    layer as recorded ops around the kernel, and the table gives their ratio."""
    out = _benchmark('--quick', '--profile', '--methods', 'ours,composed', '--no-memory').stdout
    header = next(line for line in out.splitlines() if line.strip().startswith('C x H'))
    assert 'ours/composed' in header
    ours = out[out.index('profile of ours'):out.index('profile of composed')]
    composed = out[out.index('profile of composed'):]
    assert '_SasaLayerCpuBackward' in ours and '_CpuLocalAttention' not in ours
    assert '_CpuLocalAttentionBackward' in composed and '_SasaLayerCpu' not in composed


def test_demo_with_composed_adds_a_row_for_the_attention_model_only():
    out = _benchmark('--demo', '--quick', '--composed').stdout
    names = [line.split()[0] for line in out.splitlines() if line.split()
             and line.split()[0].startswith('demo/')]
    assert names == ['demo/retinanet_r26w16_demo.py', 'demo/retinanet_sasa_r26w16_demo.py',
                     'demo/retinanet_sasa_r26w16_demo.py:composed']


@pytest.mark.parametrize('mode,configs', [
    ('--demo', ['demo/retinanet_r26w16_demo.py', 'demo/retinanet_sasa_r26w16_demo.py']),
    ('--detector', ['retinanet_r50.py', 'retinanet_sasa_r50_convhead.py',
                    'retinanet_sasa_r50.py']),
])
def test_detector_and_demo_modes_time_every_config_with_its_ratio_to_the_first(mode, configs):
    out = _benchmark(mode, '--quick').stdout
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in configs]
    assert [row[0] for row in rows] == configs
    for row in rows:
        size, batch, params, step_ms, ratio = row[1], int(row[2]), float(row[3]), \
            float(row[4]), float(row[5].rstrip('x'))
        assert size == ('128x128' if mode == '--demo' else '64x96')
        assert batch == (8 if mode == '--demo' else 2) and params > 0 and step_ms > 0
        assert ratio > 0
    assert rows[0][5] == '1.00x'  # the first config is the reference
    assert 'paramwise_options' not in out  # mmengine's per-parameter INFO lines stay out


def test_long_table_gives_forward_and_training_times_per_dtype_and_method():
    """The layout --device cuda prints, here on CPU: one line per dtype, shape and method with
    forward ms, forward+backward ms, peak MiB and the ratio to conv; bf16 runs under autocast."""
    out = _benchmark('--quick', '--table', 'long', '--dtype', 'float32,bfloat16',
                     '--methods', 'conv,sliced').stdout
    assert 'float32, batch 2' in out and 'bfloat16 autocast, batch 2' in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith('32x14x14')]
    assert [row[1] for row in rows] == ['conv', 'sliced'] * 2
    for row in rows:
        numbers = [float(v.rstrip('x')) for v in row[2:]]
        assert len(numbers) == 4 and all(v > 0 for v in numbers)
    assert all(row[-1] == '1.00x' for row in rows if row[1] == 'conv')


def _load_benchmark():
    spec = importlib.util.spec_from_file_location('benchmark', ROOT / 'tools' / 'benchmark.py')
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


@pytest.mark.parametrize('argv,message', [
    (['--methods', 'conv,triton'], 'method triton needs --device cuda'),
    (['--methods', 'conv,triton@512/4'], 'method triton needs --device cuda'),
    (['--methods', 'conv,cuda_kernel'], "unknown methods ['cuda_kernel']"),
    (['--dtype', 'float64'], "unknown --dtype ['float64']"),
    (['--detector', '--sizes', '640'], "--sizes are HxW, got '640'"),
    (['--demo', '--detector'], '--detector and --demo each choose the configs'),
    (['--demo', '--detector-configs', 'nope.py'], "no such config under configs/: ['nope.py']"),
    (['--composed'], '--composed adds rows to --detector or --demo'),
])
def test_gpu_only_methods_and_unknown_names_are_refused_by_name(monkeypatch, capsys, argv,
                                                                message):
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', *argv])
    with pytest.raises(SystemExit) as exit_info:
        _load_benchmark().parse_args()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_triton_tile_settings_are_parsed_from_the_method_name():
    """triton@<tile>/<warps> (for tuning on a GPU) sets the tile size and warps of its launches;
    plain triton restores the shipped ones."""
    from sasa_det.ops import triton_op
    benchmark = _load_benchmark()
    shipped = (triton_op.TILE_ELEMENTS, triton_op.NUM_WARPS)
    assert benchmark.triton_setting('triton@1024/8') == (1024, 8)
    assert benchmark.triton_setting('triton@256') == (256, shipped[1])
    assert benchmark.triton_setting('triton') == shipped
    assert benchmark.triton_setting('sliced') is None


def test_per_layer_lists_every_attention_call_of_the_demo_model_against_its_conv():
    """The SASA demo model's one forward makes 33 attention calls (13 distinct ones, stage 1's
    16-channel 32 x 32 layer first); each row gives the conv and SASA times and their ratio."""
    out = _benchmark('--demo', '--per-layer', '--quick').stdout
    rows = [line.split() for line in out.splitlines() if re.match(r'\s+8 x \d+ x \d+ x \d+ ', line)]
    assert len(rows) == 13 and rows[0][:7] == ['8', 'x', '16', 'x', '32', 'x', '32']
    assert sum(int(row[9]) for row in rows) == 33
    for row in rows:
        conv, sasa, ratio = float(row[10]), float(row[11]), float(row[12].rstrip('x'))
        assert conv > 0 and sasa > 0
        # Each printed to 2 decimals: the ratio of the unrounded times lies within these bounds.
        low, high = (sasa - 0.005) / (conv + 0.005), (sasa + 0.005) / (conv - 0.005)
        assert low - 0.005 <= ratio <= high + 0.005
    assert 'all calls of a step' in out and 'retinanet_r26w16_demo.py:' not in out
