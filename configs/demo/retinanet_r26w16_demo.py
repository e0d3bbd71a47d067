# The convolutional baseline of configs/retinanet_r50.py shrunk for the demo on a 2-core CPU:
# the same model base and runtime, with the embedded demo data in place of COCO and a short
# schedule in place of 1x (configs/demo/_base_/). What shrinks, the same in
# retinanet_sasa_r50_demo.py so that the two stay comparable:
# - input 128 x 128 instead of 1333 x 800: anchors halve (octave_base_scale 4 -> 2);
# - backbone depth 50 -> 26 and base width 64 -> 16 (stage outputs 64, 128, 256, 512). mmdet's
#   ResNet has no depth 26, so the backbone is SASAResNet with attention switched off, which is
#   exactly mmdet's ResNet with the [1, 2, 4, 1] bottleneck layout;
# - FPN and head width 256 -> 64, head depth 4 -> 2 layers per subnet.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py',
    './_base_/shapes_demo.py',
    './_base_/cpu_schedule.py',
]

model = dict(
    backbone=dict(type='SASAResNet', depth=26, base_channels=16,
                  stage_with_attention=(False, False, False, False)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(num_classes=4, in_channels=64, feat_channels=64, stacked_convs=2,
                   anchor_generator=dict(octave_base_scale=2)))
