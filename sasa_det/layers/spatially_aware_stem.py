"""The attention stem of SASA (Ramachandran et al. 2019, section 3.2): spatially-aware values.

Replaces ResNet's 7x7/2 convolution + 3x3/2 max pool. RGB pixels are individually uninformative,
so plain content attention learns edge detectors poorly; the stem injects distance information
through the values instead: each position of the pooling window mixes its own value matrix

    v_ab = (sum_m p(a, b, m) W_V^m) x_ab,   p(a, b, m) = softmax_m((emb_row(a) + emb_col(b)) . nu_m)

where (a, b) is the row/column position inside the block. Attention runs inside each
non-overlapping ``block_size`` x ``block_size`` block (the receptive field aligned with the max
pool window), then batch norm, ReLU and a ``block_size`` x ``block_size`` max pool of stride
``block_size``.
"""
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class SpatiallyAwareStem(nn.Module):
    """Block-local self-attention with spatially-aware values, BN, ReLU, block max pool.

    Args:
        in_channels: image channels (3).
        out_channels: stem width (64, as ResNet's stem); must divide by ``heads``.
        block_size: side of the attention block and of the max pool window and stride (4).
        heads: attention heads (4); the mixture weights p(a, b, m) are shared by all heads.
        num_value_mixtures: m, the number of value matrices W_V^m (the paper does not state it;
            4 by default).
        embed_dim: width of emb_row, emb_col and nu_m (not stated by the paper either; any
            width >= m can express every p that factorises as above).
        scale: factor on the q . k logits; None (default) is the paper's unscaled formula.
        norm_layer: callable ``channels -> nn.Module`` for the norm after attention (the
            backbone passes its ``norm_cfg`` layer, e.g. SyncBN).

    Input sizes need not divide by ``block_size``: the last row/column of blocks is partial.
    A partial block attends only over its real pixels (padding is masked out of the softmax,
    never zero keys), batch norm sees only real pixels, and the max pool takes the partial
    window (``ceil_mode``), so the output is (N, C_out, ceil(H / s), ceil(W / s)) as for
    ResNet's stem, and a pixel's output never depends on padding.

    Shape:
        x (N, C_in, H, W) -> (N, C_out, ceil(H / block_size), ceil(W / block_size)).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, block_size: int = 4,
                 heads: int = 4, num_value_mixtures: int = 4, embed_dim: int = 16,
                 scale: Optional[float] = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                            ('block_size', block_size), ('heads', heads),
                            ('num_value_mixtures', num_value_mixtures),
                            ('embed_dim', embed_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if out_channels % heads:
            raise ValueError(f'out_channels ({out_channels}) must be divisible by heads '
                             f'({heads})')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.block_size, self.heads, self.head_dim = block_size, heads, out_channels // heads
        self.num_value_mixtures, self.scale = num_value_mixtures, scale

        self.qk = nn.Linear(in_channels, 2 * out_channels, bias=False)  # [W_Q; W_K]
        self.value_weights = nn.Parameter(  # W_V^m, m = 0..M-1
            torch.empty(num_value_mixtures, out_channels, in_channels))
        self.emb_row = nn.Parameter(torch.empty(block_size, embed_dim))
        self.emb_col = nn.Parameter(torch.empty(block_size, embed_dim))
        self.nu = nn.Parameter(torch.empty(num_value_mixtures, embed_dim))
        self.norm = norm_layer(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(block_size, block_size, ceil_mode=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Fan-in init of every projection, as for the 1x1 convolutions they are; embeddings
        # give O(1) mixture logits so p starts position-dependent but not saturated.
        std = math.sqrt(1.0 / self.in_channels)
        nn.init.normal_(self.qk.weight, std=std)
        nn.init.normal_(self.value_weights, std=std)
        nn.init.normal_(self.emb_row)
        nn.init.normal_(self.emb_col)
        nn.init.normal_(self.nu, std=self.nu.shape[1] ** -0.5)

    def mixture_weights(self) -> Tensor:
        """p(a, b, m) of shape (block_size, block_size, M); sums to 1 over m."""
        emb = self.emb_row[:, None, :] + self.emb_col[None, :, :]  # (s, s, E)
        return torch.softmax(emb @ self.nu.t(), dim=-1)

    def position_value_weights(self) -> Tensor:
        """sum_m p(a, b, m) W_V^m for every block position: (s * s, C_out, C_in)."""
        p = self.mixture_weights().flatten(0, 1)  # (s*s, M)
        return torch.einsum('pm,moc->poc', p, self.value_weights)

    def attend(self, x: Tensor) -> Tensor:
        """Block-local attention before norm and pooling: (N, C_in, H, W) -> (N, C_out, H, W)."""
        n, c, h, w = x.shape
        s = self.block_size
        hb, wb = -(-h // s), -(-w // s)
        x = F.pad(x, (0, wb * s - w, 0, hb * s - h))
        # (N, hb, wb, s*s, C_in): pixels of each block, block position p = a * s + b.
        blocks = x.view(n, c, hb, s, wb, s).permute(0, 2, 4, 3, 5, 1).reshape(n, hb, wb, s * s, c)

        def split_heads(t: Tensor) -> Tensor:  # (..., s*s, C_out) -> (..., heads, s*s, d)
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(-2, -3)

        q, k = self.qk(blocks).chunk(2, dim=-1)
        v = torch.einsum('nijpc,poc->nijpo', blocks, self.position_value_weights())
        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        logits = q @ k.transpose(-1, -2)  # (N, hb, wb, heads, s*s queries, s*s keys)
        if self.scale is not None:
            logits = logits * self.scale
        if hb * s != h or wb * s != w:
            rows = torch.arange(hb * s, device=x.device).view(hb, s) < h  # (hb, s)
            cols = torch.arange(wb * s, device=x.device).view(wb, s) < w  # (wb, s)
            real = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(hb, wb, 1, 1, s * s)
            # Every block holds its top-left pixel, so no query row is fully masked.
            logits = logits.masked_fill(~real, float('-inf'))
        y = torch.softmax(logits, dim=-1) @ v  # (N, hb, wb, heads, s*s, d)
        y = y.transpose(-2, -3).reshape(n, hb, wb, s, s, self.out_channels)
        y = y.permute(0, 5, 1, 3, 2, 4).reshape(n, self.out_channels, hb * s, wb * s)
        return y[:, :, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.norm(self.attend(x))))

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, block_size={self.block_size}, '
                f'heads={self.heads}, num_value_mixtures={self.num_value_mixtures}, '
                f'scale={self.scale}')
