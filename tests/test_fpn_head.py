"""SASAFPN and SASARetinaHead: structure, shapes, sharing across levels, initialisation."""
import math

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from torch import nn

import sasa_det  # noqa: F401  (registers SASAFPN, SASARetinaHead, conv type 'SASA')
from sasa_det.layers import AAConv2d, LocalSelfAttention2d

C = 32        # FPN / head width (256 in the configs; small here for CPU time)
HEADS = 4
K = 7
ATTENTION = dict(type='SASA', kernel_size=K, heads=HEADS)


def sasa_params(c_in: int, c_out: int) -> int:
    """Parameters of a SASA layer with output bias: W_Q, W_K, W_V and the row/column tables."""
    return 3 * c_in * c_out + 2 * K * (c_out // HEADS // 2) + c_out


def fpn_cfg(type_: str, **kwargs) -> dict:
    cfg = dict(type=type_, in_channels=[8, 16, 32], out_channels=C, num_outs=5, start_level=0,
               add_extra_convs='on_output', **kwargs)
    if type_ == 'SASAFPN':
        cfg['attention_cfg'] = ATTENTION
    return cfg


def backbone_features(batch: int = 2, size: int = 36):
    """C3..C5-like maps at strides 8, 16, 32 of a size x size image (odd sizes included)."""
    return [torch.randn(batch, c, math.ceil(size / s), math.ceil(size / s))
            for c, s in ((8, 8), (16, 16), (32, 32))]


def head_cfg(**kwargs) -> dict:
    cfg = dict(type='SASARetinaHead', num_classes=3, in_channels=C, feat_channels=C,
               stacked_convs=2, attention_cfg=ATTENTION,
               anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                     scales_per_octave=1, ratios=[1.0],
                                     strides=[8, 16, 32, 64, 128]))
    cfg.update(kwargs)
    return cfg


# ---------------------------------------------------------------------------------- SASAFPN

def test_fpn_output_convs_are_sasa_layers_and_laterals_stay_pointwise():
    """Every 3x3 output conv and both strided extra convs are SASA layers; laterals are 1x1."""
    fpn = MODELS.build(fpn_cfg('SASAFPN'))
    assert len(fpn.fpn_convs) == 5
    for i, module in enumerate(fpn.fpn_convs):
        assert isinstance(module.conv, LocalSelfAttention2d)
        assert module.conv.out_channels == C and module.conv.kernel_size == K
        assert module.conv.stride == (2 if i >= 3 else 1)
    for module in fpn.lateral_convs:
        assert isinstance(module.conv, nn.Conv2d) and module.conv.kernel_size == (1, 1)


@pytest.mark.parametrize('size', [36, 64, 21])
def test_fpn_output_shapes_match_mmdet_fpn(size):
    """Same pyramid shapes as the convolutional FPN, odd sizes and maps smaller than k included."""
    features = backbone_features(size=size)
    conv_outs = MODELS.build(fpn_cfg('FPN'))(features)
    sasa_outs = MODELS.build(fpn_cfg('SASAFPN'))(features)
    assert [o.shape for o in sasa_outs] == [o.shape for o in conv_outs]
    assert all(torch.isfinite(o).all() for o in sasa_outs)


def test_fpn_parameter_count_replaces_9_by_3_weights_per_spatial_conv():
    """5 spatial convs of C x C: each 9 C^2 + C weights become a SASA layer's 3 C^2 + tables + C"""
    conv = sum(p.numel() for p in MODELS.build(fpn_cfg('FPN')).parameters())
    sasa = sum(p.numel() for p in MODELS.build(fpn_cfg('SASAFPN')).parameters())
    assert conv - sasa == 5 * ((9 * C * C + C) - sasa_params(C, C))


