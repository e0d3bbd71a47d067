"""Attention RetinaNet head: attention layers in the class and box subnets, pointwise head
mixing."""
import torch
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads import RetinaHead
from mmdet.registry import MODELS
from torch import nn

from ..necks.sasa_fpn import attention_conv_cfg

HEAD_MIXING = ('predictor', 'extra')


@MODELS.register_module()
class SASARetinaHead(RetinaHead):
    """RetinaNet head (Lin et al. 2017) whose subnet 3x3 convolutions are attention layers.

    Each of the class and box subnets is ``stacked_convs`` attention layers (``feat_channels`` =
    256 outputs, ReLU, optional norm) followed by a pointwise convolution, which mixes the
    attention heads: each SASA output channel sees the values of one head only. As in RetinaNet,
    the same modules run on every pyramid level (weights shared across levels).

    The paper says a pointwise convolution ends each subnet but not whether it replaces the 3x3
    class/box predictors or comes in front of them. ``head_mixing`` chooses:

    - ``'extra'`` (default): a 1x1 ConvModule (feat_channels -> feat_channels, norm and ReLU as
      the subnet) ends each subnet and RetinaNet's 3x3 predictors follow it.
    - ``'predictor'``: the class and box predictors are 1x1 convolutions; they are the pointwise
      convolution, and no spatial convolution is left in the head.

    The default is the reading whose counts come closer to the paper's COCO headline (34% fewer
    parameters, 39% fewer FLOPs than the convolutional RetinaNet): with an attention R-50, FPN
    and head at 640 x 640, 'extra' gives 37% / 34% fewer, 'predictor' 42% / 49% fewer.

    Initialisation: without a norm (``norm_cfg=None``, RetinaNet's head) W_V of every SASA layer
    is drawn from N(0, 0.01), as RetinaNet draws its subnet convolutions; with a norm after each
    layer, W_V keeps the layer's fan-in init, N(0, 1/C_in): the norm undoes W_V's scale, so a
    small W_V would only make its relative updates large (an Adam step moves each weight by about
    lr, 30% of a 0.01 weight at lr 3e-3). W_Q, W_K and the relative tables always keep the
    layer's own initialisation. The predictors keep RetinaNet's
    (N(0, 0.01), class bias from the prior 0.01).

    Args:
        attention_cfg: the attention layer as a conv cfg, ``dict(type='SASA', kernel_size=7,
            heads=8)`` (the default; :class:`sasa_det.layers.LocalSelfAttention2d`) or
            ``dict(type='AA', ...)`` (:class:`sasa_det.layers.AAConv2d`).
        head_mixing: 'predictor' or 'extra', see above.
        **kwargs: mmdet ``RetinaHead`` arguments except ``conv_cfg`` (set from attention_cfg);
            ``norm_cfg`` puts a norm after every attention layer and the mixing layer.

    Shape:
        Per level, x (N, in_channels, H, W) -> cls_score (N, A * num_classes, H, W),
        bbox_pred (N, A * 4, H, W), with A anchors per position.
    """

    def __init__(self, num_classes: int, in_channels: int,
                 attention_cfg: dict = dict(type='SASA', kernel_size=7, heads=8),
                 head_mixing: str = 'extra', **kwargs) -> None:
        if head_mixing not in HEAD_MIXING:
            raise ValueError(f'head_mixing must be one of {HEAD_MIXING}, got {head_mixing!r}')
        if kwargs.get('conv_cfg') is not None:
            raise ValueError(f"conv_cfg is set from attention_cfg in SASARetinaHead, "
                             f"got conv_cfg={kwargs['conv_cfg']!r}")
        kwargs.pop('conv_cfg', None)
        self.attention_kernel_size, conv_cfg = attention_conv_cfg(attention_cfg)
        self.head_mixing = head_mixing
        super().__init__(num_classes, in_channels, conv_cfg=conv_cfg, **kwargs)

    def _init_layers(self) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.cls_convs = self._subnet()
        self.reg_convs = self._subnet()
        in_channels = self.cls_convs[-1].out_channels if self.cls_convs else self.in_channels
        predictor_kernel = 1 if self.head_mixing == 'predictor' else 3
        self.retina_cls = nn.Conv2d(in_channels, self.num_base_priors * self.cls_out_channels,
                                    predictor_kernel, padding=predictor_kernel // 2)
        self.retina_reg = nn.Conv2d(in_channels,
                                    self.num_base_priors * self.bbox_coder.encode_size,
                                    predictor_kernel, padding=predictor_kernel // 2)

    def _subnet(self) -> nn.ModuleList:
        """``stacked_convs`` attention layers, then the 1x1 mixing layer if head_mixing='extra'."""
        layers = nn.ModuleList()
        in_channels = self.in_channels
        for _ in range(self.stacked_convs):
            layers.append(ConvModule(in_channels, self.feat_channels, self.attention_kernel_size,
                                     conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg))
            in_channels = self.feat_channels
        if self.head_mixing == 'extra':
            layers.append(ConvModule(in_channels, self.feat_channels, 1, norm_cfg=self.norm_cfg))
        return layers

    def init_weights(self) -> None:
        first_call = not self._is_init  # mmengine initialises a module once
        super().init_weights()  # RetinaHead's init_cfg (Normal on Conv2d, class prior)
        if not first_call or self.norm_cfg is not None:
            return  # with a norm after each layer, W_V keeps the layer's fan-in init
        with torch.no_grad():
            for subnet in (self.cls_convs, self.reg_convs):
                for layer in subnet:
                    if hasattr(layer.conv, 'value_weight'):
                        layer.conv.value_weight.normal_(0.0, 0.01)
