"""sasa_det.analysis.complexity: exact attention counts, implementation independence, and
agreement with mmengine's FlopAnalyzer on convolutional models."""
import pytest
import torch
import torch.nn as nn

from sasa_det.analysis import complexity, complexity_breakdown
from sasa_det.layers import AAConv2d, LocalSelfAttention2d, SpatiallyAwareStem
from sasa_det.ops.local_attention import IMPLEMENTATIONS

# One SASA layer: C_in = 16, C_out = 32, heads = 4 (d = 8), k = 3 on a 6 x 6 map, batch 1,
# so P = 36 queries. Each hand count lists its terms in the order
# projections (P * C_in * n_proj * C_out) + q.k + q.r (row and column tables) + weighted sum
# [+ 2x2 average pool over the (C_out, 6, 6) attention output].
SASA_HAND_COUNTS = [
    # (positional_encoding, logits, stride, MACs)
    ('relative', 'content+relative', 1, 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 3 + 36 * 32 * 9),
    ('relative', 'content+relative', 2,
     36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 3 + 36 * 32 * 9 + 36 * 32),
    # absolute: q.(k + p), one dot product per window position, no tables.
    ('absolute', 'content+relative', 1, 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 9),
    ('absolute', 'content+relative', 2, 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 9 + 36 * 32),
    ('none', 'content', 1, 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 9),
    ('none', 'content', 2, 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 9 + 36 * 32),
    # logits='relative': no W_K (2 projections) and no q.k; q.p with absolute encodings.
    ('relative', 'relative', 1, 36 * 16 * 64 + 36 * 32 * 3 + 36 * 32 * 9),
    ('absolute', 'relative', 1, 36 * 16 * 64 + 36 * 32 * 9 + 36 * 32 * 9),
]


@pytest.mark.parametrize('encoding,logits,stride,macs', SASA_HAND_COUNTS)
def test_sasa_layer_count_equals_hand_count(encoding, logits, stride, macs):
    """The count of one SASA layer is the hand count of its arithmetic, FLOPs twice that."""
    layer = LocalSelfAttention2d(16, 32, kernel_size=3, stride=stride, heads=4,
                                 positional_encoding=encoding, logits=logits)
    params = 16 * 32 * (3 if logits != 'relative' else 2) + (2 * 3 * 4 if encoding == 'relative'
                                                             else 0)
    assert complexity(layer, (1, 16, 6, 6)) == dict(params=params, macs=macs, flops=2 * macs)


def test_sasa_count_on_odd_batched_input():
    """Batch 2, 5 x 7 map, k = 5, stride 2 (ceil-mode pool): P = 2 * 5 * 7 = 70 queries."""
    layer = LocalSelfAttention2d(16, 32, kernel_size=5, stride=2, heads=4)
    macs = 70 * 16 * 96 + 70 * 32 * 25 + 70 * 32 * 5 + 70 * 32 * 25 + 70 * 32
    assert complexity(layer, (2, 16, 5, 7))['macs'] == macs


# The opt-in options on the same layer (16 -> 32 channels, k = 3, 6 x 6 map, P = 36):
# (options, MACs, params). The paper's layer: 36 * 16 * 96 + 36 * 32 * (9 + 3 + 9) MACs and
# 3 * 16 * 32 + 2 * 3 * 4 parameters (4 heads, d = 8).
SASA_OPTION_COUNTS = [
    # A position bias is an addition to the logits: no multiply-adds, (heads, k, k) parameters.
    (dict(position_bias=True), 36 * 16 * 96 + 36 * 32 * 21, 1536 + 24 + 4 * 9),
    # Per-head tables: each query head still meets k row and k column embeddings of d/2.
    (dict(relative_tables='per_head'), 36 * 16 * 96 + 36 * 32 * 21, 1536 + 4 * 24),
    # head_dim 16 (2 heads): every term is per channel, so only the tables change (d/2 = 8).
    (dict(heads=None, head_dim=16), 36 * 16 * 96 + 36 * 32 * 21, 1536 + 2 * 3 * 8),
    # Stride 2: 'avgpool' attends from all 36 positions, then pools (1 per pooled element);
    # 'query' projects and attends from the Q = 9 queries at (2i, 2j) only, keys and values at
    # all 36 positions.
    (dict(stride=2), 36 * 16 * 96 + 36 * 32 * 21 + 36 * 32, 1536 + 24),
    (dict(stride=2, downsample='query'), 9 * 16 * 32 + 36 * 16 * 64 + 9 * 32 * 21, 1536 + 24),
    # Cosine similarity: normalise q (a square and a multiplication per channel, and the
    # temperature) and k (a square and a multiplication) at every position; 4 temperatures.
    (dict(similarity='cosine'), 36 * 16 * 96 + 36 * 32 * 21 + 36 * 32 * 5, 1536 + 24 + 4),
]


