"""The whole SASA layer on CPU as one autograd Function, its backward written out.

The layer composed of PyTorch ops (projection, cosine normalisation, relative logits, the fused
kernel of :mod:`sasa_det.ops.cpu_kernel`) runs about a hundred ops per training step, each with
autograd's bookkeeping, and on the small maps of an FPN and head (16 x 16 down to 1 x 1) those
cost more than the attention itself. :func:`sasa_layer_cpu` computes the same values with one
projection matmul, cosine similarity's normalisation of q and k as one C++ pass
(``csrc/cosine_qk.cpp``; a dozen whole-tensor ops composed), and the kernel, which makes the
relative logits from q and the tables as it makes the content logits (at head dim 2 the row and
column logits would be 7 times the size of q); its backward calls the kernel's backward, which
also returns the tables' gradients, the normalisation's backward, which also assembles the
projection's gradient, and then the matmuls of the chain rule directly: a fraction of the ops,
none of them recorded.

It covers the layer with content and relative logits at stride-1 queries (the paper's layer and
the shipped configs'): dot-product or cosine similarity, shared or per-head tables, an optional
position bias, either padding mode, in float32 or float64 without autocast
(:func:`supports`). The layer takes the composed path for everything else, and always where
``SASA_DET_DISABLE_CPU_LAYER=1`` is set at start-up or inside ``with composed():``.
"""
import contextlib
import math
import os
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import cpu_kernel

__all__ = ['composed', 'sasa_layer_cpu', 'supports']

_DTYPES = (torch.float32, torch.float64)
# Maps of at most this many pixels multiply as one 2-D matmul: a batched matmul of n skinny
# (K, P) matrices took 30-70 us there where one (n P, K) matmul takes about 10 us.
_FEW_PIXELS = 4
_enabled = os.environ.get('SASA_DET_DISABLE_CPU_LAYER', '') in ('', '0')


@contextlib.contextmanager
def composed() -> Iterator[None]:
    """Within the block, SASA layers take their composed path (to compare the two)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def supports(x: Tensor, *parameters: Optional[Tensor]) -> bool:
    """True when :func:`sasa_layer_cpu` takes input x with these parameters: CPU tensors of one
    dtype, float32 or float64, autocast off, the C++ kernel available, and the Function not
    switched off (``SASA_DET_DISABLE_CPU_LAYER``, :func:`composed`)."""
    tensors = [x] + [p for p in parameters if p is not None]
    return (_enabled and x.device.type == 'cpu' and x.dtype in _DTYPES
            and all(t.device.type == 'cpu' and t.dtype == x.dtype for t in tensors)
            and not torch.is_autocast_enabled('cpu') and cpu_kernel.is_available())


def _channels_last(planar: Tensor) -> Tensor:
    """(B, heads, m, H, W) -> the kernel's (B, H, W, heads, m) view of the same memory."""
    return planar.permute(0, 3, 4, 1, 2)


def _planar(channels_last: Tensor) -> Tensor:
    """The inverse view of :func:`_channels_last`."""
    return channels_last.permute(0, 3, 4, 1, 2)


def _head_tables(table: Tensor, heads: int) -> Tensor:
    """A relative table, (k, d/2) shared by the heads or (heads, k, d/2), as the kernel's
    contiguous (heads, k, d/2)."""
    return (table.expand(heads, -1, -1) if table.dim() == 2 else table).contiguous()


def _shared_matmul(matrix: Tensor, batch: Tensor) -> Tensor:
    """matrix (M, K) times each (K, P) matrix of batch (n, K, P): (n, M, P), contiguous."""
    n, _, pixels = batch.shape
    if pixels > _FEW_PIXELS:
        return torch.bmm(matrix.expand(n, -1, -1), batch)
    rows = torch.mm(batch.transpose(1, 2).reshape(n * pixels, -1), matrix.t())
    return rows.view(n, pixels, -1).transpose(1, 2).contiguous()


def _summed_outer(a: Tensor, b: Tensor) -> Tensor:
    """sum over n of a[n] b[n]^T for a (n, M, P) and b (n, K, P): (M, K)."""
    if a.shape[2] > _FEW_PIXELS:
        return torch.bmm(a, b.transpose(1, 2)).sum(0)
    return torch.mm(a.transpose(0, 1).reshape(a.shape[1], -1),
                    b.transpose(0, 1).reshape(b.shape[1], -1).t())


