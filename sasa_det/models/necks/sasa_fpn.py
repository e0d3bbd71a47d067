"""Attention FPN: mmdet's FPN with every 3x3 output convolution replaced by a SASA layer."""
from typing import Optional

from mmcv.cnn import ConvModule
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import nn


def attention_conv_cfg(attention_cfg: Optional[dict], argument: str) -> tuple:
    """Split ``attention_cfg`` into (kernel_size, conv_cfg for mmcv's ``build_conv_layer``).

    ConvModule passes the kernel size positionally, so it cannot also sit in ``conv_cfg``.
    """
    if not isinstance(attention_cfg, dict):
        raise ValueError(f'{argument} must be a dict of SASA layer arguments, '
                         f'got {attention_cfg!r}')
    conv_cfg = dict(type='SASA', **attention_cfg)
    kernel_size = conv_cfg.pop('kernel_size', 7)
    return kernel_size, conv_cfg


@MODELS.register_module()
class SASAFPN(FPN):
    """FPN (Lin et al. 2017) whose spatial convolutions are SASA layers (Ramachandran et al. 2019).

    The 1x1 lateral convolutions stay as they are (they are pointwise, nothing to replace). The
    3x3 output convolution of each level and the stride-2 3x3 convolutions of the extra levels
    (P6, P7 in RetinaNet) become SASA layers with ``out_channels`` (256) outputs; a stride-2 layer
    runs attention at stride 1 followed by a 2x2 average pool. Norm and activation are kept as
    configured for FPN. Everything else (top-down path, extra-level sources, forward) is mmdet's.

    Args:
        attention_cfg: arguments of :class:`sasa_det.layers.LocalSelfAttention2d` (registered as
            conv type 'SASA'), e.g. ``dict(kernel_size=7, heads=8)``; ``type`` may name another
            registered conv layer with the same interface.
        **kwargs: mmdet ``FPN`` arguments; ``conv_cfg`` applies to the lateral convolutions only.

    Shape:
        As FPN: inputs[i] (N, in_channels[i], H_i, W_i) -> num_outs maps (N, out_channels, ., .).
    """

    def __init__(self, *args, attention_cfg: dict = dict(kernel_size=7, heads=8),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kernel_size, conv_cfg = attention_conv_cfg(attention_cfg, 'attention_cfg')
        # Rebuild each output ConvModule around a SASA layer, keeping its channels, stride, norm
        # and activation: FPN's forward only indexes self.fpn_convs, so nothing else changes.
        self.fpn_convs = nn.ModuleList(
            ConvModule(conv.in_channels, conv.out_channels, kernel_size, stride=conv.stride,
                       conv_cfg=conv_cfg, norm_cfg=conv.norm_cfg, act_cfg=conv.act_cfg,
                       inplace=conv.inplace) for conv in self.fpn_convs)
