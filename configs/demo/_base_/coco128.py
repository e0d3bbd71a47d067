# COCO128 at 320 px: 128 real COCO train2017 images (longer side 320) and 128 val2017 images,
# with COCO's own 80 categories, for real-image checks of the demo-size models. The data lives
# outside the repository; give its folder (the one holding annotations/, train2017/, val2017/) in
# the environment:
#   COCO128_ROOT=/path/to/coco128/ python tools/train.py configs/demo/retinanet_r26w16_coco128.py
# The test split is val2017; to evaluate on the training images instead, add
#   --cfg-options test_dataloader.dataset.ann_file=annotations/instances_train2017.json \
#       test_dataloader.dataset.data_prefix.img=train2017/ \
#       test_evaluator.ann_file=${COCO128_ROOT}annotations/instances_train2017.json
# The loaders are the demo's (./shapes_demo.py); what differs is stated here.
_base_ = './shapes_demo.py'

data_root = '{{$COCO128_ROOT:data/coco128/}}'
image_size = (320, 320)  # (w, h): the longer side, as the images are stored
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
coco = dict(metainfo=None, data_root=data_root)  # metainfo None: mmdet's 80 COCO classes
train_dataloader = dict(dataset=dict(
    coco, ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
    pipeline=train_pipeline))
test_dataloader = dict(dataset=dict(
    coco, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
    pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
val_evaluator = test_evaluator
