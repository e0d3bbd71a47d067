"""Memory-lean local 2D self-attention in pure PyTorch: a loop over the k*k window offsets.

Each offset is a shifted (and, with a query stride, strided) *view* of the zero-padded keys and
values, so nothing of size k*k*d per query is ever stored (the unfold reference stores two such
copies). The autograd Function keeps only q, k, v and the (B, Ho, Wo, heads, k*k) attention
weights for backward. It runs on any device; :mod:`sasa_det.ops.cpu_kernel` is the fused C++ path
for CPU tensors.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import check_arguments, window_validity


def _pad(x: Tensor, r: int) -> Tensor:
    """Zero-pad the H and W dims of (B, H, W, heads, d) by r on each side."""
    return F.pad(x, (0, 0, 0, 0, r, r, r, r))


def _shifted(padded: Tensor, u: int, w: int, stride: int, out_h: int, out_w: int) -> Tensor:
    """The view of a padded (B, H + 2r, W + 2r, ...) tensor whose element (i, j) is
    padded[:, s*i + u, s*j + w]: the neighbour at offset (u, w) of every query."""
    return padded[:, u:u + stride * (out_h - 1) + 1:stride, w:w + stride * (out_w - 1) + 1:stride]


def _reaching(kernel_size: int, size: int, stride: int, out_size: int):
    """Offsets u along one axis whose neighbour s*i + u - k//2 is in [0, size) for some query."""
    r = kernel_size // 2
    return [u for u in range(kernel_size)
            if any(0 <= stride * i + u - r < size for i in range(out_size))]


def _offsets(kernel_size: int, v: Tensor, q: Tensor, stride: int):
    """Yield (index, u, w) for window offsets that reach at least one in-image pixel."""
    rows = _reaching(kernel_size, v.shape[1], stride, q.shape[1])
    cols = _reaching(kernel_size, v.shape[2], stride, q.shape[2])
    for u in rows:
        for w in cols:
            yield u * kernel_size + w, u, w


def _dtype(t: Optional[Tensor]):
    return None if t is None else t.dtype


class _SlicedLocalAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q: Tensor, k: Optional[Tensor], v: Tensor, row_logits: Optional[Tensor],
                col_logits: Optional[Tensor], position_bias: Optional[Tensor], kernel_size: int,
                mask: bool, stride: int) -> Tensor:
        b, ho, wo, heads, _ = q.shape
        r = kernel_size // 2
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in at least float32
        # Offsets that never reach the image (k > H or W) keep a logit of -inf ('mask') or of
        # q . 0 + positional ('zeros'); their values are zero either way.
        logits = q.new_full((b, ho, wo, heads, kernel_size ** 2),
                            float('-inf') if mask else 0.0, dtype=acc)
        # Products in float32 too: q.k of half inputs overflows float16 long before the sum.
        qa = q.to(acc)
        kp = _pad(k.to(acc), r) if k is not None else None
        for o, u, x in _offsets(kernel_size, v, q, stride):
            if kp is not None:
                logits[..., o] = (qa * _shifted(kp, u, x, stride, ho, wo)).sum(-1)
            else:
                logits[..., o] = 0.0
        grid = logits.view(b, ho, wo, heads, kernel_size, kernel_size)
        if row_logits is not None:
            grid += row_logits.to(acc)[..., :, None]
        if col_logits is not None:
            grid += col_logits.to(acc)[..., None, :]
        if position_bias is not None:
            grid += position_bias.to(acc)
        if mask:
            valid = window_validity(v.shape[1], v.shape[2], kernel_size, q.device, stride)
            logits.masked_fill_(~valid[:, :, None, :], float('-inf'))
        attn = torch.softmax(logits, dim=-1)

        vp = _pad(v.to(acc), r)
        out = q.new_zeros((b, ho, wo, heads, v.shape[-1]), dtype=acc)
        for o, u, x in _offsets(kernel_size, v, q, stride):
            out.addcmul_(attn[..., o, None], _shifted(vp, u, x, stride, ho, wo))
        ctx.save_for_backward(q, k, v, attn)
        ctx.kernel_size, ctx.stride = kernel_size, stride
        ctx.dtypes = tuple(map(_dtype, (row_logits, col_logits, position_bias)))
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, attn = ctx.saved_tensors
        kernel_size, stride = ctx.kernel_size, ctx.stride
        b, ho, wo, heads, _ = q.shape
        h, w = v.shape[1:3]
        r = kernel_size // 2
        g = grad_out.to(attn.dtype)

        vp = _pad(v.to(attn.dtype), r)
        d_attn = torch.zeros_like(attn)
        d_vp = torch.zeros_like(vp, dtype=attn.dtype)
        for o, u, x in _offsets(kernel_size, v, q, stride):
            d_attn[..., o] = (g * _shifted(vp, u, x, stride, ho, wo)).sum(-1)
            _shifted(d_vp, u, x, stride, ho, wo).addcmul_(attn[..., o, None], g)
        # softmax backward; masked entries have attn == 0 and get no gradient.
        d_logits = attn * (d_attn - (d_attn * attn).sum(-1, keepdim=True))

        d_q = d_k = None
        if k is not None:
            kp = _pad(k.to(attn.dtype), r)
            d_q = torch.zeros_like(q, dtype=attn.dtype)
            d_kp = torch.zeros_like(kp, dtype=attn.dtype)
            qf = q.to(attn.dtype)
            for o, u, x in _offsets(kernel_size, v, q, stride):
                dl = d_logits[..., o, None]
                d_q.addcmul_(dl, _shifted(kp, u, x, stride, ho, wo))
                _shifted(d_kp, u, x, stride, ho, wo).addcmul_(dl, qf)
            d_q = d_q.to(q.dtype)
            d_k = d_kp[:, r:r + h, r:r + w].to(k.dtype)
        grid = d_logits.view(b, ho, wo, heads, kernel_size, kernel_size)
        row_dtype, col_dtype, bias_dtype = ctx.dtypes
        d_row = grid.sum(-1).to(row_dtype) if row_dtype is not None else None
        d_col = grid.sum(-2).to(col_dtype) if col_dtype is not None else None
        d_bias = grid.sum((0, 1, 2)).to(bias_dtype) if bias_dtype is not None else None
        d_v = d_vp[:, r:r + h, r:r + w].to(v.dtype)
        return d_q, d_k, d_v, d_row, d_col, d_bias, None, None, None


def local_attention_2d_sliced(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                              row_logits: Optional[Tensor] = None,
                              col_logits: Optional[Tensor] = None,
                              padding_mode: str = 'mask',
                              position_bias: Optional[Tensor] = None,
                              query_stride: int = 1) -> Tensor:
    """Same contract as :func:`sasa_det.ops.local_attention_2d_reference`."""
    check_arguments(q, k, v, kernel_size, row_logits, col_logits, padding_mode, position_bias,
                    query_stride)
    return _SlicedLocalAttention.apply(q, k, v, row_logits, col_logits, position_bias,
                                       kernel_size, padding_mode == 'mask', query_stride)
