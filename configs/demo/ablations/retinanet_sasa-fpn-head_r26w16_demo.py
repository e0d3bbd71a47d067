# The SASA demo model with a convolutional backbone: conv backbone, attention FPN and head.
_base_ = '../retinanet_sasa_r26w16_demo.py'

model = dict(backbone=dict(stage_with_attention=(False, False, False, False)))
