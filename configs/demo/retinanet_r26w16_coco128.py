# The model of retinanet_r26w16_demo.py on COCO128 at 320 px (real images, 80 classes), with the
# same schedule and recipe. The data folder comes from the environment: see ./_base_/coco128.py.
_base_ = [
    './_base_/models/retinanet_r26w16.py',
    './_base_/coco128.py',
    './_base_/cpu_schedule.py',
]

model = dict(bbox_head=dict(num_classes=80))