@pytest.mark.parametrize('options, macs, params', SASA_OPTION_COUNTS)
def test_sasa_option_count_equals_hand_count(options, macs, params):
    layer = LocalSelfAttention2d(16, 32, kernel_size=3, **dict(dict(heads=4), **options))
    assert complexity(layer, (1, 16, 6, 6)) == dict(params=params, macs=macs, flops=2 * macs)


def test_query_downsampling_count_on_odd_batched_input():
    """Batch 2, 5 x 7 map, k = 5, stride 2: Q = 2 * 3 * 4 = 24 queries, P = 70 positions."""
    layer = LocalSelfAttention2d(16, 32, kernel_size=5, stride=2, heads=4, downsample='query')
    macs = 24 * 16 * 32 + 70 * 16 * 64 + 24 * 32 * 25 + 24 * 32 * 5 + 24 * 32 * 25
    assert complexity(layer, (2, 16, 5, 7))['macs'] == macs


@pytest.mark.parametrize('padding_mode', ['mask', 'zeros'])
def test_sasa_count_does_not_depend_on_the_kernel(padding_mode):
    """Same count whichever implementation runs, and masked neighbours count (per window
    position): a 9 x 9 window on a 4 x 4 map counts 81 positions per query."""
    counts = {}
    for implementation in IMPLEMENTATIONS:
        layer = LocalSelfAttention2d(8, 16, kernel_size=9, heads=2, padding_mode=padding_mode,
                                     implementation=implementation)
        try:
            counts[implementation] = complexity(layer, (1, 8, 4, 4))['macs']
        except (RuntimeError, ValueError):  # a kernel not built here or not for CPU tensors
            assert implementation not in ('auto', 'sliced', 'reference')
    assert {'reference', 'sliced', 'auto'} <= set(counts)
    assert set(counts.values()) == {16 * 8 * 48 + 16 * 16 * 81 + 16 * 16 * 9 + 16 * 16 * 81}


def test_units_are_counted_once_inside_a_network():
    """In a network, each attention layer adds its own count: nothing inside it is counted twice
    or lost, and the breakdown attributes it to the layer."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                        nn.ReLU(), LocalSelfAttention2d(16, 32, kernel_size=3, stride=2, heads=4),
                        LocalSelfAttention2d(32, 32, kernel_size=3, heads=4))
    conv = 36 * 16 * 3 * 9
    bn = 16 * 36 * 2  # inference batch norm: scale and shift per element
    sasa1 = 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 3 + 36 * 32 * 9 + 36 * 32
    sasa2 = 9 * 32 * 96 + 9 * 32 * 9 + 9 * 32 * 3 + 9 * 32 * 9
    net.train()
    table = complexity_breakdown(net, (1, 3, 6, 6))
    assert net.training and net[1].training, 'training flags must be restored'
    assert table['']['macs'] == conv + bn + sasa1 + sasa2
    assert [table[str(i)]['macs'] for i in range(5)] == [conv, bn, 0, sasa1, sasa2]


def test_attention_stem_hand_count():
    """Spatially-aware stem, 3 -> 16 channels, 4 x 4 blocks, M = 2 value matrices, E = 5, on a
    6 x 10 image padded to 8 x 12 (P = 96 positions); BN sees the 6 x 10 real pixels."""
    stem = SpatiallyAwareStem(3, 16, block_size=4, heads=2, num_value_mixtures=2, embed_dim=5)
    macs = (96 * 3 * 32  # q, k projections (child nn.Linear)
            + 16 * 2 * 5 + 16 * 2 * 16 * 3  # mixture logits, mixed W_V per block position
            + 96 * 3 * 16  # values
            + 96 * 16 * 16 * 2  # q.k and weighted sum over the 16 pixels of each block
            + 16 * 60 * 2)  # inference batch norm
    params = 3 * 32 + 2 * 16 * 3 + 2 * 4 * 5 + 2 * 5 + 2 * 16
    assert complexity(stem, (1, 3, 6, 10)) == dict(params=params, macs=macs, flops=2 * macs)


@pytest.mark.parametrize('stride', [1, 2])
def test_attention_augmented_conv_hand_count(stride):
    """AAConv2d 8 -> 16 channels, 3x3 conv, d_k = 8, d_v = 4, 2 heads, on a 6 x 6 map; attention
    over L = 36 positions (9 after the stride-2 pool)."""
    layer = AAConv2d(8, 16, kernel_size=3, dk=8, dv=4, heads=2, stride=stride)
    out, length, side = (36, 36, 6) if stride == 1 else (9, 9, 3)
    macs = (out * 12 * 8 * 9  # the 3x3 conv's 12 output channels
            + length * 8 * 20 + length * 4 * 4  # qkv and output projection (1x1 convs)
            + length * length * (8 + 4)  # q.k and weighted sum
            + length * (side + side) * 8)  # relative logits S_W + S_H
    if stride == 2:
        macs += 8 * 36  # average pool of the input
    assert complexity(layer, (1, 8, 6, 6))['macs'] == macs


class _LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gamma = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.conv(x) * self.gamma.view(1, 4, 1, 1)


def test_uncounted_parameter_is_refused():
    """A parameter used by a function without a rule (here through a view) is not silently
    dropped: strict mode raises naming it, strict=False warns."""
    with pytest.raises(ValueError, match='gamma'):
        complexity(_LayerScale(), (3, 8, 8))
    with pytest.warns(UserWarning, match='gamma'):
        assert complexity(_LayerScale(), (3, 8, 8), strict=False)['macs'] == 36 * 4 * 27


def _mmdet_resnet_classifier(depth=50):
    from mmdet.models.backbones import ResNet
    return nn.Sequential(ResNet(depth, out_indices=(3,)), _Last(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2048 if depth >= 50 else 512, 1000))


class _Last(nn.Module):
    def forward(self, outs):
        return outs[-1]


def test_resnet50_matches_mmengine_flop_analyzer():
    """mmdet ResNet-50 + 1000-class fc at 224 x 224: 25.56M parameters and the multiply-adds
    mmengine's FlopAnalyzer reports (it names them "flops"), within 1%."""
    from mmengine import analysis
    model = _mmdet_resnet_classifier(50)
    model.eval()
    ours = complexity(model, (3, 224, 224))
    theirs = analysis.FlopAnalyzer(model, torch.randn(1, 3, 224, 224))
    theirs.unsupported_ops_warnings(False)
    theirs.uncalled_modules_warnings(False)
    assert ours['params'] == analysis.parameter_count(model)[''] == 25_557_032
    assert abs(ours['macs'] - theirs.total()) <= 0.01 * theirs.total()
    assert abs(ours['flops'] / 1e9 - 8.22) < 0.01


