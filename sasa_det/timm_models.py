"""timm registrations: sasa_resnet{26,38,50,101}[_attnstem] ImageNet classifiers.

The classifier's body IS :class:`~sasa_det.models.backbones.SASAResNet` (module ``body``), with
timm's global pool + ``fc`` head, so weights pretrained with timm's own ``train.py`` load into
the mmdet backbone by dropping the ``body.`` prefix::

    import sasa_det, timm
    model = timm.create_model('sasa_resnet50', num_classes=1000)   # train it with timm
    backbone = dict(type='SASAResNet', depth=50,
                    init_cfg=dict(type='Pretrained', checkpoint='model_best.pth.tar',
                                  prefix='body.'))

or convert once with :func:`timm_to_mmdet_state_dict`. Only the timm side needs timm: without it
this module registers nothing and the mmdet backbone works as before.
"""
import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger
from torch import Tensor

from .models.backbones import SASAResNet

try:
    import timm
except ImportError:  # timm is a dependency; tolerate its absence for mmdet-only use
    timm = None

BODY_PREFIX = 'body.'


def timm_to_mmdet_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Keys of a timm ``sasa_resnet*`` checkpoint -> keys of :class:`SASAResNet`.

    Accepts a bare state dict or timm's checkpoint dict (``{'state_dict': ...}``); drops the
    classifier head and the ``module.`` prefix of DistributedDataParallel checkpoints.
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith(BODY_PREFIX):
            converted[key[len(BODY_PREFIX):]] = value
    return converted


def _init_weights_quietly(module: nn.Module) -> None:
    """mmengine's init_weights (Kaiming convs, zero-init last norms) without its INFO line per
    parameter, which a timm user creating a model does not want."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        module.init_weights()
    finally:
        logger.setLevel(level)


class SASAResNetClassifier(nn.Module):
    """timm-style ImageNet classifier around an mmdet :class:`SASAResNet` body.

    Args:
        depth, stem: as :class:`SASAResNet`.
        num_classes: classes of the ``fc`` head (0: no head, features only).
        in_chans: image channels.
        global_pool: timm pool type ('avg', 'max', 'avgmax', '' for none).
        drop_rate: dropout before ``fc``.
        **kwargs: further :class:`SASAResNet` arguments (stage_with_attention,
            attention_cfg such as ``dict(type='SASA', kernel_size=7, heads=8)`` or
            ``dict(type='AA', dk=0.2, dv=0.1, heads=8)``, stem_cfg, ...).

    Shape:
        x (N, in_chans, H, W) -> logits (N, num_classes).
    """

    def __init__(self, depth: int = 50, stem: str = 'conv', num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = 'avg', drop_rate: float = 0.0,
                 **kwargs) -> None:
        super().__init__()
        if timm is None:
            raise ImportError('SASAResNetClassifier needs timm (pip install timm)')
        kwargs.setdefault('norm_eval', False)  # classification trains the BN statistics
        self.body = SASAResNet(depth, stem=stem, in_channels=in_chans,
                               out_indices=(kwargs.get('num_stages', 4) - 1,), **kwargs)
        _init_weights_quietly(self.body)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = self.body.feat_dim
        self.global_pool, self.fc = timm.layers.create_classifier(
            self.num_features, num_classes, pool_type=global_pool)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for activation checkpointing: mmdet's with_cp on every block."""
        self.body.with_cp = enable
        for module in self.body.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        return dict(stem=r'^body\.(conv1|bn1|stem)',
                    blocks=r'^body\.layer(\d+)' if coarse else r'^body\.layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = 'avg') -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = timm.layers.create_classifier(
            self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> last stage's feature map (N, num_features, H/32, W/32)."""
        return self.body(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(first_conv: str) -> dict:
    # No released weights: pretrained=True warns and keeps the random init.
    return dict(url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
                crop_pct=0.875, interpolation='bilinear', mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), first_conv=first_conv, classifier='fc',
                license='apache-2.0')


MODEL_DEPTHS = {'sasa_resnet26': 26, 'sasa_resnet38': 38, 'sasa_resnet50': 50,
                'sasa_resnet101': 101}

if timm is not None:
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

    default_cfgs = generate_default_cfgs({
        **{name: _cfg('body.conv1') for name in MODEL_DEPTHS},
        **{name + '_attnstem': _cfg('body.stem.qk') for name in MODEL_DEPTHS},
    })

    def _create(variant: str, pretrained: bool, **kwargs) -> SASAResNetClassifier:
        depth = MODEL_DEPTHS[variant.replace('_attnstem', '')]
        stem = 'attention' if variant.endswith('_attnstem') else 'conv'
        return build_model_with_cfg(SASAResNetClassifier, variant, pretrained, depth=depth,
                                    stem=stem, **kwargs)

    @register_model
    def sasa_resnet26(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-26, conv stem, attention in all stages."""
        return _create('sasa_resnet26', pretrained, **kwargs)

    @register_model
    def sasa_resnet38(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-38, conv stem, attention in all stages."""
        return _create('sasa_resnet38', pretrained, **kwargs)

    @register_model
    def sasa_resnet50(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-50, conv stem, attention in all stages."""
        return _create('sasa_resnet50', pretrained, **kwargs)

    @register_model
    def sasa_resnet101(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-101, conv stem, attention in all stages."""
        return _create('sasa_resnet101', pretrained, **kwargs)

    @register_model
    def sasa_resnet26_attnstem(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-26, spatially-aware attention stem: fully attentional."""
        return _create('sasa_resnet26_attnstem', pretrained, **kwargs)

    @register_model
    def sasa_resnet38_attnstem(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-38, spatially-aware attention stem: fully attentional."""
        return _create('sasa_resnet38_attnstem', pretrained, **kwargs)

    @register_model
    def sasa_resnet50_attnstem(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-50, spatially-aware attention stem: fully attentional."""
        return _create('sasa_resnet50_attnstem', pretrained, **kwargs)

    @register_model
    def sasa_resnet101_attnstem(pretrained: bool = False, **kwargs) -> SASAResNetClassifier:
        """SASA ResNet-101, spatially-aware attention stem: fully attentional."""
        return _create('sasa_resnet101_attnstem', pretrained, **kwargs)
