"""Local 2D self-attention on GPU: the Triton kernels as a ``torch.library`` operator.

Two operators, ``sasa_det::local_attention_triton`` (forward: output and log-sum-exp) and
``sasa_det::local_attention_triton_backward`` (all input gradients), are defined with
``torch.library.triton_op`` so that ``torch.compile`` traces through them into the kernels
without graph breaks; each has a fake (shape-only) implementation, and the forward's gradient is
registered with ``register_autograd``. Under ``TRITON_INTERPRET=1`` the interpreted kernels cannot
be traced, so the same functions are plain ``custom_op`` s there (opaque to the compiler, same
fake implementations and gradient): that is how the tests run them on CPU.

Memory: the forward saves q, k, v, the logits inputs, the output and one float32 log-sum-exp per
query and head (the sliced path saves k*k weights per query and head instead).
Set ``SASA_DET_DISABLE_TRITON=1`` to keep :func:`sasa_det.ops.local_attention_2d` off this path.
"""
import os
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from . import triton_kernel as kernels

__all__ = ['INTERPRETED', 'is_enabled', 'local_attention_2d_triton', 'supports']

INTERPRETED = kernels.INTERPRETED
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Tile sizes, not yet timed on a GPU: at most MAX_BLOCK queries (or keys) per program, at most
# TILE_ELEMENTS values in one [block, head dim] tile, NUM_WARPS warps per program. Read at each
# launch: tools/benchmark.py's triton@<tile>/<warps> methods compare other settings. At 512,
# ptxas (sm_90, 4 warps) puts every kernel at <= 170 registers with at most a few bytes of
# spills for head dims 8 to 64; at 2048 the backward kernels hit 255 registers and spill
# hundreds of bytes.
MAX_BLOCK = 128
TILE_ELEMENTS = 512
NUM_WARPS = 4


def is_enabled() -> bool:
    """False when ``SASA_DET_DISABLE_TRITON`` is set to anything but '' or '0'."""
    return os.environ.get('SASA_DET_DISABLE_TRITON', '') in ('', '0')


def supports(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
             row_logits: Optional[Tensor] = None, col_logits: Optional[Tensor] = None,
             padding_mode: str = 'mask', position_bias: Optional[Tensor] = None,
             query_stride: int = 1) -> bool:
    """The kernels take float16, bfloat16 and float32 tensors on one CUDA device (on CPU only
    under ``TRITON_INTERPRET=1``), in any mix of those dtypes; float64 is not supported."""
    tensors = [t for t in (q, k, v, row_logits, col_logits, position_bias) if t is not None]
    device_ok = q.device.type == 'cuda' or (INTERPRETED and q.device.type == 'cpu')
    return (device_ok and all(t.device == q.device for t in tensors)
            and all(t.dtype in SUPPORTED_DTYPES for t in tensors))