class _SasaLayerCpu(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, rel_row: Tensor, rel_col: Tensor,
                position_bias: Optional[Tensor], logit_scale: Optional[Tensor], heads: int,
                kernel_size: int, max_logit_scale: float, scale: Optional[float],
                mask: bool, eps: float, save_attn: bool) -> Tensor:
        n, _, h, w = x.shape
        d = weight.shape[0] // 3 // heads
        projected = _shared_matmul(weight, x.flatten(2))
        q, k, v = projected.view(n, 3, heads, d, h, w).unbind(1)
        if logit_scale is not None:  # cosine: q and k over their norms, q times exp(scale)
            temperature = logit_scale.clamp(max=max_logit_scale).exp().view(heads)
            q_used, k_used = cpu_kernel._extension.cosine_qk_forward(
                projected.view(n, 3, heads, d, h * w), temperature, eps).view(
                    2, n, heads, d, h, w).unbind(0)
            ctx.cosine = (temperature, eps)
        else:
            q_used = q * scale if scale is not None else q.contiguous()
            k_used, ctx.cosine = k, None
        # The kernel makes the relative logits from q and the tables as it makes the others.
        row_table, col_table = _head_tables(rel_row, heads), _head_tables(rel_col, heads)
        out, attn = cpu_kernel._extension.forward(
            _channels_last(q_used), _channels_last(k_used), _channels_last(v), None, None,
            row_table, col_table, position_bias, kernel_size, 1, mask, save_attn)
        ctx.save_for_backward(x, weight, row_table, col_table, logit_scale, projected, q_used,
                              k_used, attn)
        ctx.heads, ctx.kernel_size, ctx.scale = heads, kernel_size, scale
        ctx.max_logit_scale, ctx.has_bias = max_logit_scale, position_bias is not None
        ctx.shared_tables = rel_row.dim() == 2
        return _planar(out).flatten(1, 2)  # (B, C_out, H, W), contiguous

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (x, weight, row_table, col_table, logit_scale, projected, q_used, k_used,
         attn) = ctx.saved_tensors
        n, c_in, h, w = x.shape
        heads, d = ctx.heads, q_used.shape[2]
        _, _, v = projected.view(n, 3, heads, d, h, w).unbind(1)
        # d_q includes the relative logits' share; the tables' gradients are per head.
        d_q, d_k, d_v, _, _, d_bias, d_row_table, d_col_table = cpu_kernel._extension.backward(
            _channels_last(grad.reshape(n, heads, d, h, w)), _channels_last(q_used),
            _channels_last(k_used), _channels_last(v), attn, row_table, col_table,
            ctx.kernel_size, 1, False, False, ctx.has_bias)
        d_q, d_k, d_v = _planar(d_q), _planar(d_k), _planar(d_v)  # contiguous planar
        if ctx.shared_tables:
            d_row_table, d_col_table = d_row_table.sum(0), d_col_table.sum(0)
        d_logit_scale = None
        if ctx.cosine is not None:  # d q and d k through the normalisation, d v with them
            temperature, eps = ctx.cosine
            d_projected, d_temperature = cpu_kernel._extension.cosine_qk_backward(
                d_q, d_k, d_v, projected.view(n, 3, heads, d, h * w), temperature, eps)
            d_projected = d_projected.view(n, -1, h * w)
            if ctx.needs_input_grad[5]:  # exp's derivative, zero above the clamp
                d_logit_scale = (d_temperature * temperature).view_as(logit_scale) * (
                    logit_scale <= ctx.max_logit_scale)
        else:
            if ctx.scale is not None:
                d_q = d_q * ctx.scale
            d_projected = torch.cat([t.reshape(n, -1, h * w) for t in (d_q, d_k, d_v)], dim=1)
        d_x = d_weight = None
        if ctx.needs_input_grad[0]:
            d_x = _shared_matmul(weight.t(), d_projected).view(n, c_in, h, w)
        if ctx.needs_input_grad[1]:
            d_weight = _summed_outer(d_projected, x.flatten(2))
        return (d_x, d_weight, d_row_table, d_col_table, d_bias, d_logit_scale,
                None, None, None, None, None, None, None)


def sasa_layer_cpu(x: Tensor, weight: Tensor, heads: int, kernel_size: int, rel_row: Tensor,
                   rel_col: Tensor, position_bias: Optional[Tensor] = None,
                   logit_scale: Optional[Tensor] = None, max_logit_scale: float = math.inf,
                   scale: Optional[float] = None, mask: bool = True,
                   eps: float = 1e-12) -> Tensor:
    """The SASA layer's attention at stride-1 queries: x (N, C_in, H, W) -> (N, C_out, H, W).

    weight is the fused [W_Q; W_K; W_V] projection (3 C_out, C_in); rel_row and rel_col the
    relative tables, (k, d/2) shared by the heads or (heads, k, d/2); position_bias (heads, k, k)
    or None. With ``logit_scale`` (heads, 1), q and k are L2-normalised per head (norm at least
    eps) and q multiplied by exp(min(logit_scale, max_logit_scale)) (cosine similarity);
    otherwise q is multiplied by ``scale`` if given. ``mask``: keys outside the image leave the
    softmax (else they are zeros inside it). The values are those of
    :class:`sasa_det.layers.LocalSelfAttention2d`'s composed path and of
    :func:`sasa_det.ops.local_attention_2d_reference`; :func:`supports` says which inputs it
    takes.
    """
    if not supports(x, weight, rel_row, rel_col, position_bias, logit_scale):
        raise ValueError(f'sasa_layer_cpu takes CPU tensors of one dtype in {_DTYPES} without '
                         f'autocast, with the C++ kernel available; got x {x.dtype} on '
                         f'{x.device}, weight {weight.dtype} on {weight.device}')
    save_attn = cpu_kernel.needs_backward(x, weight, rel_row, rel_col, position_bias, logit_scale)
    return _SasaLayerCpu.apply(x, weight, rel_row, rel_col, position_bias, logit_scale, heads,
                               kernel_size, max_logit_scale, scale, mask, eps, save_attn)
