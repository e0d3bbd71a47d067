# Convolutional RetinaNet with a ResNet-26 of base width 16, on the embedded demo
# data (128 x 128 synthetic shapes, 4 classes) with the demo's schedule and recipe, shared with
# retinanet_sasa_r26w16_demo.py: the model in ./_base_/models/, the data and schedule in ./_base_/.
_base_ = [
    './_base_/models/retinanet_r26w16.py',
    './_base_/shapes_demo.py',
    './_base_/cpu_schedule.py',
]

model = dict(bbox_head=dict(num_classes=4))
