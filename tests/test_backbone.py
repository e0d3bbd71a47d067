"""SASAResNet: mmdet's ResNet when attention is off, every attention option builds and trains."""
import itertools
import logging
import warnings

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS
from mmengine.logging import MMLogger

import sasa_det  # noqa: F401  (registers SASAResNet)
from sasa_det.layers import AAConv2d, LocalSelfAttention2d, SpatiallyAwareStem
from sasa_det.models.backbones import SASAResNet

# Tiny widths keep every test fast on a 2-core CPU; the structure is the full one.
TINY = dict(base_channels=16, attention_cfg=dict(type='SASA', heads=4))
NO_ATTENTION = (False, False, False, False)


@pytest.fixture(autouse=True)
def _quiet_checkpoint_warning():
    # mmdet's blocks call torch.utils.checkpoint without use_reentrant (a torch warning).
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*use_reentrant.*')
        yield


def _same_weights_randomised(src, dst):
    """Copy src's state into dst after making BN statistics non-trivial."""
    with torch.no_grad():
        for name, tensor in src.state_dict().items():
            if 'running_var' in name:
                tensor.uniform_(0.5, 2.0)
            elif 'running_mean' in name:
                tensor.normal_()
            elif name.endswith('weight') and tensor.dim() == 1:
                tensor.uniform_(0.5, 1.5)  # BN scales; undoes the zero init of the last norms
    dst.load_state_dict(src.state_dict(), strict=True)


@pytest.mark.parametrize('depth, options', [
    (50, dict()),
    (50, dict(style='caffe', avg_down=True, out_indices=(1, 3))),
    (50, dict(deep_stem=True, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2))),
    (18, dict(num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 2),
              stage_with_attention=(False,) * 3)),
])
def test_without_attention_it_is_exactly_mmdet_resnet(depth, options):
    """Same state-dict keys and shapes, and identical outputs for the same weights."""
    torch.manual_seed(0)
    options = dict(options, base_channels=8, norm_eval=False)
    stages = options.pop('stage_with_attention', NO_ATTENTION)
    ours = SASAResNet(depth, stage_with_attention=stages, **options)
    reference = ResNet(depth, **options)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    assert list(ours.state_dict()) == list(reference.state_dict())
    _same_weights_randomised(reference, ours)
    x = torch.randn(2, 3, 33, 27)
    for mode in (True, False):  # batch statistics, then running statistics
        ours.train(mode)
        reference.train(mode)
        for a, b in zip(ours(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_depth_26_and_38_block_layouts():
    for depth, blocks in ((26, [1, 2, 4, 1]), (38, [2, 3, 5, 2])):
        model = SASAResNet(depth, stage_with_attention=NO_ATTENTION, base_channels=8)
        assert [len(getattr(model, f'layer{i}')) for i in range(1, 5)] == blocks


# Every stem x attention type x stage pattern; style and with_cp alternate so each value of
# each appears with every stem and layer. Depth 26, tiny widths, odd input size.
COMBINATIONS = [
    (stem, layer, stages, style_cp)
    for (stem, layer), style_cp in zip(
        itertools.product(['conv', 'attention'], ['SASA', 'AA']),
        [('pytorch', False), ('caffe', True), ('caffe', False), ('pytorch', True)])
    for stages in [(True, True, True, True), (False, False, True, True)]]


@pytest.mark.parametrize('stem, layer, stages, style_cp', COMBINATIONS)
def test_every_option_combination_runs_forward_and_backward(stem, layer, stages, style_cp):
    torch.manual_seed(0)
    style, with_cp = style_cp
    model = SASAResNet(26, stem=stem, stage_with_attention=stages, style=style, with_cp=with_cp,
                       norm_eval=False, base_channels=8, attention_cfg=dict(type=layer, heads=4))
    model.train()
    x = torch.randn(2, 3, 17, 23, requires_grad=True)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 5, 6), (2, 64, 3, 3), (2, 128, 2, 2),
                                              (2, 256, 1, 1)]
    sum(o.square().mean() for o in outs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    layer_type = LocalSelfAttention2d if layer == 'SASA' else AAConv2d
    for i, with_attention in enumerate(stages):
        for block in getattr(model, f'layer{i + 1}'):
            assert isinstance(block.conv2, layer_type) == with_attention
    assert isinstance(getattr(model, 'stem', None), SpatiallyAwareStem) == (stem == 'attention')


def test_basic_block_depth_18_puts_attention_in_both_3x3_layers():
    torch.manual_seed(0)
    model = SASAResNet(18, stage_with_attention=(False, True, False, False), **TINY)
    block = model.layer2[0]
    assert isinstance(block.conv1, LocalSelfAttention2d) and block.conv1.stride == 2
    assert isinstance(block.conv2, LocalSelfAttention2d) and block.conv2.stride == 1
    outs = model(torch.randn(1, 3, 37, 29))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 10, 8), (32, 5, 4), (64, 3, 2),
                                                  (128, 2, 1)]
    sum(o.sum() for o in outs).backward()


