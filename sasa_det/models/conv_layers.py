"""Register the SASA layer as conv type 'SASA' in mmengine's root MODELS registry.

mmcv's ``build_conv_layer`` (and so every mmdet ``conv_cfg``) looks conv types up there, so
``build_conv_layer(dict(type='SASA', heads=8), 64, 64, kernel_size=7)`` builds
:class:`~sasa_det.layers.LocalSelfAttention2d`.
"""
from mmengine.registry import MODELS

from ..layers import LocalSelfAttention2d

MODELS.register_module('SASA', module=LocalSelfAttention2d, force=True)
