"""SASAResNet: mmdet's ResNet with its spatial convolutions replaced by self-attention.

Every 3x3 convolution of the stages marked in ``stage_with_attention`` becomes a SASA layer
(:class:`~sasa_det.layers.LocalSelfAttention2d`) or an attention augmented convolution
(:class:`~sasa_det.layers.AAConv2d`, ``spatial_layer='aa'``); ``stem='attention'`` replaces the
7x7/2 convolution and 3x3/2 max pool with :class:`~sasa_det.layers.SpatiallyAwareStem`.
Everything else is mmdet's ResNet, so with no attention and the conv stem the parameters, their
names and the outputs are exactly ResNet's, and an ImageNet ResNet checkpoint initialises the
convolutional parts of every variant (mmengine logs the attention weights it lacks as missing).
"""
from typing import Optional, Sequence

import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.registry import MODELS

from ...layers import AAConv2d, LocalSelfAttention2d, SpatiallyAwareStem

STEMS = ('conv', 'attention')
SPATIAL_LAYERS = ('sasa', 'aa')
DEFAULT_ATTENTION_CFG = dict(
    sasa=dict(kernel_size=7, heads=8),  # the paper's spatial extent and heads
    aa=dict(dk=0.2, dv=0.1, heads=8),  # AA-ResNet's kappa = 2 upsilon = 0.2 (Bello et al.)
)


def build_spatial_layer(spatial_layer: str, attention_cfg: dict, in_channels: int,
                        out_channels: int, stride: int, dilation: int) -> nn.Module:
    """The attention layer that takes the place of a 3x3 convolution with this stride."""
    if spatial_layer == 'sasa':
        return LocalSelfAttention2d(in_channels, out_channels, stride=stride, dilation=dilation,
                                    **attention_cfg)
    attention_cfg = dict(kernel_size=3, **attention_cfg)  # the convolution AA augments
    return AAConv2d(in_channels, out_channels, stride=stride, dilation=dilation, **attention_cfg)


