"""The public local-attention op: argument checks and the choice of implementation."""
from typing import Optional

from torch import Tensor

from .reference import local_attention_2d_reference
from .sliced import local_attention_2d_sliced

PADDING_MODES = ('mask', 'zeros')
IMPLEMENTATIONS = ('auto', 'cpu_kernel', 'sliced', 'reference')


def _cpu_kernel():
    """The fused C++ CPU kernel module, or None where it cannot be built or loaded."""
    try:
        from . import cpu_kernel
    except ImportError:
        return None
    return cpu_kernel if cpu_kernel.is_available() else None


def local_attention_2d(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                       row_logits: Optional[Tensor] = None, col_logits: Optional[Tensor] = None,
                       padding_mode: str = 'mask', implementation: str = 'auto') -> Tensor:
    """Local 2D self-attention of every pixel over its k x k neighbourhood.

    See :func:`sasa_det.ops.local_attention_2d_reference` for the exact formula. Shapes:
    q, k, v (B, H, W, heads, d) with k optional; row_logits, col_logits (B, H, W, heads, k).

    ``implementation``: 'auto' takes the fused C++ kernel for CPU tensors when it is available
    and the memory-lean sliced PyTorch path otherwise (any device); the others force one.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
    if padding_mode not in PADDING_MODES:
        raise ValueError(f'padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}')
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f'implementation must be one of {IMPLEMENTATIONS}, '
                         f'got {implementation!r}')
    if q.dim() != 5 or v.shape[:4] != q.shape[:4] or (k is not None and k.shape != q.shape):
        raise ValueError('q, k, v must be (B, H, W, heads, d) with matching leading dims; got '
                         f'{tuple(q.shape)}, {None if k is None else tuple(k.shape)}, '
                         f'{tuple(v.shape)}')
    args = (q, k, v, kernel_size, row_logits, col_logits, padding_mode)
    if implementation == 'reference':
        return local_attention_2d_reference(*args)
    if implementation in ('auto', 'cpu_kernel') and q.device.type == 'cpu':
        kernel = _cpu_kernel()
        if kernel is not None and kernel.supports(q):
            return kernel.local_attention_2d_cpu(*args)
        if implementation == 'cpu_kernel':
            raise RuntimeError('the C++ CPU kernel of sasa_det is not available here')
    elif implementation == 'cpu_kernel':
        raise ValueError(f"implementation='cpu_kernel' needs CPU tensors, got {q.device}")
    return local_attention_2d_sliced(*args)
