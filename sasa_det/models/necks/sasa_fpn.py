"""Attention FPN: mmdet's FPN with every 3x3 output convolution replaced by an attention layer."""
from typing import Optional, Tuple

from mmcv.cnn import ConvModule
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import nn

from ..conv_layers import attention_layer_cfg


def attention_conv_cfg(attention_cfg: Optional[dict], argument: str = 'attention_cfg'
                       ) -> Tuple[int, dict]:
    """Split ``attention_cfg`` into (kernel_size, conv_cfg for ConvModule).

    ConvModule passes the kernel size positionally, so it cannot also sit in ``conv_cfg``.
    """
    conv_cfg = attention_layer_cfg(attention_cfg, argument)
    kernel_size = conv_cfg.pop('kernel_size')
    return kernel_size, conv_cfg


@MODELS.register_module()
class SASAFPN(FPN):
    """FPN (Lin et al. 2017) whose spatial convolutions are attention layers (Ramachandran et al.
    2019).

    The 1x1 lateral convolutions stay as they are (they are pointwise, nothing to replace). The
    3x3 output convolution of each level and the stride-2 3x3 convolutions of the extra levels
    (P6, P7 in RetinaNet) become attention layers with ``out_channels`` (256) outputs; a
    stride-2 layer keeps its stride. Norm (``norm_cfg``, on the laterals and on every attention
    layer, as mmdet's FPN puts it on every convolution) and activation are FPN's. Everything
    else (top-down path, extra-level sources, forward) is mmdet's.

    Args:
        attention_cfg: the attention layer as a conv cfg, ``dict(type='SASA', kernel_size=7,
            heads=8)`` (the default; :class:`sasa_det.layers.LocalSelfAttention2d`) or
            ``dict(type='AA', ...)`` (:class:`sasa_det.layers.AAConv2d`).
        **kwargs: mmdet ``FPN`` arguments; ``conv_cfg`` applies to the lateral convolutions only.

    Shape:
        As FPN: inputs[i] (N, in_channels[i], H_i, W_i) -> num_outs maps (N, out_channels, ., .).
    """

    def __init__(self, *args, attention_cfg: dict = dict(type='SASA', kernel_size=7, heads=8),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kernel_size, conv_cfg = attention_conv_cfg(attention_cfg)
        # FPN builds its laterals and output convolutions from one conv_cfg, so the output
        # ConvModules are rebuilt around attention layers, keeping channels, stride, norm and
        # activation: FPN's forward only indexes self.fpn_convs, so nothing else changes.
        self.fpn_convs = nn.ModuleList(
            ConvModule(conv.in_channels, conv.out_channels, kernel_size, stride=conv.stride,
                       conv_cfg=conv_cfg, norm_cfg=conv.norm_cfg, act_cfg=conv.act_cfg,
                       inplace=conv.inplace) for conv in self.fpn_convs)
