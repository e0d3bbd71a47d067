"""SASA layer: local self-attention as a drop-in replacement for a k x k spatial convolution."""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops import cpu_layer, local_attention_2d, local_attention_logits_reference
from ..ops.local_attention import IMPLEMENTATIONS, PADDING_MODES
from .positional import sinusoidal_2d

POSITIONAL_ENCODINGS = ('relative', 'absolute', 'none')
LOGITS = ('content+relative', 'relative', 'content')
RELATIVE_TABLES = ('shared', 'per_head')
DOWNSAMPLING = ('avgpool', 'query')
SIMILARITIES = ('dot', 'cosine')
PAPER_HEADS = 8
# Scaled cosine attention (Swin Transformer V2): the temperature starts at 10, at most 100.
COSINE_INITIAL_SCALE, COSINE_MAX_SCALE = 10.0, 100.0


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f'{name} must be one of {tuple(allowed)}, got {value!r}')


def _square_kernel_size(kernel_size) -> int:
    if isinstance(kernel_size, (tuple, list)):
        if len(set(kernel_size)) != 1:
            raise ValueError(f'kernel_size must be square, got {kernel_size!r}')
        kernel_size = kernel_size[0]
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size!r}')
    return kernel_size


def _resolve_heads(out_channels: int, heads: Optional[int], head_dim: Optional[int]) -> int:
    """The number of heads from ``heads`` and/or ``head_dim`` (C_out = heads * head_dim)."""
    if head_dim is not None:
        if not isinstance(head_dim, int) or head_dim < 1 or out_channels % head_dim:
            raise ValueError(f'head_dim must be a positive divisor of out_channels '
                             f'({out_channels}), got {head_dim!r}')
        if heads is not None and heads * head_dim != out_channels:
            raise ValueError(f'heads={heads!r} and head_dim={head_dim!r} disagree: '
                             f'out_channels ({out_channels}) / head_dim is '
                             f'{out_channels // head_dim} heads; give one of them '
                             f'(heads=None with head_dim)')
        return out_channels // head_dim
    heads = PAPER_HEADS if heads is None else heads
    if not isinstance(heads, int) or heads < 1 or out_channels % heads:
        raise ValueError(f'out_channels ({out_channels}) must be divisible by heads '
                         f'({heads!r})')
    return heads


class _UnitChannels(torch.autograd.Function):
    """y = x * scale / max(|x|, eps), |x| the L2 norm over dim 2 of planar x (B, heads, d, H, W),
    scale (heads, 1, 1, 1) or None. The gradient is written out, dx = f (dy - x (x . dy) / |x|^2)
    with f = scale / |x| (dx = f dy where the norm is clamped at eps) and d scale = the sum of
    (x . dy) / |x|: four passes over x in backward where autograd's chain through the square, sum,
    clamp, rsqrt and the products took ten, the largest elementwise cost of the cosine layer."""

    @staticmethod
    def forward(ctx, planar: Tensor, scale: Optional[Tensor], eps: float) -> Tensor:
        squares = planar.square().sum(dim=2, keepdim=True)
        inv_norm = squares.clamp_min(eps * eps).rsqrt_()
        factor = inv_norm if scale is None else inv_norm * scale
        ctx.save_for_backward(planar, inv_norm, factor, squares > eps * eps)
        ctx.scale_shape = None if scale is None else scale.shape
        return planar * factor

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        planar, inv_norm, factor, unclamped = ctx.saved_tensors
        dot = (planar * grad).sum(dim=2, keepdim=True)
        radial = torch.where(unclamped, dot * inv_norm.square(), 0)
        grad_planar = torch.addcmul(grad, planar, radial, value=-1).mul_(factor)
        grad_scale = None
        if ctx.scale_shape is not None and ctx.needs_input_grad[1]:
            grad_scale = (dot * inv_norm).sum_to_size(ctx.scale_shape)
        return grad_planar, grad_scale, None