class SASABottleneck(Bottleneck):
    """mmdet's Bottleneck; with ``spatial_cfg`` its 3x3 conv2 is an attention layer.

    The stride stays where mmdet puts it (conv2 for style 'pytorch', conv1 for 'caffe'); a
    strided attention layer is stride-1 attention followed by a 2x2 average pool.
    """

    def __init__(self, *args, spatial_cfg: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if spatial_cfg is not None:
            self.conv2 = build_spatial_layer(in_channels=self.planes, out_channels=self.planes,
                                             stride=self.conv2_stride, dilation=self.dilation,
                                             **spatial_cfg)


class SASABasicBlock(BasicBlock):
    """mmdet's BasicBlock; with ``spatial_cfg`` both 3x3 convolutions are attention layers."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, *args,
                 spatial_cfg: Optional[dict] = None, **kwargs) -> None:
        super().__init__(inplanes, planes, stride, dilation, *args, **kwargs)
        if spatial_cfg is not None:
            self.conv1 = build_spatial_layer(in_channels=inplanes, out_channels=planes,
                                             stride=stride, dilation=dilation, **spatial_cfg)
            self.conv2 = build_spatial_layer(in_channels=planes, out_channels=planes, stride=1,
                                             dilation=1, **spatial_cfg)


@MODELS.register_module()
class SASAResNet(ResNet):
    """ResNet (v1, stride on the spatial layer) with self-attention in place of convolutions.

    Args:
        depth: 26 ([1, 2, 4, 1] bottlenecks), 38 ([2, 3, 5, 2]), 50, 101, 152, or mmdet's 18/34
            (basic blocks: both 3x3 convolutions of a block become attention layers).
        stem: 'conv' (ResNet's 7x7/2 convolution + 3x3/2 max pool) or 'attention'
            (:class:`SpatiallyAwareStem`: 4x4 block attention with spatially-aware values, BN,
            ReLU, 4x4/4 max pool; its norm is built from ``norm_cfg``).
        stem_cfg: extra arguments of :class:`SpatiallyAwareStem` (block_size, heads,
            num_value_mixtures, embed_dim, scale).
        stage_with_attention: per stage, whether its 3x3 convolutions become attention layers
            (length ``num_stages``). The paper's ablation of stage groups uses e.g.
            (False, False, True, True); AA-ResNet augments the last three stages.
        spatial_layer: 'sasa' (local self-attention, the default) or 'aa' (attention
            augmented convolution, Bello et al.).
        attention_cfg: arguments of every attention layer, merged over the defaults
            ``dict(kernel_size=7, heads=8)`` for 'sasa' and ``dict(dk=0.2, dv=0.1, heads=8)``
            for 'aa' (kernel_size is then the augmented convolution's, 3).
        **kwargs: mmdet ResNet's arguments: in_channels, stem_channels, base_channels,
            num_stages, strides, dilations, out_indices, style, deep_stem, avg_down,
            frozen_stages, conv_cfg, norm_cfg, norm_eval, dcn, stage_with_dcn, plugins, with_cp,
            zero_init_residual, pretrained, init_cfg.

    Shape:
        x (N, in_channels, H, W) -> tuple of the ``out_indices`` stage outputs, stage i of
        (N, base_channels * 2**i * expansion, ceil(H / 2**(i + 2)), ceil(W / 2**(i + 2))).
    """

    arch_settings = {
        **ResNet.arch_settings,
        26: (Bottleneck, (1, 2, 4, 1)),
        38: (Bottleneck, (2, 3, 5, 2)),
    }
    # mmdet picks its zero-init of the last norm by the identity of these block classes, so
    # arch_settings keeps them; make_res_layer swaps in the subclasses above.
    _attention_blocks = {Bottleneck: SASABottleneck, BasicBlock: SASABasicBlock}

    def __init__(self, depth: int, stem: str = 'conv', stem_cfg: Optional[dict] = None,
                 stage_with_attention: Sequence[bool] = (True, True, True, True),
                 spatial_layer: str = 'sasa', attention_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        if depth not in self.arch_settings:
            raise ValueError(f'depth must be one of {tuple(sorted(self.arch_settings))}, '
                             f'got {depth!r}')
        if stem not in STEMS:
            raise ValueError(f'stem must be one of {STEMS}, got {stem!r}')
        if spatial_layer not in SPATIAL_LAYERS:
            raise ValueError(f'spatial_layer must be one of {SPATIAL_LAYERS}, '
                             f'got {spatial_layer!r}')
        num_stages = kwargs.get('num_stages', 4)
        stage_with_attention = tuple(stage_with_attention)
        if len(stage_with_attention) != num_stages:
            raise ValueError(f'stage_with_attention must have num_stages ({num_stages}) '
                             f'entries, got {stage_with_attention!r}')
        if stem == 'attention' and kwargs.get('deep_stem', False):
            raise ValueError("deep_stem=True and stem='attention' both replace the 7x7 "
                             'convolution; choose one')
        if kwargs.get('dcn') is not None:
            stage_with_dcn = kwargs.get('stage_with_dcn', (False,) * 4)
            both = [i for i, (a, d) in enumerate(zip(stage_with_attention, stage_with_dcn))
                    if a and d]
            if both:
                raise ValueError(f'stages {both} have both attention and dcn; the 3x3 '
                                 f'convolution can be only one of them')
        # ResNet.__init__ calls _make_stem_layer and make_res_layer, which read these (as
        # mmdet's ResNeXt sets its groups before calling ResNet.__init__).
        self.stem_type = stem
        self.stem_cfg = dict(stem_cfg or {})
        self.stage_with_attention = stage_with_attention
        self.spatial_layer = spatial_layer
        self.attention_cfg = {**DEFAULT_ATTENTION_CFG[spatial_layer], **(attention_cfg or {})}
        super().__init__(depth, **kwargs)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        if self.stem_type == 'conv':
            super()._make_stem_layer(in_channels, stem_channels)
            return
        self.stem = SpatiallyAwareStem(
            in_channels, stem_channels,
            norm_layer=lambda channels: build_norm_layer(self.norm_cfg, channels)[1],
            **self.stem_cfg)

    def make_res_layer(self, **kwargs) -> nn.Module:
        # ResNet builds stage i with planes = base_channels * 2**i.
        stage = (kwargs['planes'] // self.base_channels).bit_length() - 1
        if self.stage_with_attention[stage]:
            kwargs['block'] = self._attention_blocks[kwargs['block']]
            kwargs['spatial_cfg'] = dict(spatial_layer=self.spatial_layer,
                                         attention_cfg=self.attention_cfg)
        return super().make_res_layer(**kwargs)

    def _freeze_stages(self) -> None:
        if self.stem_type == 'conv':
            super()._freeze_stages()
            return
        if self.frozen_stages >= 0:
            self.stem.eval()
            for param in self.stem.parameters():
                param.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            layer = getattr(self, f'layer{i}')
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def forward(self, x):
        if self.stem_type == 'conv':
            return super().forward(x)
        x = self.stem(x)  # includes the pooling: stride 4, as conv + max pool
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'SASAResNet':
        super().train(mode)
        return self  # mmdet's ResNet.train returns None, which breaks `model.train().eval()`
