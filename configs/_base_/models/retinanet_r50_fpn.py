# mmdet's convolutional RetinaNet R-50-FPN (the paper's baseline) with three changes.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

model = dict(
    # From scratch, as in the paper: no weights downloaded, nothing frozen, BatchNorm in training
    # mode. To fine-tune from ImageNet weights instead, set init_cfg=dict(type='Pretrained',
    # checkpoint=...), frozen_stages=1 and norm_eval=True (mmdet's settings).
    backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None),
    # P6 from P5 rather than from C5 (mmdet's 'on_input'): the paper's baseline count of 33.4M
    # parameters is this variant's (33.8M; 38.0M with P6 from C5).
    # GroupNorm in the FPN and after every head convolution, as in every SASA model of this
    # project, so that each conv / SASA pair differs only in its spatial layers. Without a norm
    # the attention FPN and head did not learn on the demo (docs/ablations.md); the paper does
    # not say how it normalised them. mmdet's norm-free FPN and head: norm_cfg=None in both.
    neck=dict(add_extra_convs='on_output', norm_cfg=dict(type='GN', num_groups=32,
                                                         requires_grad=True)),
    bbox_head=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))
