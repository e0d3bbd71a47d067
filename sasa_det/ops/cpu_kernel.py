"""Fused C++ CPU kernel for local 2D self-attention, built on first use.

The extension (``csrc/local_attention.cpp``, and ``csrc/cosine_qk.cpp`` with the cosine
similarity's normalisation of q and k for :mod:`sasa_det.ops.cpu_layer`) is compiled with
``torch.utils.cpp_extension.load`` the first time a CPU tensor reaches
:func:`sasa_det.ops.local_attention_2d`, and cached in torch's extension directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), so only the first use in a
fresh environment pays the ~1 minute build. Where no compiler is present or the
build fails, :func:`is_available` is False, one warning is issued, and the dispatcher falls back to
the pure-PyTorch sliced path. Set ``SASA_DET_DISABLE_CPU_KERNEL=1`` to skip the kernel entirely.

Same contract as :func:`sasa_det.ops.local_attention_2d_reference` (position bias and strided
queries included); :func:`supports` says which calls it takes, and the dispatcher sends the
others to the sliced path. Inputs may be float64, float32, float16 or bfloat16: the kernel
computes in float64 for float64 and in float32 otherwise (16-bit inputs are converted as they
are read, results rounded as they are written). Forward saves q, k, v and the attention weights
(in the compute type) when a gradient is to come, and nothing without one (no_grad, inputs that do
not require grad).
"""
import os
import platform
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .reference import check_arguments

_SOURCES = [Path(__file__).with_name('csrc') / name
            for name in ('local_attention.cpp', 'cosine_qk.cpp')]
_SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_extension = None
_build_failed = False


def _arch_flags():
    """(name suffix, compiler flags): AVX2+FMA where the CPU has them, else the baseline ISA.

    Never -march=native: the name and the flags depend only on the detected capability, so a
    cached build is reused only on CPUs that can run it.
    """
    is_x86 = platform.machine().lower() in ('x86_64', 'amd64')
    if is_x86 and torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        return 'avx2', ['-mavx2', '-mfma']
    return 'generic', []


def _load():
    """The compiled extension module, building it on the first call; None if that fails."""
    global _extension, _build_failed
    if _extension is not None or _build_failed:
        return _extension
    if os.environ.get('SASA_DET_DISABLE_CPU_KERNEL', '') not in ('', '0'):
        _build_failed = True
        return None
    suffix, arch = _arch_flags()
    try:
        from torch.utils.cpp_extension import load
        # -fno-tree-loop-distribute-patterns: the kernel's short zeroing loops (pads of each
        # packed row, of each saved attention row) stay vector stores; GCC otherwise makes them
        # memset calls, one per pad, which cost a third of the forward on 8 x 8 maps.
        _extension = load(name=f'sasa_det_local_attention_{suffix}',
                          sources=[str(source) for source in _SOURCES],
                          extra_cflags=['-O3', '-std=c++20', '-ffp-contract=fast', '-fopenmp',
                                        '-fno-tree-loop-distribute-patterns', *arch],
                          extra_ldflags=['-fopenmp'], verbose=False)
    except Exception as err:  # no compiler, failed build, unloadable library: all mean fallback
        _build_failed = True
        warnings.warn(f'sasa_det: the C++ CPU kernel for local attention is unavailable ({err}); '
                      'using the slower pure-PyTorch path.', RuntimeWarning, stacklevel=3)
    return _extension


def is_available() -> bool:
    """True when the C++ extension is built (building it now if needed) and loaded."""
    return _load() is not None


def supports(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
             row_logits: Optional[Tensor] = None, col_logits: Optional[Tensor] = None,
             padding_mode: str = 'mask', position_bias: Optional[Tensor] = None,
             query_stride: int = 1) -> bool:
    """True for the calls of the op (same arguments) the kernel computes: CPU tensors of
    float64, float32, float16 or bfloat16."""
    return q.device.type == 'cpu' and q.dtype in _SUPPORTED_DTYPES


class _CpuLocalAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q: Tensor, k: Optional[Tensor], v: Tensor, row_logits: Optional[Tensor],
                col_logits: Optional[Tensor], position_bias: Optional[Tensor], kernel_size: int,
                query_stride: int, mask: bool, save_attn: bool) -> Tensor:
        out, attn = _extension.forward(q, k, v, row_logits, col_logits, None, None,
                                       position_bias, kernel_size, query_stride, mask, save_attn)
        ctx.save_for_backward(q, k, v, attn)
        ctx.kernel_size, ctx.query_stride = kernel_size, query_stride
        # The kernel returns these gradients in its compute type; autograd wants the inputs'.
        ctx.dtypes = tuple(None if t is None else t.dtype
                           for t in (row_logits, col_logits, position_bias))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, attn = ctx.saved_tensors
        d_q, d_k, d_v, *d_logits, _, _ = _extension.backward(
            grad_out, q, k, v, attn, None, None, ctx.kernel_size, ctx.query_stride,
            *(t is not None for t in ctx.dtypes))
        d_row, d_col, d_bias = (None if t is None else d.to(t)
                                for d, t in zip(d_logits, ctx.dtypes))
        return d_q, d_k, d_v, d_row, d_col, d_bias, None, None, None, None


def local_attention_2d_cpu(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                           row_logits: Optional[Tensor] = None,
                           col_logits: Optional[Tensor] = None,
                           padding_mode: str = 'mask',
                           position_bias: Optional[Tensor] = None,
                           query_stride: int = 1) -> Tensor:
    """Same contract as :func:`sasa_det.ops.local_attention_2d_reference`; CPU tensors.

    k and v are brought to q's dtype, the output has it; the relative logits and the position
    bias are read in any floating type. q, k, v may have any strides, e.g. slices of one fused
    Q/K/V projection, and are not copied.
    """
    if _load() is None:
        raise RuntimeError('the C++ CPU kernel of sasa_det is not available here')
    check_arguments(q, k, v, kernel_size, row_logits, col_logits, padding_mode, position_bias,
                    query_stride)
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f'the C++ CPU kernel supports dtypes {_SUPPORTED_DTYPES}, got {q.dtype}')
    k = None if k is None else k.to(q.dtype)
    save_attn = needs_backward(q, k, v, row_logits, col_logits, position_bias)
    return _CpuLocalAttention.apply(q, k, v.to(q.dtype), row_logits, col_logits, position_bias,
                                    kernel_size, query_stride, padding_mode == 'mask', save_attn)


def needs_backward(*tensors: Optional[Tensor]) -> bool:
    """True when autograd records a call on these tensors (grad mode on and one of them
    requiring grad): only then must the forward save the attention weights."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
