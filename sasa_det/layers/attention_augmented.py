"""Attention Augmented convolution (Bello et al., ICCV 2019).

``AAConv(x) = concat(Conv(x), MHA(x))``: a convolution with C_out - d_v filters next to multi-head
self-attention over all H x W positions whose d_v output channels pass a 1x1 projection W^O.
Head h attends with logits

    l_ij = q_i . (k_j + r^W_{jx - ix} + r^H_{jy - iy}) / sqrt(d_k^h)

i.e. ``softmax((Q K^T + S_H + S_W) / sqrt(d_k^h)) V`` with 2D relative logits S_H, S_W built from
learned height and width embeddings shared by all heads.
"""
from typing import Union

import torch
import torch.nn as nn
from torch import Tensor


def _resolve_depth(name: str, value: Union[int, float], out_channels: int, heads: int) -> int:
    """d_k or d_v in channels: an int is taken as is, a float in (0, 1] is the paper's ratio
    (kappa = d_k / C_out, upsilon = d_v / C_out), rounded to the nearest multiple of ``heads``
    (at least one channel per head) so that it splits into heads."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{name} must be an int (channels) or a float ratio in (0, 1], '
                         f'got {value!r}')
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(f'{name} as a ratio of out_channels must be in (0, 1], got {value!r}')
        return max(heads, heads * round(value * out_channels / heads))
    if value < 1 or value % heads:
        raise ValueError(f'{name} must be a positive multiple of heads ({heads}), got {value}')
    return value


class AAConv2d(nn.Module):
    """Convolution augmented with global multi-head self-attention with 2D relative logits.

    Args:
        in_channels, out_channels: C_in and C_out of the layer (conv part + attention part).
        kernel_size: of the convolutional part (odd).
        dk, dv: total key depth and value depth over all heads; an int is a channel count
            (divisible by ``heads``), a float a ratio of ``out_channels`` (paper's kappa and
            upsilon; AA-ResNet uses dk=0.2, dv=0.1) rounded to a multiple of ``heads``.
            ``dv == out_channels`` gives a fully attentional layer (no convolution).
        heads: number of attention heads N_h.
        relative: add the 2D relative logits S_H + S_W (the paper's default).
        stride: 1 or 2. At stride 2 the convolution is strided and the attention runs on the
            2x2/2 average-pooled input, as the paper does in downsampling layers.
        max_relative_position: the relative embedding tables hold offsets -P..P. The paper sizes
            them 2H-1 and 2W-1 for a fixed input; to accept any input size (detection), larger
            offsets share the embedding of +-P (clipping, as Shaw et al. 2018). Exact for maps up
            to P + 1 pixels a side (default 63: the 56 x 56 stage 1 of a 224 ResNet).
        dilation: dilation of the convolutional part.
        bias: bias of the convolution and of the output projection.
        padding, groups: accepted for ``build_conv_layer`` compatibility; the convolution is
            always 'same'-padded (so both parts have the same output size) and groups must be 1.

    Shape:
        x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dk: Union[int, float] = 0.2, dv: Union[int, float] = 0.1, heads: int = 8,
                 relative: bool = True, stride: int = 1, max_relative_position: int = 63,
                 dilation: int = 1, bias: bool = False, padding=None, groups: int = 1) -> None:
        super().__init__()
        if isinstance(kernel_size, (tuple, list)):
            if len(set(kernel_size)) != 1:
                raise ValueError(f'kernel_size must be square, got {kernel_size!r}')
            kernel_size = kernel_size[0]
        stride = stride[0] if isinstance(stride, (tuple, list)) else stride
        dilation = dilation[0] if isinstance(dilation, (tuple, list)) else dilation
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
        if stride not in (1, 2):
            raise ValueError(f'stride must be one of (1, 2), got {stride!r}')
        if groups != 1:
            raise ValueError(f'groups must be 1, got {groups!r}')
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f'heads must be a positive integer, got {heads!r}')
        if not isinstance(max_relative_position, int) or max_relative_position < 1:
            raise ValueError(f'max_relative_position must be a positive integer, '
                             f'got {max_relative_position!r}')
        dk = _resolve_depth('dk', dk, out_channels, heads)
        dv = _resolve_depth('dv', dv, out_channels, heads)
        if dv > out_channels:
            raise ValueError(f'dv ({dv}) must not exceed out_channels ({out_channels})')

        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.heads = kernel_size, stride, heads
        self.dk, self.dv, self.relative = dk, dv, relative
        self.max_relative_position = max_relative_position
        # ConvModule reads these off its conv.
        self.padding, self.dilation, self.groups = (0, 0), (dilation, dilation), 1
        self.transposed, self.output_padding = False, (0, 0)

        conv_channels = out_channels - dv
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size, stride,
                              padding=dilation * (kernel_size // 2), dilation=dilation,
                              bias=bias) if conv_channels else None
        self.qkv = nn.Conv2d(in_channels, 2 * dk + dv, 1, bias=False)  # [W_Q; W_K; W_V]
        self.proj = nn.Conv2d(dv, dv, 1, bias=bias)  # W^O
        # Stride 2: attention runs on the 2x2 average-pooled input (no parameters).
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        if relative:
            dkh = dk // heads
            self.rel_height = nn.Parameter(torch.empty(2 * max_relative_position + 1, dkh))
            self.rel_width = nn.Parameter(torch.empty(2 * max_relative_position + 1, dkh))
            nn.init.normal_(self.rel_height, std=dkh ** -0.5)
            nn.init.normal_(self.rel_width, std=dkh ** -0.5)
        else:
            self.register_parameter('rel_height', None)
            self.register_parameter('rel_width', None)

    def _relative_table(self, table: Tensor, length: int) -> Tensor:
        """(L, L, d): entry [i, j] is the embedding of offset j - i (clipped to +-P)."""
        pos = torch.arange(length, device=table.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_relative_position,
                                                     self.max_relative_position)
        return table[offset + self.max_relative_position]

    def relative_logits(self, q: Tensor, height: int, width: int) -> Tensor:
        """S_H + S_W for (already scaled) queries q (N, heads, H*W, d_k^h): (N, heads, HW, HW).

        S_W[(y, x), (y', x')] = q_yx . r^W[x' - x] and S_H[...] = q_yx . r^H[y' - y]; each needs
        only an (H, W, W) or (H, W, H) table of dot products per head, broadcast to HW x HW
        (what the paper's rel_to_abs computes, here by indexing the embedding table).
        """
        n, heads, _, d = q.shape
        q = q.reshape(n, heads, height, width, d)
        s_w = torch.einsum('nhyxd,xzd->nhyxz', q, self._relative_table(self.rel_width, width))
        s_h = torch.einsum('nhyxd,yzd->nhyxz', q, self._relative_table(self.rel_height, height))
        logits = s_h[..., :, None] + s_w[..., None, :]  # (N, heads, H, W, H', W')
        return logits.reshape(n, heads, height * width, height * width)

    def attention(self, x: Tensor) -> Tensor:
        """MHA(x) before the output projection: (N, C_in, H, W) -> (N, d_v, H, W)."""
        n, _, h, w = x.shape
        heads = self.heads
        q, k, v = self.qkv(x).flatten(2).split([self.dk, self.dk, self.dv], dim=1)
        # (N, heads, HW, d) per head; the 1/sqrt(d_k^h) scale applies to content and relative.
        q = q.unflatten(1, (heads, -1)).transpose(-1, -2) * (self.dk // heads) ** -0.5
        k = k.unflatten(1, (heads, -1)).transpose(-1, -2)
        v = v.unflatten(1, (heads, -1)).transpose(-1, -2)
        logits = q @ k.transpose(-1, -2)
        if self.relative:
            logits = logits + self.relative_logits(q, h, w)
        out = torch.softmax(logits, dim=-1) @ v  # (N, heads, HW, d_v^h)
        return out.transpose(-1, -2).reshape(n, self.dv, h, w)

    def forward(self, x: Tensor) -> Tensor:
        attn = self.proj(self.attention(self.pool(x)))
        if self.conv is None:
            return attn
        return torch.cat([self.conv(x), attn], dim=1)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'dk={self.dk}, dv={self.dv}, heads={self.heads}, relative={self.relative}, '
                f'stride={self.stride}')