def test_fpn_gradients_reach_every_parameter():
    # 72 px: P7's input is 2 x 2. On a 1 x 1 map the softmax has a single key, and the
    # positional tables rightly get no gradient.
    fpn = MODELS.build(fpn_cfg('SASAFPN'))
    sum(o.square().mean() for o in fpn(backbone_features(size=72))).backward()
    missing = [n for n, p in fpn.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_fpn_extra_levels_on_input_attend_over_backbone_channels():
    """P6 from C5 ('on_input'): a SASA layer from C5's channels, stride 2."""
    fpn = MODELS.build(dict(fpn_cfg('SASAFPN'), add_extra_convs='on_input'))
    p6 = fpn.fpn_convs[3].conv
    assert (p6.in_channels, p6.out_channels, p6.stride) == (32, C, 2)


def test_fpn_rejects_non_dict_attention_cfg():
    with pytest.raises(ValueError, match='attention_cfg'):
        MODELS.build(dict(fpn_cfg('SASAFPN'), attention_cfg=7))


def test_fpn_layer_arguments_are_validated_by_the_layer():
    with pytest.raises(ValueError, match='kernel_size'):
        MODELS.build(dict(fpn_cfg('SASAFPN'),
                          attention_cfg=dict(type='SASA', kernel_size=4, heads=HEADS)))


def test_fpn_attention_type_aa_builds_attention_augmented_convolutions():
    fpn = MODELS.build(dict(fpn_cfg('SASAFPN'), attention_cfg=dict(type='AA', heads=4)))
    assert all(isinstance(m.conv, AAConv2d) and m.conv.kernel_size == 3 for m in fpn.fpn_convs)
    assert [m.conv.stride for m in fpn.fpn_convs] == [1, 1, 1, 2, 2]
    outs = fpn(backbone_features(size=40))
    assert [o.shape[-1] for o in outs] == [5, 3, 2, 1, 1]


@pytest.mark.parametrize('component', ['neck', 'head'])
def test_attention_cfg_without_type_is_read_as_sasa_with_a_warning(component):
    """The earlier schema (SASA arguments only) still builds, and the warning says what to
    write instead."""
    old = dict(kernel_size=3, heads=HEADS)
    cfg = (dict(fpn_cfg('SASAFPN'), attention_cfg=old) if component == 'neck'
           else head_cfg(attention_cfg=old))
    with pytest.warns(FutureWarning, match=r"write attention_cfg=dict\(type='SASA', "
                                           r"kernel_size=3, heads=4\)"):
        model = MODELS.build(cfg)
    layers = [m for m in model.modules() if isinstance(m, LocalSelfAttention2d)]
    assert layers and all(m.kernel_size == 3 for m in layers)


def test_fpn_norm_cfg_puts_a_norm_after_every_attention_layer():
    fpn = MODELS.build(dict(fpn_cfg('SASAFPN'), norm_cfg=dict(type='GN', num_groups=4)))
    for module in fpn.fpn_convs:
        assert isinstance(module.norm, nn.GroupNorm) and module.conv.bias is None
    sum(o.sum() for o in fpn(backbone_features(size=36))).backward()


@pytest.mark.parametrize('norm_cfg', [dict(type='GN', num_groups=4), dict(type='BN')])
def test_conv_and_attention_variants_put_norm_cfg_in_the_same_places(norm_cfg):
    """FPN/SASAFPN and RetinaHead/SASARetinaHead take one norm_cfg alike: the same norm layers
    under the same names, so a conv/attention pair stays comparable."""
    def norms(model):
        return {name: type(m).__name__ for name, m in model.named_modules()
                if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))}

    conv_fpn = MODELS.build(dict(fpn_cfg('FPN'), norm_cfg=norm_cfg))
    sasa_fpn = MODELS.build(dict(fpn_cfg('SASAFPN'), norm_cfg=norm_cfg))
    assert len(norms(conv_fpn)) == 3 + 5 and norms(conv_fpn) == norms(sasa_fpn)
    conv_head_cfg = head_cfg(type='RetinaHead', norm_cfg=norm_cfg)
    del conv_head_cfg['attention_cfg']
    conv_head = MODELS.build(conv_head_cfg)
    sasa_head = MODELS.build(head_cfg(norm_cfg=norm_cfg, head_mixing='predictor'))
    assert len(norms(conv_head)) == 2 * 2 and norms(conv_head) == norms(sasa_head)


# ---------------------------------------------------------------------------- SASARetinaHead

def pyramid(batch: int = 1, size: int = 64):
    return [torch.randn(batch, C, math.ceil(size / s), math.ceil(size / s))
            for s in (8, 16, 32, 64, 128)]


def test_head_subnets_are_sasa_layers_with_pointwise_predictors():
    head = MODELS.build(head_cfg(head_mixing='predictor'))
    for subnet in (head.cls_convs, head.reg_convs):
        assert len(subnet) == 2
        assert all(isinstance(m.conv, LocalSelfAttention2d) and m.conv.kernel_size == K
                   for m in subnet)
    assert head.retina_cls.kernel_size == (1, 1) and head.retina_reg.kernel_size == (1, 1)


def test_head_extra_mixing_keeps_3x3_predictors_after_a_pointwise_layer():
    head = MODELS.build(head_cfg())  # the default
    assert head.head_mixing == 'extra'
    for subnet in (head.cls_convs, head.reg_convs):
        assert isinstance(subnet[-1].conv, nn.Conv2d) and subnet[-1].conv.kernel_size == (1, 1)
        assert all(isinstance(m.conv, LocalSelfAttention2d) for m in subnet[:-1])
    assert head.retina_cls.kernel_size == (3, 3)


