# Attention everywhere in the backbone, stem included; convolutional FPN and head.
_base_ = './retinanet_sasa_r50_fpn_convhead.py'

model = dict(backbone=dict(stem='attention'))
