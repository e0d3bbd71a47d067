"""SASA layer: local self-attention as a drop-in replacement for a k x k spatial convolution."""
import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..ops import local_attention_2d
from ..ops.local_attention import IMPLEMENTATIONS, PADDING_MODES
from .positional import sinusoidal_2d

POSITIONAL_ENCODINGS = ('relative', 'absolute', 'none')
LOGITS = ('content+relative', 'relative', 'content')


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f'{name} must be one of {tuple(allowed)}, got {value!r}')


class LocalSelfAttention2d(nn.Module):
    """Stand-alone self-attention over each pixel's k x k neighbourhood (Ramachandran et al. 2019).

    ``y_ij = sum_{ab in N_k(ij)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab`` with dense 1x1
    projections q = W_Q x, k = W_K x, v = W_V x (no bias), ``heads`` groups of d = C_out / heads
    channels, and relative embeddings r = concat(r_row[a-i], r_col[b-j]) of d/2 + d/2 dims shared
    by all heads. Neighbours outside the image are excluded from the softmax
    (``padding_mode='mask'``). A stride of 2 is a 2x2 average pool after stride-1 attention.

    Args:
        in_channels, out_channels: C_in and C_out; C_out must divide by ``heads``.
        kernel_size: window size k (odd, any size; may exceed the feature map).
        stride: 1 or 2.
        heads: number of attention heads.
        positional_encoding: 'relative' (learned row/column tables), 'absolute' (2D sinusoidal
            embedding of the key's position, in place of r) or 'none'.
        logits: 'content+relative' (q.k + q.r), 'relative' (q.r only) or 'content' (q.k only).
        padding_mode: 'mask' (default) or 'zeros' (zero keys and values that stay in the softmax,
            as in implementations that zero-pad).
        scale: factor on the logits; None (default) is the paper's unscaled formula. Use
            ``head_dim ** -0.5`` for Transformer-style scaling.
        bias: add a learned bias to the output (for ConvModule's bias=True); the paper has none.
        implementation: see :func:`sasa_det.ops.local_attention_2d`.
        padding, dilation, groups: accepted for ``build_conv_layer`` compatibility; attention keeps
            the spatial size, so padding is ignored, and only dilation=1, groups=1 are supported.

    Shape:
        x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 heads: int = 8, positional_encoding: str = 'relative',
                 logits: str = 'content+relative', padding_mode: str = 'mask',
                 scale: Optional[float] = None, bias: bool = False,
                 implementation: str = 'auto', padding=None, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        if isinstance(kernel_size, (tuple, list)):
            if len(set(kernel_size)) != 1:
                raise ValueError(f'kernel_size must be square, got {kernel_size!r}')
            kernel_size = kernel_size[0]
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
        if stride not in (1, 2, (1, 1), (2, 2)):
            raise ValueError(f'stride must be 1 or 2, got {stride!r}')
        if dilation not in (1, (1, 1)) or groups != 1:
            raise ValueError(f'dilation and groups must be 1, got dilation={dilation!r}, '
                             f'groups={groups!r}')
        if heads < 1 or out_channels % heads:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by heads '
                             f'({heads!r})')
        _check_choice('positional_encoding', positional_encoding, POSITIONAL_ENCODINGS)
        _check_choice('logits', logits, LOGITS)
        _check_choice('padding_mode', padding_mode, PADDING_MODES)
        _check_choice('implementation', implementation, IMPLEMENTATIONS)
        uses_position = logits != 'content'
        if uses_position != (positional_encoding != 'none'):
            raise ValueError(f"logits={logits!r} needs positional_encoding "
                             f"{'in (relative, absolute)' if uses_position else '= none'}, "
                             f"got positional_encoding={positional_encoding!r}")
        head_dim = out_channels // heads
        if uses_position and head_dim % 2:
            raise ValueError(f'positional encodings split the head dim into row and column halves, '
                             f'so out_channels / heads must be even, got {head_dim} '
                             f'(out_channels={out_channels}, heads={heads})')

        stride = stride[0] if isinstance(stride, tuple) else stride
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.heads, self.head_dim = kernel_size, stride, heads, head_dim
        self.positional_encoding, self.logits = positional_encoding, logits
        self.padding_mode, self.implementation = padding_mode, implementation
        self.scale = scale
        # ConvModule reads these off its conv.
        self.padding, self.dilation, self.groups = (0, 0), (1, 1), 1
        self.transposed, self.output_padding = False, (0, 0)

        self.uses_content = logits != 'relative'
        projections = 3 if self.uses_content else 2  # no W_K when no logit uses keys
        self.qkv = nn.Linear(in_channels, projections * out_channels, bias=False)
        if positional_encoding == 'relative':
            self.rel_row = nn.Parameter(torch.empty(kernel_size, head_dim // 2))
            self.rel_col = nn.Parameter(torch.empty(kernel_size, head_dim // 2))
        else:
            self.register_parameter('rel_row', None)
            self.register_parameter('rel_col', None)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Stride 2: a 2x2 average pool of the stride-1 attention output (no parameters).
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Kaiming-normal fan-in init of each projection, as for the 1x1 convs they are.
        nn.init.normal_(self.qkv.weight, std=math.sqrt(1.0 / self.in_channels))
        if self.rel_row is not None:
            nn.init.normal_(self.rel_row, std=self.head_dim ** -0.5)
            nn.init.normal_(self.rel_col, std=self.head_dim ** -0.5)

    @property
    def value_weight(self) -> Tensor:
        """W_V as a (C_out, C_in) view of the fused projection weight."""
        return self.qkv.weight[-self.out_channels:]

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        shape = (n, h, w, self.heads, self.head_dim)
        # Channels-last projections: every head's d channels are contiguous per pixel.
        qkv = self.qkv(x.permute(0, 2, 3, 1)).unflatten(-1, (-1, self.heads, self.head_dim))
        # unbind: one backward (a stack) instead of a zero-filled qkv-sized gradient per select.
        q, *k, v = qkv.unbind(-3)
        k = k[0] if k else None
        if self.scale is not None:
            q = q * self.scale

        row_logits = col_logits = None
        if self.positional_encoding == 'relative':
            # q . r_row[u] and q . r_col[w] in one matmul with block-diagonal [[r_row^T, 0],
            # [0, r_col^T]] of shape (d, 2k): no strided halves of q, no slice backwards.
            tables = torch.block_diag(self.rel_row.t(), self.rel_col.t()).to(q.dtype)
            row_logits, col_logits = (q @ tables).split(self.kernel_size, dim=-1)
        elif self.positional_encoding == 'absolute':
            position = sinusoidal_2d(h, w, self.head_dim, x.device, q.dtype)[:, :, None, :]
            k = position.expand(shape) if k is None else k + position  # q.(k + p) = q.k + q.p

        y = local_attention_2d(q, k, v, self.kernel_size, row_logits, col_logits,
                               self.padding_mode, self.implementation)
        y = y.reshape(n, h, w, self.out_channels)
        if self.bias is not None:
            y = y + self.bias
        return self.pool(y.permute(0, 3, 1, 2))  # (N, C, H, W), channels-last in memory

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, heads={self.heads}, '
                f'positional_encoding={self.positional_encoding!r}, logits={self.logits!r}, '
                f'padding_mode={self.padding_mode!r}, scale={self.scale}')
