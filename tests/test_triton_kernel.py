"""The Triton kernels without a GPU: correct in Triton's interpreter, compilable for the GPUs, and
traceable by torch.compile's machinery on the compiled (GPU) path.

The interpreter cases (tests/triton_cases.py) need ``TRITON_INTERPRET=1`` from before
the kernels are imported, so they run in a child process; this process imports them compiled.
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import triton
from functorch.compile import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sasa_det.ops import local_attention, local_attention_2d, triton_kernel, triton_op

ROOT = Path(__file__).resolve().parents[1]
PTXAS = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'ptxas'
FLOAT32_POINTERS = {'lse_ptr', 'delta_ptr', 'dbias_ptr'}  # always float32, whatever the inputs


def test_interpreter_cases_pass_in_a_fresh_process():
    """Values and gradients against the reference, dtypes, determinism, opcheck, torch.compile:
    see tests/triton_cases.py (its output is shown on failure)."""
    env = {**os.environ, 'TRITON_INTERPRET': '1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', str(ROOT / 'tests' / 'triton_cases.py'),
         '-q', '-p', 'no:cacheprovider'], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, result.stdout[-10000:] + result.stderr[-3000:]
    assert re.search(r'\d+ passed', result.stdout) and 'failed' not in result.stdout


def _ptxas_report(kernel, arch: int, dtype: str, constexprs: dict) -> str:
    """Compile ``kernel`` for sm_<arch> with Triton (no GPU needed) and return ptxas's -v
    report of registers and spills."""
    signature = {name: 'constexpr' if name in constexprs
                 else ('*fp32' if name in FLOAT32_POINTERS else f'*{dtype}')
                 if name.endswith('_ptr') else 'i32' for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget('cuda', arch, 32),
                              options=dict(num_warps=triton_op.NUM_WARPS))
    with tempfile.NamedTemporaryFile('w', suffix='.ptx') as ptx:
        ptx.write(compiled.asm['ptx'])
        ptx.flush()
        gpu = f'sm_{arch}a' if arch == 90 else f'sm_{arch}'
        return subprocess.run([str(PTXAS), f'-arch={gpu}', '-v', ptx.name, '-o', os.devnull],
                              capture_output=True, text=True, check=True).stderr


@pytest.mark.parametrize('arch,dtype,head_dim,kernel_size,keys,rel,bias,mask', [
    (90, 'fp32', 8, 7, True, True, True, True),      # H200: ResNet-50 stage 1, 8 heads
    (90, 'bf16', 64, 7, True, True, True, True),     # H200: stage 4
    (90, 'fp16', 5, 3, False, False, True, False),   # positional logits only, 'zeros'
    (80, 'fp32', 16, 5, True, True, False, True),    # A100
])
def test_kernels_compile_for_the_gpu_with_at_most_a_few_bytes_of_spills(
        arch, dtype, head_dim, kernel_size, keys, rel, bias, mask):
    """The interpreter cannot catch compile errors or register spills; ptxas can, on CPU. Uses
    the tile sizes that run on a GPU (triton_op._blocks)."""
    block, block_d, block_dv = triton_op._blocks(head_dim, head_dim)
    shared = dict(KERNEL_SIZE=kernel_size, HAS_KEYS=keys, HAS_ROW=rel, HAS_COL=rel,
                  HAS_BIAS=bias, BLOCK=block, BLOCK_D=block_d, BLOCK_DV=block_dv)
    kernels = [(triton_kernel._forward_kernel, dict(MASK=mask)),
               (triton_kernel._backward_query_kernel,
                dict(MASK=mask, BLOCK_K=triton.next_power_of_2(kernel_size))),
               (triton_kernel._backward_key_kernel, {})]
    for kernel, extra in kernels:
        report = _ptxas_report(kernel, arch, dtype, {**shared, **extra})
        spills = [int(n) for n in re.findall(r'(\d+) bytes spill stores', report)]
        assert spills and max(spills) <= 64, f'{kernel.fn.__name__}: {report}'


def _traced_calls(fn, *args):
    """call_function targets of the graph AOTAutograd (torch.compile's middle layer) makes of
    ``fn`` on fake tensors that need no gradient."""
    graphs = []

    def capture(graph, example_inputs):
        graphs.append(graph)
        return graph

    aot_function(fn, fw_compiler=capture)(*args)
    return [str(node.target) for node in graphs[0].graph.nodes if node.op == 'call_function']


def test_the_gpu_operators_trace_into_their_kernels_with_fake_cuda_tensors():
    """On a GPU the operators are triton_ops: functionalized (as torch.compile's AOTAutograd
    does) they open up into the Triton kernels, which the compiler can then schedule, instead of
    staying opaque calls. Needs no GPU: fake CUDA tensors carry no data."""
    assert not triton_op.INTERPRETED
    with FakeTensorMode():
        q, k, v = (torch.empty(2, 5, 7, 2, d, device='cuda') for d in (4, 4, 6))
        row, col = (torch.empty(2, 5, 7, 2, 3, device='cuda') for _ in range(2))
        bias = torch.empty(2, 3, 3, device='cuda')
        out, lse = torch.ops.sasa_det.local_attention_triton(q, k, v, row, col, bias, 3, True, 1)
        forward = _traced_calls(
            lambda *t: torch.ops.sasa_det.local_attention_triton(*t, 3, True, 1),
            q, k, v, row, col, bias)
        backward = _traced_calls(
            lambda *t: torch.ops.sasa_det.local_attention_triton_backward(*t, 3, True, 1),
            out, q, k, v, row, col, bias, out, lse)
    for calls, launches in ((forward, 1), (backward, 2)):
        assert sum('triton_kernel_wrapper' in c for c in calls) == launches, calls
        assert not any('sasa_det' in c for c in calls), calls


def test_triton_on_cpu_tensors_outside_the_interpreter_is_refused():
    q = torch.randn(1, 3, 3, 1, 2)
    with pytest.raises(ValueError, match=r"CUDA device.*got devices \['cpu'\]"):
        local_attention_2d(q, q, q, 3, implementation='triton')


def test_auto_on_cpu_does_not_choose_triton(monkeypatch):
    """'auto' keeps CPU tensors on the C++ kernel or the sliced path (Triton would refuse them)."""
    def refuse(*args):
        raise AssertionError('auto chose Triton for CPU tensors')

    monkeypatch.setattr(triton_op, 'local_attention_2d_triton', refuse)
    monkeypatch.setattr(local_attention, '_cpu_kernel', lambda: None)  # no C++ build here
    q = torch.randn(1, 3, 3, 1, 2)
    local_attention_2d(q, q, q, 3, implementation='auto')


def test_disabling_triton_by_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv('SASA_DET_DISABLE_TRITON', '1')
    q = torch.randn(1, 3, 3, 1, 2)
    with pytest.raises(RuntimeError, match='SASA_DET_DISABLE_TRITON'):
        local_attention_2d(q, q, q, 3, implementation='triton')


def test_a_triton_that_failed_to_import_is_named_when_triton_is_asked_for(monkeypatch):
    """After a failed import (remembered, so it is not retried per call), 'auto' takes the sliced
    path and an explicit 'triton' says why it cannot run."""
    monkeypatch.setattr(local_attention, '_triton_error', RuntimeError('no libcuda'))
    assert local_attention._triton() is None
    q = torch.randn(1, 3, 3, 1, 2)
    with pytest.raises(RuntimeError, match="Triton does not import: RuntimeError.'no libcuda'"):
        local_attention_2d(q, q, q, 3, implementation='triton')
