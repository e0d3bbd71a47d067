"""The public local-attention op: argument checks and the choice of implementation."""
import warnings
from typing import Optional

from torch import Tensor

from .reference import PADDING_MODES, check_arguments, local_attention_2d_reference
from .sliced import local_attention_2d_sliced

__all__ = ['IMPLEMENTATIONS', 'PADDING_MODES', 'local_attention_2d']

IMPLEMENTATIONS = ('auto', 'cpu_kernel', 'triton', 'sliced', 'reference')
_triton_error = None


def _cpu_kernel():
    """The fused C++ CPU kernel module, or None where it cannot be built or loaded."""
    try:
        from . import cpu_kernel
    except ImportError:
        return None
    return cpu_kernel if cpu_kernel.is_available() else None


def _triton():
    """The Triton op module, or None where Triton does not import or SASA_DET_DISABLE_TRITON is
    set. Imported on first use only: CPU-only runs never load Triton. An installed Triton that
    fails to import (not merely a missing one) is reported once, as a warning."""
    global _triton_error
    if _triton_error is not None:
        return None
    try:
        from . import triton_op
    except ImportError as err:
        _triton_error = err
        return None
    except Exception as err:  # a broken install: say so once, then use the sliced path
        _triton_error = err
        warnings.warn(f'sasa_det: Triton failed to import ({err!r}); CUDA tensors take the '
                      'slower sliced path.', RuntimeWarning, stacklevel=3)
        return None
    return triton_op if triton_op.is_enabled() else None


def local_attention_2d(q: Tensor, k: Optional[Tensor], v: Tensor, kernel_size: int,
                       row_logits: Optional[Tensor] = None, col_logits: Optional[Tensor] = None,
                       padding_mode: str = 'mask', implementation: str = 'auto',
                       position_bias: Optional[Tensor] = None, query_stride: int = 1) -> Tensor:
    """Local 2D self-attention of every query over its k x k neighbourhood of keys.

    See :func:`sasa_det.ops.local_attention_2d_reference` for the exact formula. Shapes, with
    s = ``query_stride`` and (Ho, Wo) = (ceil(H / s), ceil(W / s)): q (B, Ho, Wo, heads, d);
    k (B, H, W, heads, d) or None; v (B, H, W, heads, d); row_logits, col_logits
    (B, Ho, Wo, heads, k); position_bias (heads, k, k). Output (B, Ho, Wo, heads, d).

    ``implementation``: 'auto' takes the Triton kernel for CUDA tensors when Triton imports and
    supports the call (float16, bfloat16, float32: :func:`sasa_det.ops.triton_op.supports`), the
    fused C++ kernel for CPU tensors when it is available and supports the call
    (:func:`sasa_det.ops.cpu_kernel.supports`), and the memory-lean sliced PyTorch path
    otherwise (any device, any dtype); the others force one. 'triton' takes CPU tensors only when
    Triton's interpreter is on (``TRITON_INTERPRET=1`` before the kernels are imported).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f'implementation must be one of {IMPLEMENTATIONS}, '
                         f'got {implementation!r}')
    check_arguments(q, k, v, kernel_size, row_logits, col_logits, padding_mode, position_bias,
                    query_stride)
    args = (q, k, v, kernel_size, row_logits, col_logits, padding_mode, position_bias,
            query_stride)
    if implementation == 'reference':
        return local_attention_2d_reference(*args)
    if implementation == 'triton' or (implementation == 'auto' and q.device.type == 'cuda'):
        triton_op = _triton()
        if implementation == 'triton':
            if triton_op is None:
                reason = (f'Triton does not import: {_triton_error!r}' if _triton_error
                          else 'SASA_DET_DISABLE_TRITON is set')
                raise RuntimeError(f'the Triton kernel of sasa_det is not available here '
                                   f'({reason})')
            return triton_op.local_attention_2d_triton(*args)
        if triton_op is not None and triton_op.supports(*args):
            return triton_op.local_attention_2d_triton(*args)
    if implementation in ('auto', 'cpu_kernel') and q.device.type == 'cpu':
        kernel = _cpu_kernel()
        if kernel is not None and kernel.supports(*args):
            return kernel.local_attention_2d_cpu(*args)
        if implementation == 'cpu_kernel':
            raise RuntimeError('the C++ CPU kernel of sasa_det is not available here or does not '
                               'support this call (see sasa_det.ops.cpu_kernel.supports)')
    elif implementation == 'cpu_kernel':
        raise ValueError(f"implementation='cpu_kernel' needs CPU tensors, got {q.device}")
    return local_attention_2d_sliced(*args)
