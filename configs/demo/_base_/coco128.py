# COCO128 at 320 px: 128 real COCO train2017 images (longer side 320) and 128 val2017 images,
# with COCO's own 80 categories, for real-image checks of the demo-size models. The data lives
# outside the repository; give its folder (the one holding annotations/, train2017/, val2017/) in
# the environment:
#   COCO128_ROOT=/path/to/coco128/ python tools/train.py configs/demo/retinanet_r26w16_coco128.py
# The test split is val2017; the fit test also evaluates on the training images, with
#   --cfg-options test_dataloader.dataset.ann_file=annotations/instances_train2017.json \
#       test_dataloader.dataset.data_prefix.img=train2017/ \
#       test_evaluator.ann_file=${COCO128_ROOT}annotations/instances_train2017.json
_base_ = '../../_base_/datasets/coco_detection.py'

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
# Iteration-based schedule (configs/demo/_base_/cpu_schedule.py), hence the infinite sampler.
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
