# Convolutional RetinaNet R-50-FPN (the paper's baseline), trained from scratch as in the paper.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

model = dict(
    # From scratch: nothing frozen and BatchNorm in training mode. To fine-tune from ImageNet
    # weights instead, set init_cfg=dict(type='Pretrained', checkpoint=...), frozen_stages=1
    # and norm_eval=True (mmdet's defaults).
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    # P6 from P5 rather than from C5: the parameter count of the paper's baseline (33.4M) is
    # that of this variant (33.8M; 38.0M with P6 from C5, mmdet's default).
    neck=dict(add_extra_convs='on_output'))
