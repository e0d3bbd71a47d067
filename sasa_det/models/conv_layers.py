"""The attention layers as mmcv conv types, and the one way an attention layer is configured.

mmcv's ``build_conv_layer`` (and so every mmdet ``conv_cfg``) looks conv types up in mmengine's
root MODELS registry, where this module registers

- ``'SASA'``: :class:`~sasa_det.layers.LocalSelfAttention2d` (local self-attention);
- ``'AA'``: :class:`~sasa_det.layers.AAConv2d` (attention augmented convolution).

Backbone, FPN, head and the timm models all take an ``attention_cfg`` such as
``dict(type='SASA', kernel_size=7, heads=8)`` or ``dict(type='AA', dk=0.2, dv=0.1, heads=8)``;
:func:`attention_layer_cfg` fills in the type's defaults and
:func:`build_attention_layer` builds it where a convolution would be::

    build_conv_layer(dict(type='SASA', heads=8), 64, 64, kernel_size=7)
"""
import warnings
from typing import Optional

import torch.nn as nn
from mmcv.cnn import build_conv_layer
from mmengine.registry import MODELS

from ..layers import AAConv2d, LocalSelfAttention2d

MODELS.register_module('SASA', module=LocalSelfAttention2d, force=True)
MODELS.register_module('AA', module=AAConv2d, force=True)

# The kernel size each attention type takes unless the config gives one (ConvModule needs it
# stated): the paper's spatial extent 7 for SASA, the 3x3 convolution that AA augments. Every
# other argument defaults in the layer itself (8 heads; AA's dk=0.2, dv=0.1 of AA-ResNet).
ATTENTION_DEFAULTS = {'SASA': dict(kernel_size=7), 'AA': dict(kernel_size=3)}


def attention_layer_cfg(attention_cfg: Optional[dict], argument: str = 'attention_cfg') -> dict:
    """``attention_cfg`` over the defaults of its type: a conv cfg for ``build_conv_layer``.

    A cfg without ``type`` (the earlier schema, SASA layer arguments only) is read as
    ``type='SASA'`` with a warning that says what to write.

    Args:
        attention_cfg: dict with ``type`` ('SASA', 'AA' or another registered conv type with
            the same interface) and the layer's arguments.
        argument: the argument's name in the caller, for error messages.
    """
    if not isinstance(attention_cfg, dict):
        raise ValueError(f"{argument} must be a dict such as dict(type='SASA', kernel_size=7, "
                         f"heads=8), got {attention_cfg!r}")
    cfg = dict(attention_cfg)
    if 'type' not in cfg:
        warnings.warn(f"{argument} without a type is read as type='SASA'; write "
                      f"{argument}=dict(type='SASA', " + ', '.join(
                          f'{key}={value!r}' for key, value in cfg.items()) + ')',
                      FutureWarning, stacklevel=3)
        cfg['type'] = 'SASA'
    return {**ATTENTION_DEFAULTS.get(cfg['type'], {}), **cfg}


def build_attention_layer(in_channels: int, out_channels: int, kernel_size: int = 3,
                          stride: int = 1, padding: int = 0, dilation: int = 1,
                          groups: int = 1, bias: bool = False, *,
                          attention_cfg: dict) -> nn.Module:
    """The attention layer of ``attention_cfg`` in the place of a k x k convolution.

    Takes a convolution's arguments, so that an mmdet block builds it through
    ``build_conv_layer(dict(type='AttentionLayer', attention_cfg=...), C_in, C_out, 3, ...)``
    where it would build the convolution. Channels, stride, dilation, groups and bias carry
    over; the convolution's kernel size and padding do not: the window is ``attention_cfg``'s
    kernel_size, and attention keeps the spatial size without padding.
    """
    return build_conv_layer(attention_cfg, in_channels, out_channels, stride=stride,
                            dilation=dilation, groups=groups, bias=bias)


MODELS.register_module('AttentionLayer', module=build_attention_layer, force=True)
