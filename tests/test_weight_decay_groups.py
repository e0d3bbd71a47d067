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
