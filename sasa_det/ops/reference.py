"""Reference local 2D self-attention: obviously correct, memory-hungry (unfold-based).

Every fast implementation in this package is tested against :func:`local_attention_2d_reference`
in values and gradients. It materialises each query's k x k window of keys and values (the way
most public SASA code does), so it is also the "unfold" baseline of ``tools/benchmark.py``.
:func:`local_attention_logits_reference` is the one place the attention formula is written; the
reference output and the attention diagnostics both read the logits and weights from it.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = ('mask', 'zeros')


def output_size(height: int, width: int, query_stride: int) -> Tuple[int, int]:
    """(ceil(H / s), ceil(W / s)): the query grid of a strided k x k window with padding k//2."""
    return -(-height // query_stride), -(-width // query_stride)


def _shape(t: Optional[Tensor]):
    return None if t is None else tuple(t.shape)


def _check_options(kernel_size, padding_mode, query_stride) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
    if padding_mode not in PADDING_MODES:
        raise ValueError(f'padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}')
    if isinstance(query_stride, bool) or not isinstance(query_stride, int) or query_stride < 1:
        raise ValueError(f'query_stride must be a positive integer, got {query_stride!r}')


def check_arguments(q: Tensor, k: Optional[Tensor], v: Optional[Tensor], kernel_size: int,
                    row_logits: Optional[Tensor] = None, col_logits: Optional[Tensor] = None,
                    padding_mode: str = 'mask', position_bias: Optional[Tensor] = None,
                    query_stride: int = 1,
                    input_size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """Check the op's arguments against its contract; return the key grid size (H, W).

    The key grid comes from v, else k, else ``input_size``, else (stride 1) from q. Raises
    ValueError naming the first argument that does not fit.
    """
    _check_options(kernel_size, padding_mode, query_stride)
    if q.dim() != 5:
        raise ValueError(f'q must be (B, Ho, Wo, heads, d), got shape {_shape(q)}')
    b, ho, wo, heads, d = q.shape
    for name, t in (('v', v), ('k', k)):
        if t is not None and (t.dim() != 5 or t.shape[0] != b or t.shape[3] != heads):
            raise ValueError(f'{name} must be (B, H, W, heads, d) with the batch and heads of q '
                             f'{_shape(q)}, got {_shape(t)}')
    source = v if v is not None else k
    if source is not None:
        height, width = source.shape[1:3]
    elif input_size is not None:
        height, width = input_size
    elif query_stride == 1:
        height, width = ho, wo
    else:
        raise ValueError('input_size (H, W) is needed when k is None and query_stride > 1, '
                         'got None')
    if k is not None and (k.shape[:4] != (b, height, width, heads) or k.shape[4] != d):
        raise ValueError(f'k must be (B, H, W, heads, d) = {(b, height, width, heads, d)} '
                         f'(the grid of v, the head dim of q), got {_shape(k)}')
    if (ho, wo) != output_size(height, width, query_stride):
        raise ValueError(f'q must be (B, ceil(H/s), ceil(W/s), heads, d) = '
                         f'{(b, *output_size(height, width, query_stride), heads, d)} for keys '
                         f'of size (H, W) = {(height, width)} and query_stride s = '
                         f'{query_stride}, got {_shape(q)}')
    for name, t in (('row_logits', row_logits), ('col_logits', col_logits)):
        if t is not None and t.shape != (b, ho, wo, heads, kernel_size):
            raise ValueError(f'{name} must be (B, Ho, Wo, heads, kernel_size) = '
                             f'{(b, ho, wo, heads, kernel_size)}, got {_shape(t)}')
    if position_bias is not None and position_bias.shape != (heads, kernel_size, kernel_size):
        raise ValueError(f'position_bias must be (heads, kernel_size, kernel_size) = '
                         f'{(heads, kernel_size, kernel_size)}, got {_shape(position_bias)}')
    return height, width


def _windows(x: Tensor, kernel_size: int, query_stride: int) -> Tensor:
    """(B, H, W, heads, d) -> (B, Ho, Wo, heads, k*k, d): the zero-padded k x k window centred
    at each query position (s*i, s*j)."""
    b, h, w, heads, d = x.shape
    planes = x.permute(0, 3, 4, 1, 2).reshape(b, heads * d, h, w)
    cols = F.unfold(planes, kernel_size, padding=kernel_size // 2, stride=query_stride)
    cols = cols.view(b, heads, d, kernel_size * kernel_size, *output_size(h, w, query_stride))
    return cols.permute(0, 4, 5, 1, 3, 2)


def window_validity(height: int, width: int, kernel_size: int, device=None,
                    query_stride: int = 1) -> Tensor:
    """(Ho, Wo, k*k) bool: True where offset (u, w) of the query at (s*i, s*j) is in the image."""
    r = kernel_size // 2
    offsets = torch.arange(-r, r + 1, device=device)
    rows = torch.arange(0, height, query_stride, device=device)[:, None] + offsets  # (Ho, k)
    cols = torch.arange(0, width, query_stride, device=device)[:, None] + offsets  # (Wo, k)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (Ho, Wo, k, k)
    return valid.reshape(len(rows), len(cols), kernel_size * kernel_size)


def local_attention_logits_reference(
        q: Tensor, k: Optional[Tensor], kernel_size: int, row_logits: Optional[Tensor] = None,
        col_logits: Optional[Tensor] = None, padding_mode: str = 'mask',
        position_bias: Optional[Tensor] = None, query_stride: int = 1,
        input_size: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
    """Attention logits of every query over its k x k window: the one place the formula is.

    Query (i, j) sits at input position (s*i, s*j), s = ``query_stride``. For window offset
    (u, w), u, w in [0, k), its neighbour is (a, b) = (s*i + u - k//2, s*j + w - k//2) and
        logit_uw = q_ij . k_ab [if k is given] + row_logits[..., u] + col_logits[..., w]
                   + position_bias[n, u, w]
    'mask' sets the logits of out-of-image neighbours to -inf; 'zeros' keeps them (zero keys).

    Args:
        q: (B, Ho, Wo, heads, d) with (Ho, Wo) = (ceil(H / s), ceil(W / s)).
        k: (B, H, W, heads, d) or None (positional logits only).
        kernel_size: odd window size k; may exceed H or W.
        row_logits, col_logits: (B, Ho, Wo, heads, k) or None; the factorised relative term
            q_ij . r_row[u] and q_ij . r_col[w].
        padding_mode: 'mask' or 'zeros'.
        position_bias: (heads, k, k) or None; a content-free bias per head and offset.
        query_stride: s >= 1.
        input_size: (H, W) of the keys; needed only when k is None and s > 1.

    Returns:
        logits (B, Ho, Wo, heads, k*k) in q's dtype, offsets in row-major (u, w) order;
        valid (Ho, Wo, 1, k*k) bool, broadcastable to the logits: True for neighbours inside the
        image (the keys that 'mask' attends to).
    """
    height, width = check_arguments(q, k, None, kernel_size, row_logits, col_logits,
                                    padding_mode, position_bias, query_stride, input_size)
    b, ho, wo, heads, _ = q.shape
    logits = q.new_zeros(b, ho, wo, heads, kernel_size * kernel_size)
    if k is not None:
        logits = logits + torch.einsum('bhwnd,bhwnkd->bhwnk', q,
                                       _windows(k, kernel_size, query_stride))
    if row_logits is not None:
        logits = logits + row_logits.repeat_interleave(kernel_size, dim=-1)
    if col_logits is not None:
        logits = logits + col_logits.repeat(1, 1, 1, 1, kernel_size)
    if position_bias is not None:
        logits = logits + position_bias.reshape(heads, kernel_size * kernel_size)
    valid = window_validity(height, width, kernel_size, q.device, query_stride)[:, :, None, :]
    if padding_mode == 'mask':
        logits = logits.masked_fill(~valid, float('-inf'))
    return logits, valid


def local_attention_weights_reference(
        q: Tensor, k: Optional[Tensor], kernel_size: int, row_logits: Optional[Tensor] = None,
        col_logits: Optional[Tensor] = None, padding_mode: str = 'mask',
        position_bias: Optional[Tensor] = None, query_stride: int = 1,
        input_size: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
    """Attention weights: the softmax over the k*k offsets of
    :func:`local_attention_logits_reference` (same arguments; 'mask' gives out-of-image
    neighbours weight 0).

    Returns:
        weights (B, Ho, Wo, heads, k*k) in at least float32, and the same ``valid`` mask.
    """
    logits, valid = local_attention_logits_reference(q, k, kernel_size, row_logits,
                                                     col_logits, padding_mode, position_bias,
                                                     query_stride, input_size)
    weights = torch.softmax(logits, dim=-1,
                            dtype=torch.promote_types(logits.dtype, torch.float32))
    return weights, valid


def local_attention_2d_reference(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                                 row_logits: Optional[Tensor] = None,
                                 col_logits: Optional[Tensor] = None,
                                 padding_mode: str = 'mask',
                                 position_bias: Optional[Tensor] = None,
                                 query_stride: int = 1) -> Tensor:
    """Local self-attention of each query over its k x k neighbourhood of keys and values.

        y_ij = sum_uw weights_ij[u, w] v_(s*i + u - k//2, s*j + w - k//2)

    with the weights of :func:`local_attention_weights_reference` (which documents the logits,
    padding modes and the other arguments); values outside the image are zero.

    Args:
        q: (B, Ho, Wo, heads, d), (Ho, Wo) = (ceil(H / s), ceil(W / s)); k: (B, H, W, heads, d)
        or None; v: (B, H, W, heads, d_v).

    Returns:
        (B, Ho, Wo, heads, d_v) in v's dtype.
    """
    height, width = check_arguments(q, k, v, kernel_size, row_logits, col_logits, padding_mode,
                                    position_bias, query_stride)
    weights, _ = local_attention_weights_reference(q, k, kernel_size, row_logits, col_logits,
                                                   padding_mode, position_bias, query_stride,
                                                   (height, width))
    return torch.einsum('bhwnk,bhwnkd->bhwnd', weights.to(v.dtype),
                        _windows(v, kernel_size, query_stride))
