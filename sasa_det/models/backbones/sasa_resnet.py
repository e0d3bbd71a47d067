"""SASAResNet: mmdet's ResNet with its spatial convolutions replaced by self-attention.

Every 3x3 convolution of the stages marked in ``stage_with_attention`` becomes the attention
layer of ``attention_cfg``: a SASA layer (:class:`~sasa_det.layers.LocalSelfAttention2d`,
``type='SASA'``) or an attention augmented convolution (:class:`~sasa_det.layers.AAConv2d`,
``type='AA'``); ``stem='attention'`` replaces the 7x7/2 convolution and 3x3/2 max pool with
:class:`~sasa_det.layers.SpatiallyAwareStem`.
Everything else is mmdet's ResNet, so with no attention and the conv stem the parameters, their
names and the outputs are exactly ResNet's, and an ImageNet ResNet checkpoint initialises the
convolutional parts of every variant (mmengine logs the attention weights it lacks as missing).
"""
from typing import Optional, Sequence

import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.registry import MODELS

from ...layers import SpatiallyAwareStem
from ..conv_layers import attention_layer_cfg

STEMS = ('conv', 'attention')


class SASABasicBlock(BasicBlock):
    """mmdet's BasicBlock whose two 3x3 convolutions are built from the stage's ``dcn`` cfg.

    ResNet hands every block of a stage that cfg (mmdet's per-stage cfg of the 3x3
    convolutions, ``dcn``/``stage_with_dcn``); mmdet's Bottleneck builds its conv2 from it,
    mmdet's BasicBlock takes none, so this block builds conv1 and conv2 from it instead.
    """

    def __init__(self, *args, dcn: Optional[dict] = None, conv_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(*args, conv_cfg=conv_cfg if dcn is None else dcn, **kwargs)


@MODELS.register_module()
class SASAResNet(ResNet):
    """ResNet (v1, stride on the spatial layer) with self-attention in place of convolutions.

    The attention layers take the places mmdet's ResNet already has for them, so its
    ``forward``, ``_freeze_stages`` and ``train`` run unchanged:

    - attention stages: ResNet passes each stage the cfg of its blocks' 3x3 convolutions
      (its ``dcn``/``stage_with_dcn`` mechanism); here that cfg builds ``attention_cfg``'s
      layer, once, as the Bottleneck's conv2 (both 3x3 convolutions of a BasicBlock);
    - attention stem: :class:`SpatiallyAwareStem` is ResNet's ``stem`` (the slot its
      ``deep_stem`` fills: frozen with ``frozen_stages >= 0``), and ``maxpool`` is an identity
      because the stem ends in its own max pool.

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
        attention_cfg: the attention layer, as a conv cfg: ``dict(type='SASA', ...)`` (local
            self-attention, defaults ``kernel_size=7, heads=8``) or ``dict(type='AA', ...)``
            (attention augmented 3x3 convolution, defaults ``dk=0.2, dv=0.1, heads=8``). The
            stride and dilation are the replaced convolution's.
        **kwargs: mmdet ResNet's arguments: in_channels, stem_channels, base_channels,
            num_stages, strides, dilations, out_indices, style, deep_stem, avg_down,
            frozen_stages, conv_cfg, norm_cfg, norm_eval, dcn, stage_with_dcn, plugins, with_cp,
            zero_init_residual, pretrained, init_cfg. ``dcn`` and attention stages exclude each
            other (both are the stage's 3x3 convolution cfg).

    Shape:
        x (N, in_channels, H, W) -> tuple of the ``out_indices`` stage outputs, stage i of
        (N, base_channels * 2**i * expansion, ceil(H / 2**(i + 2)), ceil(W / 2**(i + 2))).
    """

    arch_settings = {
        **ResNet.arch_settings,
        26: (Bottleneck, (1, 2, 4, 1)),
        38: (Bottleneck, (2, 3, 5, 2)),
    }

    def __init__(self, depth: int, stem: str = 'conv', stem_cfg: Optional[dict] = None,
                 stage_with_attention: Sequence[bool] = (True, True, True, True),
                 attention_cfg: Optional[dict] = None, **kwargs) -> None:
        if 'spatial_layer' in kwargs:
            layer_type = {'sasa': 'SASA', 'aa': 'AA'}.get(kwargs['spatial_layer'], '...')
            raise ValueError(f"spatial_layer={kwargs['spatial_layer']!r} is now the type of "
                             f"attention_cfg: write attention_cfg=dict(type={layer_type!r}, "
                             f"...) and no spatial_layer")
        if depth not in self.arch_settings:
            raise ValueError(f'depth must be one of {tuple(sorted(self.arch_settings))}, '
                             f'got {depth!r}')
        if stem not in STEMS:
            raise ValueError(f'stem must be one of {STEMS}, got {stem!r}')
        num_stages = kwargs.get('num_stages', 4)
        stage_with_attention = tuple(stage_with_attention)
        if len(stage_with_attention) != num_stages:
            raise ValueError(f'stage_with_attention must have num_stages ({num_stages}) '
                             f'entries, got {stage_with_attention!r}')
        if stem == 'attention' and kwargs.get('deep_stem', False):
            raise ValueError("deep_stem=True and stem='attention' both replace the 7x7 "
                             'convolution; choose one')
        self.stem_type = stem
        self.stem_cfg = dict(stem_cfg or {})
        self.stage_with_attention = stage_with_attention
        self.attention_cfg = attention_layer_cfg(
            dict(type='SASA') if attention_cfg is None else attention_cfg)
        if any(stage_with_attention):
            kwargs.update(self._attention_stages(kwargs, stage_with_attention))
        if stem == 'attention':
            kwargs['deep_stem'] = True  # ResNet's `stem` slot, see _make_stem_layer
        super().__init__(depth, **kwargs)

    def _attention_stages(self, kwargs: dict, stage_with_attention: tuple) -> dict:
        """ResNet's per-stage 3x3 convolution cfg (dcn, stage_with_dcn) that builds the
        attention layer in the stages marked in ``stage_with_attention``."""
        if kwargs.get('dcn') is not None:
            raise ValueError(f'dcn and attention both replace the 3x3 convolutions; use dcn '
                             f'with stage_with_attention=(False,) * num_stages, got dcn='
                             f"{kwargs['dcn']!r} and stage_with_attention="
                             f'{stage_with_attention!r}')
        if kwargs.get('conv_cfg') is not None:
            raise ValueError(f"conv_cfg must be None with attention stages (mmdet's Bottleneck "
                             f"builds the attention layer where it builds a dcn, which takes no "
                             f"conv_cfg), got conv_cfg={kwargs['conv_cfg']!r}")
        return dict(dcn=dict(type='AttentionLayer', attention_cfg=self.attention_cfg),
                    stage_with_dcn=stage_with_attention)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        if self.stem_type == 'conv':
            super()._make_stem_layer(in_channels, stem_channels)
            return
        # ResNet's forward runs self.stem then self.maxpool when deep_stem is set, and
        # _freeze_stages freezes self.stem.
        self.stem = SpatiallyAwareStem(
            in_channels, stem_channels,
            norm_layer=lambda channels: build_norm_layer(self.norm_cfg, channels)[1],
            **self.stem_cfg)
        self.maxpool = nn.Identity()  # the stem ends in its block max pool

    def make_res_layer(self, **kwargs) -> nn.Module:
        if kwargs['block'] is BasicBlock and (kwargs['dcn'] or {}).get('type') == 'AttentionLayer':
            kwargs['block'] = SASABasicBlock  # builds both 3x3 convolutions from the stage cfg
        return super().make_res_layer(**kwargs)

    def train(self, mode: bool = True) -> 'SASAResNet':
        super().train(mode)
        return self  # mmdet's ResNet.train returns None, which breaks `model.train().eval()`
