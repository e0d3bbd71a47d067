# Convolutional RetinaNet with a ResNet-26 of base width 16, for the demo on a 2-core CPU: the
# model of configs/retinanet_r50.py shrunk, on the embedded demo data with the demo schedule and
# recipe (configs/demo/_base_/). The same shrinking as retinanet_sasa_r26w16_demo.py, so that the
# two compare:
# - input 128 x 128 instead of 1333 x 800, so anchors halve (octave_base_scale 4 -> 2);
# - backbone depth 26 ([1, 2, 4, 1] bottlenecks) and base width 16 (stage outputs 64, 128,
#   256, 512). mmdet's ResNet has no depth 26, so the backbone is SASAResNet with attention
#   switched off, which is exactly mmdet's ResNet with that layout;
# - FPN and head width 64, head depth 2 layers per subnet;
# - GroupNorm in the FPN and after every head layer, in both models.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py',
    './_base_/shapes_demo.py',
    './_base_/cpu_schedule.py',
]

fpn_head_norm = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(type='SASAResNet', depth=26, base_channels=16,
                  stage_with_attention=(False, False, False, False)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64, norm_cfg=fpn_head_norm),
    bbox_head=dict(num_classes=4, in_channels=64, feat_channels=64, stacked_convs=2,
                   norm_cfg=fpn_head_norm, anchor_generator=dict(octave_base_scale=2)))
