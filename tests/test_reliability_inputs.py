"""Inputs: bad config values fail at build time naming the config key, the value and what is
allowed; inputs of any size run through the layer, backbone and detector."""
import glob
import math
import os.path as osp
import re

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope
from torch import nn

from sasa_det.layers import LocalSelfAttention2d, SpatiallyAwareStem
from sasa_det.utils import ConfigValueError, explain_config_errors


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest


# (H, W): 1 pixel, smaller than the 7x7 window, odd, extreme aspect ratios both ways.
ODD_SIZES = [(1, 1), (2, 3), (5, 9), (32, 300), (300, 7)]


@pytest.mark.parametrize('size', ODD_SIZES)
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('implementation', ['auto', 'reference'])
def test_sasa_layer_any_size(size, stride, implementation):
    """Batch 1, k=7 > H or W: output (1, C, ceil(H/s), ceil(W/s)), finite, with finite grads."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(8, 8, kernel_size=7, heads=2, stride=stride,
                                 implementation=implementation)
    x = torch.randn(1, 8, *size, requires_grad=True)
    y = layer(x)
    assert y.shape == (1, 8, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize('size', ODD_SIZES)
def test_attention_stem_any_size(size):
    """The attention stem in train and eval mode, batch 1 (BN in train mode needs > 1 value
    per channel, which a 1x1 image with batch 1 does not have: mmdet's ResNet has the same)."""
    torch.manual_seed(0)
    stem = SpatiallyAwareStem(3, 8, block_size=4, heads=2)
    x = torch.randn(1, 3, *size)
    expected = (1, 8, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    if size[0] * size[1] > 1:
        y = stem.train()(x)
        assert y.shape == expected and torch.isfinite(y).all()
    with torch.no_grad():
        y = stem.eval()(x)
    assert y.shape == expected and torch.isfinite(y).all()

# --- config errors name the key ----------------------------------------------------------

TOY_MODELS = Registry('reliability toy models')


@TOY_MODELS.register_module()
class ToyNet(nn.Module):
    """Builds its parts from sub-configs, as a detector does (which also adds its train_cfg
    to the head's config, so the head is built from a dict that is not the user's)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = TOY_MODELS.build(backbone)
        self.head = TOY_MODELS.build(dict(head, train_cfg=dict(lr=1)))


@TOY_MODELS.register_module()
class ToyAttentionStage(nn.Module):
    """Builds a SASA layer from an ``attention_cfg``, as SASAResNet does."""

    def __init__(self, channels=16, attention_cfg=None, train_cfg=None):
        super().__init__()
        self.layer = LocalSelfAttention2d(channels, channels, **(attention_cfg or {}))


def _toy_cfg(**attention_cfg):
    return Config(dict(model=dict(
        type='ToyNet',
        backbone=dict(type='ToyAttentionStage', channels=16,
                      attention_cfg=dict(dict(kernel_size=3, heads=4), **attention_cfg)),
        head=dict(type='ToyAttentionStage', channels=16, attention_cfg=dict(kernel_size=3)))))


@pytest.mark.parametrize('change, key, reason', [
    (dict(kernel_size=4), 'model.backbone.attention_cfg.kernel_size = 4',
     'kernel_size must be a positive odd integer, got 4'),
    (dict(heads=3), 'model.backbone.attention_cfg.heads = 3',
     r'out_channels \(16\) must be divisible by heads \(3\)'),
    (dict(positional_encoding='learned'),
     "model.backbone.attention_cfg.positional_encoding = 'learned'",
     r"positional_encoding must be one of \('relative', 'absolute', 'none'\), got 'learned'"),
])
def test_bad_value_is_reported_with_its_config_key(change, key, reason):
    """The ValueError raised deep inside the build starts with the full config key."""
    cfg = _toy_cfg(**change)
    with pytest.raises(ConfigValueError, match=rf'^{key.replace(".", r"[.]")}: {reason}') as info:
        with explain_config_errors(cfg):
            TOY_MODELS.build(cfg.model)
    assert info.value.key == key.split(' = ')[0]


def test_same_key_and_value_elsewhere_is_not_blamed():
    """heads=3 in the backbone (12 channels: fine) and in the head (16 channels: error): the
    component being built when the error came decides which key is named."""
    cfg = _toy_cfg(heads=3)
    cfg.model.backbone.channels = 12
    cfg.model.head.attention_cfg.heads = 3
    with pytest.raises(ConfigValueError, match=r'^model[.]head[.]attention_cfg[.]heads = 3: '):
        with explain_config_errors(cfg):
            TOY_MODELS.build(cfg.model)


def test_unlocatable_error_is_left_unchanged():
    with pytest.raises(ValueError, match='^something else$') as info:
        with explain_config_errors(_toy_cfg()):
            raise ValueError('something else')
    assert not isinstance(info.value, ConfigValueError)


# --- every config's detector, any input size -------------------------------------------

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')) + glob.glob(osp.join(CONFIG_DIR, 'demo',
                                                                            '*.py')))


def tiny_detector_cfg(path):
    """The config's model at width 16 (backbone base and stem 16, FPN and head 16), depth 26,
    2 head convs and 4 classes, with its own layer types, attention settings, heads and norms
    (GroupNorm with 4 groups, as 16 channels allow): the structure under test."""
    cfg = Config.fromfile(path)
    model = cfg.model
    model.backbone.update(base_channels=16, stem_channels=16, init_cfg=None)
    if model.backbone.type == 'SASAResNet':
        model.backbone.depth = 26
    model.neck.update(in_channels=[64, 128, 256, 512], out_channels=16)
    model.bbox_head.update(in_channels=16, feat_channels=16, stacked_convs=2, num_classes=4)
    for part in (model.neck, model.bbox_head):
        if (part.get('norm_cfg') or {}).get('type') == 'GN':
            part.norm_cfg.num_groups = 4
    return cfg


def _distinct_models():
    """One config per distinct shrunk model (schedules, data, depths and widths aside)."""
    seen, params = set(), []
    for path in CONFIGS:
        text = repr(tiny_detector_cfg(path).model.to_dict())
        if text not in seen:
            seen.add(text)
            params.append(pytest.param(path, id=osp.relpath(path, CONFIG_DIR)))
    return params


# (H, W) of single images: smaller than the 7x7 window even at stride 4, odd, and extreme aspect
# ratios both ways; the data preprocessor pads them to multiples of 32.
DETECTOR_SIZES = [(7, 9), (33, 47), (9, 130), (130, 9)]


def _train_step_grads_finite(model, data):
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k
                for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total), losses
    model.zero_grad()
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize('path', _distinct_models())
def test_every_config_runs_any_input_size(path):
    """Each size through the detector: training losses and gradients finite, and finite
    predictions in eval mode, batch 1.

    One exception, BatchNorm's (mmdet's ResNet has it too): in training mode a batch norm needs
    more than one value per channel, and an image padded to 32 x 32 leaves 1 x 1 maps at
    stride 32, so such an image trains with batch 2, and with batch 1 it fails with BN's own
    error. In eval mode (running statistics) batch 1 works at every size."""
    init_default_scope('mmdet')
    cfg = tiny_detector_cfg(path)
    model = MODELS.build(cfg.model)
    num_classes = cfg.model.bbox_head.num_classes
    for h, w in DETECTOR_SIZES:
        data = demo_mm_inputs(1, image_shapes=[(3, h, w)], num_items=[2],
                              num_classes=num_classes)
        if max(h, w) <= 32:
            with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
                _train_step_grads_finite(model, data)
            _train_step_grads_finite(model, demo_mm_inputs(
                2, image_shapes=[(3, h, w)] * 2, num_items=[2, 0], num_classes=num_classes))
        else:
            _train_step_grads_finite(model, data)
        model.eval()
        with torch.no_grad():
            result = model(**model.data_preprocessor(data, False), mode='predict')[0]
        assert torch.isfinite(result.pred_instances.bboxes).all()
        assert result.ori_shape == (h, w)


@pytest.mark.parametrize('key, value, reason', [
    ('backbone.stem', 'dense', r"stem must be one of \('conv', 'attention'\), got 'dense'"),
    ('backbone.attention_cfg.kernel_size', 4, 'kernel_size must be a positive odd integer'),
    ('backbone.attention_cfg.heads', 3, r'must be divisible by heads \(3\)'),
    ('backbone.attention_cfg.positional_encoding', 'learned',
     r"positional_encoding must be one of \('relative', 'absolute', 'none'\), got 'learned'"),
    ('neck.attention_cfg.kernel_size', 6, 'kernel_size must be a positive odd integer'),
    ('bbox_head.attention_cfg.heads', 3, r'must be divisible by heads \(3\)'),
])
def test_bad_value_in_a_real_config_names_its_key(key, value, reason):
    """The SASA demo config with one bad value: building its model through
    explain_config_errors (as tools/train.py builds its Runner) raises ConfigValueError naming
    model.<key>, the value and what is allowed."""
    init_default_scope('mmdet')
    cfg = tiny_detector_cfg(osp.join(CONFIG_DIR, 'demo', 'retinanet_sasa_r26w16_demo.py'))
    cfg.merge_from_dict({f'model.{key}': value})
    with pytest.raises(ConfigValueError) as info:
        with explain_config_errors(cfg):
            MODELS.build(cfg.model)
    assert info.value.key == f'model.{key}'
    assert str(info.value).startswith(f'model.{key} = {value!r}: ')
    assert re.search(reason, str(info.value)), str(info.value)