def _blocks(head_dim: int, value_dim: int) -> Tuple[int, int, int]:
    """(queries per program, padded head dim, padded value dim), all powers of two."""
    block_d, block_dv = triton.next_power_of_2(head_dim), triton.next_power_of_2(value_dim)
    block = max(1, min(MAX_BLOCK, TILE_ELEMENTS // max(block_d, block_dv)))
    return 1 << (block.bit_length() - 1), block_d, block_dv  # round down to a power of two


def _launcher(kernel):
    """``wrap_triton(kernel)`` for compiled kernels, so that tracing sees them; interpreted
    kernels are launched directly."""
    return kernel if INTERPRETED else torch.library.wrap_triton(kernel)


def _strides(t: Optional[Tensor], ndim: int) -> Tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def _shared_args(q, k, v, row_logits, col_logits, position_bias, query_stride):
    """(strides..., sizes...) in the order the three kernels take them after their pointers."""
    _, q_height, q_width, heads, head_dim = q.shape
    _, height, width, _, value_dim = v.shape
    return (*q.stride(), *_strides(k, 5), *v.stride(), *_strides(row_logits, 5),
            *_strides(col_logits, 5), *_strides(position_bias, 3),
            heads, height, width, q_height, q_width, head_dim, value_dim, query_stride)


def _flags(k, row_logits, col_logits, position_bias, kernel_size):
    return dict(KERNEL_SIZE=kernel_size, HAS_KEYS=k is not None, HAS_ROW=row_logits is not None,
                HAS_COL=col_logits is not None, HAS_BIAS=position_bias is not None)


def _or(t: Optional[Tensor], stand_in: Tensor) -> Tensor:
    """A tensor to pass for an absent input: the kernel never reads it (its flag is off)."""
    return stand_in if t is None else t


def _forward(q: Tensor, k: Optional[Tensor], v: Tensor, row_logits: Optional[Tensor],
             col_logits: Optional[Tensor], position_bias: Optional[Tensor], kernel_size: int,
             mask: bool, query_stride: int) -> Tuple[Tensor, Tensor]:
    """(out (B, Ho, Wo, heads, dv) in v's dtype, lse (B, Ho, Wo, heads) float32)."""
    out, lse = _forward_fake(q, k, v, row_logits, col_logits, position_bias, kernel_size, mask,
                             query_stride)
    batch, q_height, q_width, heads, head_dim = q.shape
    if out.numel() == 0:
        return out, lse
    block, block_d, block_dv = _blocks(head_dim, v.shape[-1])
    grid = (triton.cdiv(q_height * q_width, block), batch * heads)
    _launcher(kernels._forward_kernel)[grid](
        q, _or(k, q), v, _or(row_logits, q), _or(col_logits, q), _or(position_bias, q), out, lse,
        *_shared_args(q, k, v, row_logits, col_logits, position_bias, query_stride),
        MASK=mask, BLOCK=block, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=NUM_WARPS,
        **_flags(k, row_logits, col_logits, position_bias, kernel_size))
    return out, lse


def _forward_fake(q, k, v, row_logits, col_logits, position_bias, kernel_size, mask,
                  query_stride):
    batch, q_height, q_width, heads, _ = q.shape
    out = q.new_empty((batch, q_height, q_width, heads, v.shape[-1]), dtype=v.dtype)
    return out, q.new_empty((batch, q_height, q_width, heads), dtype=torch.float32)


def _backward(grad_out: Tensor, q: Tensor, k: Optional[Tensor], v: Tensor,
              row_logits: Optional[Tensor], col_logits: Optional[Tensor],
              position_bias: Optional[Tensor], out: Tensor, lse: Tensor, kernel_size: int,
              mask: bool, query_stride: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                      Tensor]:
    """(dq, dk, dv, d row, d col, d bias); an absent input's gradient is an empty tensor."""
    grads = _backward_fake(grad_out, q, k, v, row_logits, col_logits, position_bias, out, lse,
                           kernel_size, mask, query_stride)
    dq, dk, dv, drow, dcol, _ = grads
    batch, q_height, q_width, heads, head_dim = q.shape
    _, height, width, _, value_dim = v.shape
    if out.numel() == 0:
        return tuple(g.zero_() for g in grads)
    block, block_d, block_dv = _blocks(head_dim, value_dim)
    query_blocks = triton.cdiv(q_height * q_width, block)
    # d bias: one float32 partial sum per program and offset, summed here in a fixed order.
    partials = lse.new_empty((batch * heads, query_blocks, kernel_size ** 2)
                             if position_bias is not None else (0,))
    delta = torch.empty_like(lse)
    common = _shared_args(q, k, v, row_logits, col_logits, position_bias, query_stride)
    flags = _flags(k, row_logits, col_logits, position_bias, kernel_size)
    blocks = dict(BLOCK=block, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=NUM_WARPS)
    grad_out = grad_out.contiguous()
    inputs = (q, _or(k, q), v, _or(row_logits, q), _or(col_logits, q), _or(position_bias, q))
    has_keys = k is not None
    _launcher(kernels._backward_query_kernel)[(query_blocks, batch * heads)](
        *inputs, grad_out, out, lse, delta, dq if has_keys else q,
        drow if row_logits is not None else q, dcol if col_logits is not None else q,
        partials if position_bias is not None else q, *common, MASK=mask,
        BLOCK_K=triton.next_power_of_2(kernel_size), **blocks, **flags)
    _launcher(kernels._backward_key_kernel)[(triton.cdiv(height * width, block), batch * heads)](
        *inputs, grad_out, lse, delta, dk if has_keys else q, dv, *common, **blocks, **flags)
    dbias = q.new_empty(0)
    if position_bias is not None:
        dbias = partials.view(batch, heads, query_blocks, kernel_size ** 2).sum((0, 2)) \
            .view(heads, kernel_size, kernel_size).to(position_bias.dtype)
    return dq, dk, dv, drow, dcol, dbias


def _backward_fake(grad_out, q, k, v, row_logits, col_logits, position_bias, out, lse,
                   kernel_size, mask, query_stride):
    """Contiguous gradients shaped like their inputs; empty ones for absent inputs."""
    def like(t: Optional[Tensor], present: bool = True) -> Tensor:
        if t is None or not present:
            return q.new_empty(0)
        return t.new_empty(t.shape)  # new_empty: contiguous, whatever the input's strides

    has_keys = k is not None
    return (like(q, has_keys), like(k), like(v), like(row_logits), like(col_logits),
            like(position_bias))


def _register(name: str, fn, fake):
    define = torch.library.custom_op if INTERPRETED else torch.library.triton_op
    op = define(f'sasa_det::{name}', fn, mutates_args=())
    op.register_fake(fake)
    return op


_forward_op = _register('local_attention_triton', _forward, _forward_fake)
_backward_op = _register('local_attention_triton_backward', _backward, _backward_fake)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, row_logits, col_logits, position_bias, kernel_size, mask, query_stride = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, row_logits, col_logits, position_bias, out, lse)
    ctx.options = (kernel_size, mask, query_stride)


def _gradients(ctx, grad_out: Tensor, _grad_lse: Optional[Tensor]):
    q, k, v, row_logits, col_logits, position_bias, out, lse = ctx.saved_tensors
    grads = _backward_op(grad_out, q, k, v, row_logits, col_logits, position_bias, out, lse,
                         *ctx.options)
    present = (k is not None, k is not None, True, row_logits is not None,
               col_logits is not None, position_bias is not None)
    return (*(g if p else None for g, p in zip(grads, present)), None, None, None)


_forward_op.register_autograd(_gradients, setup_context=_setup_context)


def local_attention_2d_triton(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                              row_logits: Optional[Tensor] = None,
                              col_logits: Optional[Tensor] = None, padding_mode: str = 'mask',
                              position_bias: Optional[Tensor] = None,
                              query_stride: int = 1) -> Tensor:
    """Same contract as :func:`sasa_det.ops.local_attention_2d_reference` (query_stride
    included), for the inputs :func:`supports` accepts; arguments are not re-checked here.

    Computes in float32 whatever the input dtypes; returns v's dtype. Gradients come from two
    kernels without atomics, so they are bitwise reproducible.
    """
    if not supports(q, k, v, kernel_size, row_logits, col_logits, padding_mode, position_bias,
                    query_stride):
        devices = sorted({str(t.device) for t in (q, k, v) if t is not None})
        dtypes = sorted({str(t.dtype) for t in (q, k, v, row_logits, col_logits, position_bias)
                         if t is not None})
        raise ValueError('the Triton kernel takes float16/bfloat16/float32 tensors on one CUDA '
                         f'device (CPU only under TRITON_INTERPRET=1), got devices {devices} '
                         f'and dtypes {dtypes}')
    out, _ = _forward_op(q, k, v, row_logits, col_logits, position_bias, kernel_size,
                         padding_mode == 'mask', query_stride)
    return out
