"""The parameter names a config's ``paramwise_cfg`` uses to exempt the attention layers' positional
parameters (relative tables, position biases, cosine temperatures) and all norms from weight decay, checked with
mmengine's own optimizer constructor on a detector with every kind of attention parameter."""
import torch
from mmdet.registry import MODELS
from mmengine.optim import DefaultOptimWrapperConstructor

import sasa_det  # noqa: F401  (registers the models)

# What the configs put in optim_wrapper.paramwise_cfg. custom_keys match substrings of the full
# parameter name; the leading dot keeps each key to a whole parameter name.
NO_DECAY = dict(decay_mult=0.0)
PARAMWISE_CFG = dict(norm_decay_mult=0.0, custom_keys={
    '.rel_row': NO_DECAY, '.rel_col': NO_DECAY,  # SASA relative tables (shared or per head)
    '.position_bias': NO_DECAY,  # SASA learned position bias
    '.logit_scale': NO_DECAY,  # SASA cosine-similarity temperature
    '.rel_height': NO_DECAY, '.rel_width': NO_DECAY,  # AA relative tables
})
EXEMPT = ('rel_row', 'rel_col', 'position_bias', 'logit_scale', 'rel_height', 'rel_width')


def _detector():
    attention = dict(type='SASA', kernel_size=3, heads=4, position_bias=True)
    return MODELS.build(dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='SASAResNet', depth=26, stem='attention', base_channels=16,
                      stage_with_attention=(True, True, False, False), out_indices=(1, 2, 3),
                      attention_cfg=dict(attention, relative_tables='per_head')),
        neck=dict(type='SASAFPN', in_channels=[128, 256, 512], out_channels=32, num_outs=5,
                  start_level=0, add_extra_convs='on_output',
                  norm_cfg=dict(type='GN', num_groups=4),
                  attention_cfg=dict(type='AA', heads=4)),
        bbox_head=dict(type='SASARetinaHead', num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=1, attention_cfg=dict(attention, similarity='cosine'),
                       norm_cfg=dict(type='GN', num_groups=4),
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=1, ratios=[1.0],
                                             strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                       loss_bbox=dict(type='L1Loss'))))


def test_paramwise_cfg_exempts_positional_parameters_and_norms_and_nothing_else():
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = _detector()
    wrapper = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        PARAMWISE_CFG)(model)
    decay = {id(p): group['weight_decay'] for group in wrapper.optimizer.param_groups
             for p in group['params']}
    norms = {f'{name}.{p_name}' for name, m in model.named_modules()
             if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm))
             for p_name, _ in m.named_parameters(recurse=False)}
    exempt_seen = set()
    for name, param in model.named_parameters():
        exempt = name.rsplit('.', 1)[-1] in EXEMPT
        exempt_seen.update([name.rsplit('.', 1)[-1]] if exempt else [])
        assert decay[id(param)] == (0.0 if exempt or name in norms else 0.05), name
    assert exempt_seen == set(EXEMPT)  # every kind of positional parameter was present
    assert any('stem.norm' in n for n in norms) and any('neck' in n for n in norms)


def _wrappers(model):
    from mmengine.registry import init_default_scope
    from sasa_det.engine import MergedGroupsOptimWrapperConstructor
    init_default_scope('mmdet')
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
    return (DefaultOptimWrapperConstructor(cfg, PARAMWISE_CFG)(model),
            MergedGroupsOptimWrapperConstructor(cfg, PARAMWISE_CFG)(model))


def _options(wrapper):
    return {id(p): {k: v for k, v in group.items() if k != 'params'}
            for group in wrapper.optimizer.param_groups for p in group['params']}


def test_merged_groups_give_each_parameter_the_default_constructors_options():
    model = _detector()
    default, merged = _wrappers(model)
    assert _options(merged) == _options(default)
    options = [{k: v for k, v in g.items() if k != 'params'} for g in merged.optimizer.param_groups]
    assert all(a != b for i, a in enumerate(options) for b in options[i + 1:])  # one per option set
    # mmengine's groups here: defaults, norms' weight_decay=0 and the custom keys' (lr,
    # weight_decay, decay_mult), against one group per parameter.
    assert len(options) == 3
    assert len(default.optimizer.param_groups) == len(list(model.parameters()))


def test_merged_groups_take_the_default_constructors_adamw_steps_bitwise():
    torch.manual_seed(0)
    model = _detector()
    twin = _detector()
    twin.load_state_dict(model.state_dict())
    default, _ = _wrappers(model)
    _, merged = _wrappers(twin)
    for step in range(3):
        for m in (model, twin):
            torch.manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn_like(p)
        default.step()
        merged.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_merge_param_groups_keeps_first_appearance_order():
    from sasa_det.engine.optimizers import merge_param_groups
    a, b, c, d = (torch.nn.Parameter(torch.zeros(1)) for _ in range(4))
    groups = [dict(params=[a], lr=1.0), dict(params=[b], lr=2.0), dict(params=[c], lr=1.0),
              dict(params=[d])]
    merged = merge_param_groups(groups)
    assert [g['params'] for g in merged] == [[a, c], [b], [d]]
    assert [g.get('lr') for g in merged] == [1.0, 2.0, None]
    assert groups[0]['params'] == [a]  # the input groups are left as they were
