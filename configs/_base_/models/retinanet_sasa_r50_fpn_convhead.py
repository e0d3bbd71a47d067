# Attention backbone (convolutional stem, every 3x3 conv a SASA layer), convolutional FPN and head.
_base_ = './retinanet_r50_fpn.py'

model = dict(
    backbone=dict(type='SASAResNet', stem='conv', stage_with_attention=(True, True, True, True),
                  attention_cfg=dict(type='SASA', kernel_size=7, heads=8)))
