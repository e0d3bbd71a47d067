# SASA RetinaNet with a ResNet-26 of base width 16, for the demo on a 2-core CPU: the headline
# model of configs/retinanet_sasa_r50.py (attention backbone with a convolutional stem, attention
# FPN and attention head) shrunk as retinanet_r26w16_demo.py is, on the embedded demo data with a
# short schedule (configs/demo/_base_/).
# The backbone attention is the paper's: k = 7, 8 heads, relative logits, masked borders. The
# attention FPN and head use k = 3, GroupNorm and logits scaled by head_dim ** -0.5: at 128 x 128
# the FPN maps are 16 x 16 down to 1 x 1, and with the paper's settings there (k = 7, unscaled
# logits, no norm) this model does not learn to regress boxes. docs/ablations.md has the
# measurements behind these settings and the learning rate.
_base_ = [
    '../_base_/models/retinanet_sasa_r50_fpn.py',
    './_base_/shapes_demo.py',
    './_base_/cpu_schedule.py',
]

fpn_head_attention = dict(type='SASA', kernel_size=3, heads=8, scale=(64 // 8) ** -0.5)
fpn_head_norm = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(depth=26, base_channels=16),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64,
              attention_cfg=fpn_head_attention, norm_cfg=fpn_head_norm),
    bbox_head=dict(num_classes=4, in_channels=64, feat_channels=64, stacked_convs=2,
                   attention_cfg=fpn_head_attention, norm_cfg=fpn_head_norm,
                   anchor_generator=dict(octave_base_scale=2)))

# AdamW lr 3e-3 with decoupled weight decay 0.05 for this model: its GroupNorm-normalised FPN and
# head take the larger step; the conv demo model, with mmdet's norm-free RetinaNet FPN and head,
# does not train at 3e-3 and keeps cpu_schedule.py's 1e-3.
optim_wrapper = dict(optimizer=dict(lr=0.003, weight_decay=0.05))
