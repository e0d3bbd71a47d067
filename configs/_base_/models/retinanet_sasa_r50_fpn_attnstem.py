# Attention everywhere: attention stem and backbone, attention FPN and head.
_base_ = './retinanet_sasa_r50_fpn.py'

model = dict(backbone=dict(stem='attention'))
