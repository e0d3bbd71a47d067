# Convolutional RetinaNet shrunk for a 2-core CPU: configs/retinanet_r50.py's model with
# - backbone depth 26 ([1, 2, 4, 1] bottlenecks) and base width 16 (stage outputs 64, 128,
#   256, 512). mmdet's ResNet has no depth 26, so the backbone is SASAResNet with attention
#   switched off, which is exactly mmdet's ResNet with that layout;
# - FPN and head width 64, head depth 2 layers per subnet, GroupNorm in the FPN and after every
#   head layer (as retinanet_sasa_r26w16.py, so that the two compare);
# - anchors halved (octave_base_scale 4 -> 2) for inputs of 128 to 320 px, not 1333 x 800.
_base_ = '../../../_base_/models/retinanet_r50_fpn.py'

fpn_head_norm = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(type='SASAResNet', depth=26, base_channels=16,
                  stage_with_attention=(False, False, False, False)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64, norm_cfg=fpn_head_norm),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2, norm_cfg=fpn_head_norm,
                   anchor_generator=dict(octave_base_scale=2)))
