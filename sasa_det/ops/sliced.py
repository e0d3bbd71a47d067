"""Memory-lean local 2D self-attention in pure PyTorch: a loop over the k*k window offsets.

Each offset is a shifted *view* of the zero-padded keys and values, so nothing of size
k*k*d per pixel is ever stored (the unfold reference stores two such copies). The autograd
Function keeps only q, k, v and the (B, H, W, heads, k*k) attention weights for backward.
It runs on any device; :mod:`sasa_det.ops.cpu_kernel` is the fused C++ path for CPU tensors.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import window_validity


def _pad(x: Tensor, r: int) -> Tensor:
    """Zero-pad the H and W dims of (B, H, W, heads, d) by r on each side."""
    return F.pad(x, (0, 0, 0, 0, r, r, r, r))


def _offsets(kernel_size: int, height: int, width: int):
    """Yield (index, u, w) for window offsets that reach at least one in-image pixel."""
    r = kernel_size // 2
    for u in range(kernel_size):
        if abs(u - r) >= height:
            continue
        for w in range(kernel_size):
            if abs(w - r) < width:
                yield u * kernel_size + w, u, w


class _SlicedLocalAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q: Tensor, k: Optional[Tensor], v: Tensor, row_logits: Optional[Tensor],
                col_logits: Optional[Tensor], kernel_size: int, mask: bool) -> Tensor:
        b, h, w, heads, _ = q.shape
        r = kernel_size // 2
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in at least float32
        # Offsets that never reach the image (k > H or W) keep a logit of -inf ('mask') or of
        # q . 0 + positional ('zeros'); their values are zero either way.
        logits = q.new_full((b, h, w, heads, kernel_size ** 2),
                            float('-inf') if mask else 0.0, dtype=acc)
        # Products in float32 too: q.k of half inputs overflows float16 long before the sum.
        qa = q.to(acc)
        kp = _pad(k.to(acc), r) if k is not None else None
        for o, u, x in _offsets(kernel_size, h, w):
            if kp is not None:
                logits[..., o] = (qa * kp[:, u:u + h, x:x + w]).sum(-1)
            else:
                logits[..., o] = 0.0
        grid = logits.view(b, h, w, heads, kernel_size, kernel_size)
        if row_logits is not None:
            grid += row_logits.to(acc)[..., :, None]
        if col_logits is not None:
            grid += col_logits.to(acc)[..., None, :]
        if mask:
            valid = window_validity(h, w, kernel_size, q.device)[:, :, None, :]
            logits.masked_fill_(~valid, float('-inf'))
        attn = torch.softmax(logits, dim=-1)

        vp = _pad(v.to(acc), r)
        out = torch.zeros_like(v, dtype=acc)
        for o, u, x in _offsets(kernel_size, h, w):
            out.addcmul_(attn[..., o, None], vp[:, u:u + h, x:x + w])
        ctx.save_for_backward(q, k, v, attn)
        ctx.kernel_size = kernel_size
        ctx.has_rel = (row_logits is not None, col_logits is not None)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, attn = ctx.saved_tensors
        kernel_size = ctx.kernel_size
        b, h, w, heads, _ = q.shape
        r = kernel_size // 2
        g = grad_out.to(attn.dtype)

        vp = _pad(v.to(attn.dtype), r)
        d_attn = torch.zeros_like(attn)
        d_vp = torch.zeros_like(vp, dtype=attn.dtype)
        for o, u, x in _offsets(kernel_size, h, w):
            d_attn[..., o] = (g * vp[:, u:u + h, x:x + w]).sum(-1)
            d_vp[:, u:u + h, x:x + w].addcmul_(attn[..., o, None], g)
        # softmax backward; masked entries have attn == 0 and get no gradient.
        d_logits = attn * (d_attn - (d_attn * attn).sum(-1, keepdim=True))

        d_q = d_k = None
        if k is not None:
            kp = _pad(k.to(attn.dtype), r)
            d_q = torch.zeros_like(q, dtype=attn.dtype)
            d_kp = torch.zeros_like(kp, dtype=attn.dtype)
            qf = q.to(attn.dtype)
            for o, u, x in _offsets(kernel_size, h, w):
                dl = d_logits[..., o, None]
                d_q.addcmul_(dl, kp[:, u:u + h, x:x + w])
                d_kp[:, u:u + h, x:x + w].addcmul_(dl, qf)
            d_q = d_q.to(q.dtype)
            d_k = d_kp[:, r:r + h, r:r + w].to(k.dtype)
        grid = d_logits.view(b, h, w, heads, kernel_size, kernel_size)
        d_row = grid.sum(-1) if ctx.has_rel[0] else None
        d_col = grid.sum(-2) if ctx.has_rel[1] else None
        d_v = d_vp[:, r:r + h, r:r + w].to(v.dtype)
        return d_q, d_k, d_v, d_row, d_col, None, None


def local_attention_2d_sliced(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                              row_logits: Optional[Tensor] = None,
                              col_logits: Optional[Tensor] = None,
                              padding_mode: str = 'mask') -> Tensor:
    """Same contract as :func:`sasa_det.ops.local_attention_2d_reference`."""
    return _SlicedLocalAttention.apply(q, k, v, row_logits, col_logits, kernel_size,
                                       padding_mode == 'mask')
