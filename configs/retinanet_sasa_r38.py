# retinanet_sasa_r50.py with a SASA ResNet-38 backbone.
_base_ = './retinanet_sasa_r50.py'

model = dict(backbone=dict(depth=38))