def test_retinanet_neck_and_head_match_mmengine_flop_analyzer():
    """An mmdet RetinaNet (ResNet-18, FPN with nearest upsampling, shared head convs) counts as
    FlopAnalyzer counts it, within 1%; the breakdown gives every part its share, the head
    included although the detector calls ``bbox_head.forward`` directly."""
    from mmengine import analysis
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(dict(
        type='RetinaNet',
        backbone=dict(type='ResNet', depth=18, out_indices=(1, 2, 3)),
        neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=64, start_level=0,
                  add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=64, feat_channels=64,
                       stacked_convs=2,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                             strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                       loss_bbox=dict(type='L1Loss'))))
    model.eval()
    ours = complexity(model, (3, 96, 128))
    parts = complexity_breakdown(model, (3, 96, 128))
    assert all(parts[part]['macs'] > 0 for part in ('backbone', 'neck', 'bbox_head'))
    assert sum(parts[part]['macs'] for part in ('backbone', 'neck', 'bbox_head')) == ours['macs']
    theirs = analysis.FlopAnalyzer(model, torch.randn(1, 3, 96, 128))
    theirs.unsupported_ops_warnings(False)
    theirs.uncalled_modules_warnings(False)
    assert abs(ours['macs'] - theirs.total()) <= 0.01 * theirs.total()
    assert ours['params'] == analysis.parameter_count(model)['']


class _DirectForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = LocalSelfAttention2d(16, 32, kernel_size=3, heads=4)

    def forward(self, x):
        return self.attn.forward(x)  # as mmdet detectors call bbox_head.forward


def test_rule_applies_to_direct_forward_calls():
    """A layer run through ``layer.forward(x)`` (no module hooks fire) still gets its rule, not
    the count of whatever functions its kernel happens to call."""
    macs = 36 * 16 * 96 + 36 * 32 * 9 + 36 * 32 * 3 + 36 * 32 * 9
    assert complexity(_DirectForward(), (1, 16, 6, 6))['macs'] == macs


def test_sasa_resnet50_reproduces_the_papers_imagenet_row():
    """timm sasa_resnet50 (conv stem, SASA k=7 in every bottleneck) at 224 x 224 with the
    1000-class classifier: the paper's 18.0M parameters (within 1%) and 7.0 GFLOPs (within 3%;
    we measure 6.85), i.e. about 12-17% fewer FLOPs than the 8.22 GFLOPs ResNet-50."""
    import timm
    result = complexity(timm.create_model('sasa_resnet50', num_classes=1000), (3, 224, 224))
    assert abs(result['params'] / 18.0e6 - 1) < 0.01, result
    assert abs(result['flops'] / 7.0e9 - 1) < 0.03, result
