# The conv demo model with the SASA demo model's attention backbone: attention backbone,
# convolutional FPN and head.
_base_ = '../retinanet_r26w16_demo.py'

model = dict(backbone=dict(
    stage_with_attention=(True, True, True, True),
    attention_cfg=dict(type='SASA', kernel_size=7, heads=8, similarity='cosine',
                       position_bias=True)))