def test_attention_cfg_and_strides_reach_every_layer():
    model = SASAResNet(26, base_channels=16, attention_cfg=dict(
        type='SASA', kernel_size=5, heads=2, positional_encoding='absolute'))
    layers = [m for m in model.modules() if isinstance(m, LocalSelfAttention2d)]
    assert len(layers) == 1 + 2 + 4 + 1
    assert all(m.kernel_size == 5 and m.heads == 2 and m.positional_encoding == 'absolute'
               for m in layers)
    assert [m.stride for m in layers] == [1, 2, 1, 2, 1, 1, 1, 2]
    aa = SASAResNet(26, base_channels=16, attention_cfg=dict(type='AA', heads=4, dk=8,
                                                             relative=False))
    aa_layers = [m for m in aa.modules() if isinstance(m, AAConv2d)]
    assert len(aa_layers) == 8 and all(m.kernel_size == 3 and m.dk == 8 and not m.relative
                                       for m in aa_layers)
    assert aa.layer1[0].conv2.dv == 4  # default upsilon 0.1 of 16 channels, rounded to heads


@pytest.mark.parametrize('depth, stages', [(26, (False, True, False, True)),
                                           (18, (True, False, True, False))])
def test_blocks_build_each_attention_layer_once_in_exactly_the_marked_stages(
        monkeypatch, depth, stages):
    """No 3x3 convolution is built in an attention stage (not even to be replaced), and every
    3x3 position of the marked stages, and only those, holds an attention layer."""
    built = []
    conv_init = nn.Conv2d.__init__

    def recording_init(self, in_channels, out_channels, kernel_size, *args, **kwargs):
        built.append(kernel_size)
        conv_init(self, in_channels, out_channels, kernel_size, *args, **kwargs)

    monkeypatch.setattr(nn.Conv2d, '__init__', recording_init)
    model = SASAResNet(depth, stem='attention', stage_with_attention=stages, **TINY)
    spatial = ('conv1', 'conv2') if depth == 18 else ('conv2',)  # basic block: both 3x3
    convs_3x3 = 0
    for i, with_attention in enumerate(stages):
        for block in getattr(model, f'layer{i + 1}'):
            for name in spatial:
                assert isinstance(getattr(block, name), LocalSelfAttention2d) == with_attention
                convs_3x3 += not with_attention
    assert built.count(3) == convs_3x3


def test_attention_stem_fills_resnets_stem_slots():
    """SASAResNet keeps ResNet's forward and _freeze_stages: the attention stem is ResNet's
    `stem` (run before an identity `maxpool`), and its state-dict keys stay stem.*."""
    assert SASAResNet.forward is ResNet.forward
    assert SASAResNet._freeze_stages is ResNet._freeze_stages
    model = SASAResNet(26, stem='attention', **TINY)
    assert isinstance(model.stem, SpatiallyAwareStem) and isinstance(model.maxpool, nn.Identity)
    assert not hasattr(model, 'conv1')
    assert {k.split('.')[0] for k in model.state_dict()} == {'stem', 'layer1', 'layer2',
                                                              'layer3', 'layer4'}


def test_state_dict_keys_of_attention_layers_are_the_projections_and_tables():
    """Checkpoints written before the pools became modules keep loading: a strided attention
    layer has the same keys as a stride-1 one (pools have no state)."""
    model = SASAResNet(26, **TINY)
    keys = {k for k in model.state_dict() if '.conv2.' in k}
    assert keys == {f'layer{i}.{j}.conv2.{name}' for i, blocks in enumerate((1, 2, 4, 1), 1)
                    for j in range(blocks) for name in ('qkv.weight', 'rel_row', 'rel_col')}
    assert model.layer2[0].conv2.stride == 2


def test_attention_cfg_without_type_is_read_as_sasa_with_a_warning():
    with pytest.warns(FutureWarning, match=r"write attention_cfg=dict\(type='SASA', heads=4\)"):
        model = SASAResNet(26, base_channels=16, attention_cfg=dict(heads=4))
    assert isinstance(model.layer1[0].conv2, LocalSelfAttention2d)
    assert model.layer1[0].conv2.heads == 4 and model.layer1[0].conv2.kernel_size == 7


def test_layer_options_reach_every_attention_layer_and_train():
    """The opt-in layer options pass through attention_cfg; strided blocks downsample by
    strided queries and the stage outputs keep their shapes."""
    options = dict(head_dim=4, position_bias=True, relative_tables='per_head',
                   downsample='query')
    model = SASAResNet(26, base_channels=16, norm_eval=False,
                       attention_cfg=dict(type='SASA', kernel_size=5, **options))
    layers = [m for m in model.modules() if isinstance(m, LocalSelfAttention2d)]
    assert len(layers) == 8 and all(m.head_dim == 4 and m.position_bias is not None
                                    for m in layers)
    assert [m.query_stride for m in layers] == [1, 2, 1, 2, 1, 1, 1, 2]
    outs = model(torch.randn(2, 3, 37, 29))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 10, 8), (128, 5, 4), (256, 3, 2),
                                                  (512, 2, 1)]
    sum(o.square().mean() for o in outs).backward()
    assert all(m.position_bias.grad is not None and m.rel_row.grad.abs().sum() > 0
               for m in layers)