@pytest.mark.parametrize('head_mixing', ['predictor', 'extra'])
def test_head_parameter_count_is_one_set_for_all_levels(head_mixing):
    """Weights shared across levels: the count is that of one subnet pair plus the predictors."""
    head = MODELS.build(head_cfg(head_mixing=head_mixing))
    subnet = 2 * sasa_params(C, C)
    if head_mixing == 'predictor':  # 1x1 predictors, 1 anchor: 3 class logits, 4 box deltas
        predictors = (C * 3 + 3) + (C * 4 + 4)
    else:  # a 1x1 C -> C mixing layer per subnet, then RetinaNet's 3x3 predictors
        subnet += C * C + C
        predictors = (9 * C * 3 + 3) + (9 * C * 4 + 4)
    assert sum(p.numel() for p in head.parameters()) == 2 * subnet + predictors


def test_head_same_feature_map_gives_same_output_at_every_level():
    """Sharing across levels, checked by behaviour: one map fed as P3 and as P5 scores alike."""
    head = MODELS.build(head_cfg()).eval()
    x = torch.randn(1, C, 8, 8)
    cls_scores, bbox_preds = head([x, torch.randn(1, C, 4, 4), x])
    torch.testing.assert_close(cls_scores[0], cls_scores[2])
    torch.testing.assert_close(bbox_preds[0], bbox_preds[2])


@pytest.mark.parametrize('head_mixing', ['predictor', 'extra'])
def test_head_output_shapes(head_mixing):
    head = MODELS.build(head_cfg(head_mixing=head_mixing))
    feats = pyramid(size=72)
    cls_scores, bbox_preds = head(feats)
    for x, cls, box in zip(feats, cls_scores, bbox_preds):
        assert cls.shape == (1, 3, *x.shape[2:]) and box.shape == (1, 4, *x.shape[2:])


def test_head_init_draws_value_weights_from_n0_001_and_keeps_the_class_prior():
    """W_V ~ N(0, 0.01) after init_weights; W_Q keeps the layer's fan-in init; cls bias prior."""
    head = MODELS.build(head_cfg(feat_channels=256, in_channels=256,
                                 attention_cfg=dict(type='SASA', kernel_size=K, heads=8)))
    head.init_weights()
    for subnet in (head.cls_convs, head.reg_convs):
        mixing = subnet[-1].conv  # the 1x1 layer: a Conv2d, RetinaNet's N(0, 0.01) like the rest
        assert isinstance(mixing, nn.Conv2d) and abs(mixing.weight.std().item() - 0.01) < 0.0005
        for module in subnet[:-1]:
            w_v = module.conv.value_weight
            assert w_v.shape == (256, 256)
            assert abs(w_v.std().item() - 0.01) < 0.0005 and abs(w_v.mean().item()) < 0.0005
            w_q = module.conv.qkv.weight[:256]
            assert abs(w_q.std().item() - 256 ** -0.5) < 0.003  # untouched: not 0.01
    prior_bias = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(head.retina_cls.bias, torch.full_like(head.retina_cls.bias,
                                                                      prior_bias))


@pytest.mark.parametrize('norm_cfg', [dict(type='GN', num_groups=8), dict(type='BN')])
def test_head_with_a_norm_keeps_the_fan_in_value_init(norm_cfg):
    """With a norm after each attention layer, W_V is not shrunk to N(0, 0.01): it keeps the
    layer's fan-in N(0, 1/C_in), and the norm follows every attention and mixing layer."""
    head = MODELS.build(head_cfg(feat_channels=256, in_channels=256, norm_cfg=norm_cfg,
                                 attention_cfg=dict(type='SASA', kernel_size=K, heads=8)))
    head.init_weights()
    for subnet in (head.cls_convs, head.reg_convs):
        assert all(module.norm is not None for module in subnet)
        for module in subnet[:-1]:
            assert abs(module.conv.value_weight.std().item() - 256 ** -0.5) < 0.003


def test_head_loss_is_finite_and_trains_every_parameter():
    head = MODELS.build(head_cfg(train_cfg=dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                      ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False)))
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[4.0, 6.0, 40.0, 30.0]]),
                                       labels=torch.tensor([1]))
    losses = head.loss(pyramid(size=64), [sample])
    total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize('bad, match', [(dict(head_mixing='before'), 'head_mixing'),
                                        (dict(conv_cfg=dict(type='Conv2d')), 'conv_cfg'),
                                        (dict(attention_cfg=None), 'attention_cfg')])
def test_head_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(head_cfg(**bad))
