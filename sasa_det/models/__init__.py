"""Thin mmdet/mmcv registrations of the layers in :mod:`sasa_det.layers`."""
from . import backbones, conv_layers, dense_heads, necks  # noqa: F401  (register on import)
