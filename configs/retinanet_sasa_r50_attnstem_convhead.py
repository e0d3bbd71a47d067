# Attention stem + attention backbone; convolutional FPN and head.
# mmdet's 1x schedule (12 epochs, batch 16). The paper's recipe: the _paper-150e_coco.py variant.
_base_ = [
    './_base_/models/retinanet_sasa_r50_fpn_attnstem_convhead.py',
    './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_1x.py',
    './_base_/default_runtime.py',
]
