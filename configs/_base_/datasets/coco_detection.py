# mmdet's COCO 2017 set (data/coco/, 1333 x 800, flip, CocoMetric on val2017), read through
# CheckedCocoDataset: mmdet's CocoDataset plus checks that name the file and annotation of bad
# data.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

dataset_type = 'CheckedCocoDataset'
train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