def test_with_cp_gives_same_gradients_and_keeps_fewer_activations():
    """Checkpointing recomputes each block's activations in backward instead of keeping them:
    only block inputs stay saved, so the activation memory held between forward and backward
    (the peak of training) falls from all intermediate maps to one block's. We measure the bytes
    autograd saves for backward, which is exactly that held memory."""
    torch.manual_seed(0)
    plain = SASAResNet(26, stem='attention', norm_eval=False, **TINY).double()
    checkpointed = SASAResNet(26, stem='attention', norm_eval=False, with_cp=True,
                              **TINY).double()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 33, 47, dtype=torch.float64)  # float64: differences are rounding only

    def run(model):
        model.train()
        model.zero_grad()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return grads, sum(storages.values())

    grads_plain, saved_plain = run(plain)
    grads_cp, saved_cp = run(checkpointed)
    assert grads_plain.keys() == grads_cp.keys()
    for name in grads_plain:
        # float64 rounding only: the recomputed forward's matmuls run on new allocations, whose
        # alignment can change the BLAS reduction order (seen: 3.8e-12 in one of 768 entries).
        torch.testing.assert_close(grads_cp[name], grads_plain[name], rtol=1e-7, atol=1e-10)
    assert saved_cp < 0.5 * saved_plain, (saved_cp, saved_plain)


def _capture_current_log():
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    return records, lambda: logger.removeHandler(handler)


@pytest.mark.parametrize('stem', ['conv', 'attention'])
def test_resnet_checkpoint_initialises_conv_parts_and_reports_missing_attention(tmp_path, stem):
    """An ImageNet ResNet state dict loads through init_cfg; the attention weights it lacks are
    logged as missing (and the 3x3 weights they replace as unexpected), not silently skipped."""
    torch.manual_seed(0)
    resnet = ResNet(50, base_channels=16)
    resnet.init_weights()
    path = tmp_path / 'resnet50.pth'
    torch.save(resnet.state_dict(), path)
    model = SASAResNet(50, stem=stem, stage_with_attention=(False, True, True, True),
                       init_cfg=dict(type='Pretrained', checkpoint=str(path)), **TINY)
    records, detach = _capture_current_log()
    try:
        model.init_weights()
    finally:
        detach()
    log = '\n'.join(records)
    assert 'missing keys in source state_dict' in log
    assert 'layer2.0.conv2.qkv.weight' in log and 'layer4.2.conv2.rel_row' in log
    assert 'unexpected key in source state_dict' in log and 'layer2.0.conv2.weight' in log
    assert ('stem.qk.weight' in log) == (stem == 'attention')
    loaded, source = model.state_dict(), resnet.state_dict()
    common = loaded.keys() & source.keys()
    assert {'layer1.0.conv2.weight', 'layer3.1.conv1.weight', 'layer4.0.bn2.running_var',
            'layer2.0.downsample.0.weight'} <= common
    assert ('conv1.weight' in common) == (stem == 'conv')
    for key in common:
        torch.testing.assert_close(loaded[key], source[key], rtol=0, atol=0, msg=key)


def test_frozen_stages_and_norm_eval_with_attention_stem():
    model = SASAResNet(26, stem='attention', frozen_stages=1, norm_eval=True, **TINY)
    assert model.train() is model
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.stem.training and not model.layer1.training
    assert not model.stem.norm.training and not model.layer2[0].bn1.training  # norm_eval
    assert model.layer2[0].conv2.training


def test_built_from_mmdet_registry_with_syncbn_style_norm_cfg():
    model = MODELS.build(dict(type='SASAResNet', depth=26, stem='attention', out_indices=(3,),
                              norm_cfg=dict(type='GN', num_groups=4), **TINY))
    assert isinstance(model, SASAResNet)
    assert type(model.stem.norm).__name__ == 'GroupNorm'  # the stem follows norm_cfg
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 512, 1, 1)


@pytest.mark.parametrize('kwargs, match', [
    (dict(depth=42), r'depth must be one of \(18, 26, 34, 38, 50, 101, 152\), got 42'),
    (dict(stage_with_attention=(True, False, True)), 'stage_with_attention must have'),
    (dict(num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0,)),
     'stage_with_attention must have num_stages'),
    (dict(stem='deep'), r"stem must be one of \('conv', 'attention'\), got 'deep'"),
    (dict(spatial_layer='aa'), r"write attention_cfg=dict\(type='AA', ...\)"),
    (dict(attention_cfg='SASA'), r"attention_cfg must be a dict such as dict\(type='SASA'"),
    (dict(stem='attention', deep_stem=True), 'deep_stem'),
    (dict(attention_cfg=dict(type='SASA', kernel_size=4)), 'kernel_size'),
    (dict(conv_cfg=dict(type='Conv2d')), 'conv_cfg must be None with attention stages'),
    (dict(dcn=dict(type='DCN'), stage_with_dcn=(False, False, False, True)),
     'dcn and attention both replace the 3x3 convolutions'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(depth=26, base_channels=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SASAResNet(**args)
