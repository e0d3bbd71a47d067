# Attention backbone (convolutional stem), attention FPN and attention head: the paper's
# headline COCO model.
_base_ = './retinanet_sasa_r50_fpn_convhead.py'

model = dict(
    neck=dict(type='SASAFPN', attention_cfg=dict(type='SASA', kernel_size=7, heads=8)),
    bbox_head=dict(type='SASARetinaHead', attention_cfg=dict(type='SASA', kernel_size=7, heads=8),
                   head_mixing='extra'))