def _unit_channels(planar: Tensor, scale: Optional[Tensor] = None, eps: float = 1e-12) -> Tensor:
    """F.normalize(planar, dim=2) * scale for (B, heads, d, H, W): each head's d-vector of each
    pixel divided by its L2 norm (at least eps), times a per-head scale (heads, 1, 1, 1) if given.
    A sum of squares over the channel dim, which reduces vectorised over the contiguous pixels:
    vector_norm over a non-innermost dim took ~15x longer, a third of the demo model's training
    step. The scale multiplies the (B, heads, 1, H, W) factor, not the d times larger tensor. The
    clamp keeps zero vectors' gradient finite."""
    return _UnitChannels.apply(planar, scale, eps)


def _channels_last(planar: Tensor) -> Tensor:
    """(B, heads, m, H, W) -> the op's (B, H, W, heads, m) view of the same memory."""
    return planar.permute(0, 3, 4, 1, 2)


class LocalSelfAttention2d(nn.Module):
    """Stand-alone self-attention over each pixel's k x k neighbourhood (Ramachandran et al. 2019).

    ``y_ij = sum_{ab in N_k(ij)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab`` with dense 1x1
    projections q = W_Q x, k = W_K x, v = W_V x (no bias), ``heads`` groups of d = C_out / heads
    channels, and relative embeddings r = concat(r_row[a-i], r_col[b-j]) of d/2 + d/2 dims shared
    by all heads. Neighbours outside the image are excluded from the softmax
    (``padding_mode='mask'``). A stride of 2 is a 2x2 average pool after stride-1 attention
    (``downsample='avgpool'``).

    Every option defaults to the paper; the others are opt-in variants from later work.

    Args:
        in_channels, out_channels: C_in and C_out; C_out must divide by the number of heads.
        kernel_size: window size k (odd, any size; may exceed the feature map).
        stride: 1 or 2.
        heads: number of attention heads; None (default) is 8, the paper's, unless ``head_dim``
            is given.
        positional_encoding: 'relative' (learned row/column tables), 'absolute' (2D sinusoidal
            embedding of the key's position, in place of r) or 'none'.
        logits: 'content+relative' (q.k + q.r), 'relative' (q.r only) or 'content' (q.k only).
        padding_mode: 'mask' (default) or 'zeros' (zero keys and values that stay in the softmax,
            as in implementations that zero-pad).
        scale: factor on the logits; None (default) is the paper's unscaled formula. Use
            ``head_dim ** -0.5`` for Transformer-style scaling.
        bias: add a learned bias to the output (for ConvModule's bias=True); the paper has none.
        implementation: see :func:`sasa_det.ops.local_attention_2d`. With 'auto' or
            'cpu_kernel', float32 or float64 CPU inputs and stride-1 queries, the layer with
            content and relative logits runs as one autograd Function
            (:func:`sasa_det.ops.cpu_layer.sasa_layer_cpu`: same values, fewer ops).
        head_dim: channels per head d, so heads = C_out / d (as BoTNet and HaloNet configure
            their layers); None (default) takes ``heads``. Giving both raises unless they agree.
        position_bias: add a learned, content-free bias b[head, u, w] per head and window offset
            to the logits (Swin's and NAT's relative position bias), initialised to zero. The
            paper has none (False).
        relative_tables: 'shared' (the paper: one d/2 row and one d/2 column table for all
            heads) or 'per_head' (each head has its own row and column tables).
        downsample: how a stride-2 layer downsamples: 'avgpool' (the paper: stride-1
            attention, then a 2x2 average pool) or 'query' (attention only from the queries at
            (2i, 2j), each over its k x k window of the full-resolution keys, like a strided
            convolution with padding k // 2: 4x fewer queries, as HaloNet's strided layers).
        similarity: 'dot' (the paper: q . k, times ``scale`` if given) or 'cosine' (Swin
            Transformer V2's scaled cosine attention: q and k are L2-normalised per head and q
            is multiplied by a learned per-head temperature ``exp(logit_scale)``, initialised to
            10 and clamped at 100, so every logit term, q.k and q.r alike, stays bounded by the
            temperature times the table norm: no head collapses to one key or stays a uniform
            blur by the accident of its input scale). Needs key logits and ``scale=None``.
        padding, dilation, groups: accepted for ``build_conv_layer`` compatibility; attention keeps
            the spatial size, so padding is ignored, and only dilation=1, groups=1 are supported.

    Shape:
        x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 heads: Optional[int] = None, positional_encoding: str = 'relative',
                 logits: str = 'content+relative', padding_mode: str = 'mask',
                 scale: Optional[float] = None, bias: bool = False,
                 implementation: str = 'auto', head_dim: Optional[int] = None,
                 position_bias: bool = False, relative_tables: str = 'shared',
                 downsample: str = 'avgpool', similarity: str = 'dot', padding=None,
                 dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        kernel_size = _square_kernel_size(kernel_size)
        if stride not in (1, 2, (1, 1), (2, 2)):
            raise ValueError(f'stride must be 1 or 2, got {stride!r}')
        if dilation not in (1, (1, 1)) or groups != 1:
            raise ValueError(f'dilation and groups must be 1, got dilation={dilation!r}, '
                             f'groups={groups!r}')
        heads = _resolve_heads(out_channels, heads, head_dim)
        _check_choice('positional_encoding', positional_encoding, POSITIONAL_ENCODINGS)
        _check_choice('logits', logits, LOGITS)
        _check_choice('padding_mode', padding_mode, PADDING_MODES)
        _check_choice('implementation', implementation, IMPLEMENTATIONS)
        _check_choice('relative_tables', relative_tables, RELATIVE_TABLES)
        _check_choice('downsample', downsample, DOWNSAMPLING)
        _check_choice('similarity', similarity, SIMILARITIES)
        if similarity == 'cosine' and (scale is not None or logits == 'relative'):
            raise ValueError(f"similarity='cosine' normalises q and k and learns its own scale: "
                             f"it needs scale=None and key logits, got scale={scale!r}, "
                             f"logits={logits!r}")
        if not isinstance(position_bias, bool):
            raise ValueError(f'position_bias must be True or False, got {position_bias!r}')
        self._check_positional(positional_encoding, logits, relative_tables, out_channels // heads)

        stride = stride[0] if isinstance(stride, tuple) else stride
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.heads, self.head_dim = heads, out_channels // heads
        self.positional_encoding, self.logits = positional_encoding, logits
        self.padding_mode, self.implementation = padding_mode, implementation
        self.scale, self.relative_tables, self.downsample = scale, relative_tables, downsample
        self.similarity = similarity
        self.uses_content = logits != 'relative'
        # Queries sit every query_stride pixels; the pool takes the rest of the stride.
        self.query_stride = stride if downsample == 'query' else 1
        pool_stride = stride // self.query_stride
        self.pool = (nn.AvgPool2d(pool_stride, pool_stride, ceil_mode=True) if pool_stride > 1
                     else nn.Identity())
        # ConvModule reads these off its conv.
        self.padding, self.dilation, self.groups = (0, 0), (1, 1), 1
        self.transposed, self.output_padding = False, (0, 0)
        self._make_parameters(bias, position_bias)
        self.reset_parameters()

    @staticmethod
    def _check_positional(positional_encoding: str, logits: str, relative_tables: str,
                          head_dim: int) -> None:
        uses_position = logits != 'content'
        if uses_position != (positional_encoding != 'none'):
            raise ValueError(f"logits={logits!r} needs positional_encoding "
                             f"{'in (relative, absolute)' if uses_position else '= none'}, "
                             f"got positional_encoding={positional_encoding!r}")
        if relative_tables != 'shared' and positional_encoding != 'relative':
            raise ValueError(f"relative_tables={relative_tables!r} needs positional_encoding="
                             f"'relative', got positional_encoding={positional_encoding!r}")
        if uses_position and head_dim % 2:
            raise ValueError(f'positional encodings split the head dim into row and column '
                             f'halves, so out_channels / heads must be even, got {head_dim}')

    def _make_parameters(self, bias: bool, position_bias: bool) -> None:
        projections = 3 if self.uses_content else 2  # no W_K when no logit uses keys
        # [W_Q; W_K; W_V] as one (projections * C_out, C_in) weight; forward applies W_Q at the
        # query positions and [W_K; W_V] at every position.
        self.qkv = nn.Linear(self.in_channels, projections * self.out_channels, bias=False)
        if self.positional_encoding == 'relative':
            table = (self.kernel_size, self.head_dim // 2)
            if self.relative_tables == 'per_head':
                table = (self.heads, *table)
            self.rel_row = nn.Parameter(torch.empty(table))
            self.rel_col = nn.Parameter(torch.empty(table))
        else:
            self.register_parameter('rel_row', None)
            self.register_parameter('rel_col', None)
        self.position_bias = nn.Parameter(
            torch.zeros(self.heads, self.kernel_size, self.kernel_size)) if position_bias else None
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        self.logit_scale = nn.Parameter(torch.empty(self.heads, 1)) \
            if self.similarity == 'cosine' else None

    def reset_parameters(self) -> None:
        # Kaiming-normal fan-in init of each projection, as for the 1x1 convs they are.
        nn.init.normal_(self.qkv.weight, std=math.sqrt(1.0 / self.in_channels))
        if self.rel_row is not None:
            nn.init.normal_(self.rel_row, std=self.head_dim ** -0.5)
            nn.init.normal_(self.rel_col, std=self.head_dim ** -0.5)
        if self.position_bias is not None:
            nn.init.zeros_(self.position_bias)  # starts as the paper's layer
        if self.logit_scale is not None:
            nn.init.constant_(self.logit_scale, math.log(COSINE_INITIAL_SCALE))

    @property
    def value_weight(self) -> Tensor:
        """W_V as a (C_out, C_in) view of the fused projection weight."""
        return self.qkv.weight[-self.out_channels:]

    def _relative_logits(self, q: Tensor) -> Tuple[Tensor, Tensor]:
        """q . r_row[u] and q . r_col[w] for planar q (B, heads, d, Ho, Wo): two planar
        (B, heads, k, Ho, Wo) tensors. The row tables meet the first d/2 channels of each head,
        the column tables the last d/2."""
        b, heads, d, h, w = q.shape
        halves = q.reshape(b * heads, d, h * w).split(d // 2, dim=1)  # views if q is contiguous
        logits = []
        for table, half in zip((self.rel_row, self.rel_col), halves):
            table = table.to(q.dtype)
            if self.relative_tables == 'shared':  # (k, d/2), the same for every head
                table = table.expand(b * heads, -1, -1)
            else:  # (heads, k, d/2), one per head
                table = table.expand(b, -1, -1, -1).flatten(0, 1)
            # bmm, not matmul: matmul's broadcasting copies q and the tables.
            logits.append(torch.bmm(table, half).view(b, heads, -1, h, w))
        return logits[0], logits[1]

    def _project(self, x: Tensor, weight: Tensor) -> Tensor:
        """The 1x1 projection of x (N, C_in, H, W) by weight (P * C_out, C_in), in planar
        layout: (N, P, heads, d, H, W), each channel's image contiguous."""
        n, _, h, w = x.shape
        # (N, P * C_out, H * W), no transposition. bmm on the expanded weight: matmul's
        # broadcasting copies the weight per image and its backward copies again (2x slower).
        y = torch.bmm(weight.expand(n, -1, -1), x.flatten(2))
        return y.view(n, -1, self.heads, self.head_dim, h, w)

    def attention_inputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The arguments of :func:`sasa_det.ops.local_attention_2d` for input x (N, C_in, H, W):
        q (N, Ho, Wo, heads, d) at the query positions, (Ho, Wo) = ceil((H, W) / query_stride);
        k (or None), v (N, H, W, heads, d); row and column logits (N, Ho, Wo, heads, k) or None;
        the position bias (heads, k, k) or None.

        Everything is computed in planar layout, (N, heads, d or k, H, W) in memory, and handed
        to the op as permuted views of it: the projection is one matmul on the NCHW input, and
        the op's kernels read each channel's image rows contiguously."""
        h, w = x.shape[-2:]
        s, c_out = self.query_stride, self.out_channels
        weight = self.qkv.weight
        # q alone, so that it is contiguous for the relative logits' bmm; k and v from one
        # projection, split by unbind: one stack in backward instead of a zero-filled gradient
        # per select.
        q = self._project(x[:, :, ::s, ::s] if s > 1 else x, weight[:c_out]).squeeze(1)
        kv = self._project(x, weight[c_out:]).unbind(1)
        k, v = kv if len(kv) == 2 else (None, kv[0])
        if self.logit_scale is not None:
            temperature = self.logit_scale.clamp(max=math.log(COSINE_MAX_SCALE)).exp()
            q = _unit_channels(q, temperature.to(q.dtype)[:, :, None, None])
            k = _unit_channels(k)
        elif self.scale is not None:
            q = q * self.scale

        row_logits = col_logits = None
        if self.positional_encoding == 'relative':
            row_logits, col_logits = (_channels_last(t) for t in self._relative_logits(q))
        elif self.positional_encoding == 'absolute':
            position = sinusoidal_2d(h, w, self.head_dim, x.device, q.dtype).permute(2, 0, 1)
            k = position.expand(v.shape) if k is None else k + position  # q.(k + p) = q.k + q.p
        position_bias = None if self.position_bias is None else self.position_bias.to(q.dtype)
        k = None if k is None else _channels_last(k)
        return _channels_last(q), k, _channels_last(v), row_logits, col_logits, position_bias

    def _takes_cpu_layer(self, x: Tensor) -> bool:
        """True when forward computes the attention as one autograd Function,
        :func:`sasa_det.ops.cpu_layer.sasa_layer_cpu` (the composed path's values)."""
        return (self.implementation in ('auto', 'cpu_kernel') and self.uses_content
                and self.positional_encoding == 'relative' and self.query_stride == 1
                and cpu_layer.supports(x, self.qkv.weight, self.rel_row, self.rel_col,
                                       self.position_bias, self.logit_scale))

    def _attention(self, x: Tensor) -> Tensor:
        """The attention's output (N, C_out, Ho, Wo), before the bias and the pool."""
        if self._takes_cpu_layer(x):
            return cpu_layer.sasa_layer_cpu(
                x, self.qkv.weight, self.heads, self.kernel_size, self.rel_row, self.rel_col,
                self.position_bias, self.logit_scale, math.log(COSINE_MAX_SCALE), self.scale,
                self.padding_mode == 'mask')
        q, k, v, row_logits, col_logits, position_bias = self.attention_inputs(x)
        y = local_attention_2d(q, k, v, self.kernel_size, row_logits, col_logits,
                               self.padding_mode, self.implementation, position_bias,
                               self.query_stride)
        # A view of the fused kernel's planar output, a copy otherwise.
        return y.permute(0, 3, 4, 1, 2).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self._attention(x)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return self.pool(y)

    def attention_maps(self, x: Tensor) -> Dict[str, Tensor]:
        """The attention on x for diagnostics: the logits from the op's reference
        (:func:`sasa_det.ops.local_attention_logits_reference`) and their softmax.

        Returns dict(logits=(N, Ho, Wo, heads, k*k) in the layer's dtype, -inf for keys
        outside the image with padding_mode='mask'; weights=the same shape in at least float32;
        valid=(Ho, Wo, 1, k*k), True for keys inside the image).
        """
        q, k, _, row_logits, col_logits, position_bias = self.attention_inputs(x)
        logits, valid = local_attention_logits_reference(
            q, k, self.kernel_size, row_logits, col_logits, self.padding_mode, position_bias,
            self.query_stride, input_size=tuple(x.shape[-2:]))
        weights = torch.softmax(logits, dim=-1,
                                dtype=torch.promote_types(logits.dtype, torch.float32))
        return dict(logits=logits, weights=weights, valid=valid)

    def extra_repr(self) -> str:
        options = [f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}',
                   f'stride={self.stride}', f'heads={self.heads}',
                   f'positional_encoding={self.positional_encoding!r}',
                   f'logits={self.logits!r}', f'padding_mode={self.padding_mode!r}',
                   f'scale={self.scale}']
        if self.position_bias is not None:
            options.append('position_bias=True')
        if self.relative_tables != 'shared':
            options.append(f'relative_tables={self.relative_tables!r}')
        if self.stride > 1:
            options.append(f'downsample={self.downsample!r}')
        if self.similarity != 'dot':
            options.append(f'similarity={self.similarity!r}')
        return ', '.join(options)
