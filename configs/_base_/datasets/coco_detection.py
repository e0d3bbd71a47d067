# COCO 2017 at data/coco/ (annotations/, train2017/, val2017/), mmdet's pipeline and CocoMetric
# (bbox mAP), as in mmdet: 1333 x 800 resize, flip, batch 2 per GPU.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
