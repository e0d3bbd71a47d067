# Convolutional stem + attention backbone; attention FPN and head (the headline model).
# The paper's recipe: 640 max side, scale jitter, crop, flip; 150 epochs at batch 64 (8 GPUs x 8),
# warm-up + cosine, SyncBN.
_base_ = [
    './_base_/models/retinanet_sasa_r50_fpn.py',
    './_base_/datasets/coco_detection_640.py',
    './_base_/schedules/paper_150e.py',
    './_base_/default_runtime.py',
]
