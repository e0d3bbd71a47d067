"""Reference local 2D self-attention: obviously correct, memory-hungry (unfold-based).

Every fast implementation in this package is tested against :func:`local_attention_2d_reference`
in values and gradients. It materialises each pixel's k x k window of keys and values (the way most
public SASA code does), so it is also the "unfold" baseline of ``tools/benchmark.py``.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _windows(x: Tensor, kernel_size: int) -> Tensor:
    """(B, H, W, heads, d) -> (B, H, W, heads, k*k, d): each pixel's zero-padded k x k window."""
    b, h, w, heads, d = x.shape
    planes = x.permute(0, 3, 4, 1, 2).reshape(b, heads * d, h, w)
    cols = F.unfold(planes, kernel_size, padding=kernel_size // 2)  # (B, heads*d*k*k, H*W)
    cols = cols.view(b, heads, d, kernel_size * kernel_size, h, w)
    return cols.permute(0, 4, 5, 1, 3, 2)


def window_validity(height: int, width: int, kernel_size: int, device=None) -> Tensor:
    """(H, W, k*k) bool: True where the window offset of pixel (i, j) falls inside the image."""
    r = kernel_size // 2
    offsets = torch.arange(-r, r + 1, device=device)
    rows = torch.arange(height, device=device)[:, None] + offsets  # (H, k)
    cols = torch.arange(width, device=device)[:, None] + offsets  # (W, k)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (H, W, k, k)
    return valid.reshape(height, width, kernel_size * kernel_size)


def local_attention_2d_reference(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                                 row_logits: Optional[Tensor] = None,
                                 col_logits: Optional[Tensor] = None,
                                 padding_mode: str = 'mask') -> Tensor:
    """Local self-attention over each pixel's k x k neighbourhood.

    For pixel (i, j) and neighbour (a, b) = (i + u - k//2, j + w - k//2):
        logit = q_ij . k_ab [if k is given] + row_logits[..., u] + col_logits[..., w]
        y_ij  = sum_ab softmax_ab(logit) v_ab

    Args:
        q, k, v: (B, H, W, heads, d). ``k`` may be None (positional logits only).
        kernel_size: odd window size k; may exceed H or W.
        row_logits, col_logits: (B, H, W, heads, k) or None; the factorised relative term
            q_ij . r_row[u] and q_ij . r_col[w].
        padding_mode: 'mask' excludes out-of-image neighbours from the softmax; 'zeros' treats
            them as zero keys and values that still take part in it.

    Returns:
        (B, H, W, heads, d_v).
    """
    b, h, w, heads, _ = q.shape
    logits = q.new_zeros(b, h, w, heads, kernel_size * kernel_size)
    if k is not None:
        logits = logits + torch.einsum('bhwnd,bhwnkd->bhwnk', q, _windows(k, kernel_size))
    if row_logits is not None:
        logits = logits + row_logits.repeat_interleave(kernel_size, dim=-1)
    if col_logits is not None:
        logits = logits + col_logits.repeat(1, 1, 1, 1, kernel_size)
    if padding_mode == 'mask':
        valid = window_validity(h, w, kernel_size, q.device)[:, :, None, :]
        logits = logits.masked_fill(~valid, float('-inf'))
    attn = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    attn = attn.to(v.dtype)
    return torch.einsum('bhwnk,bhwnkd->bhwnd', attn, _windows(v, kernel_size))
