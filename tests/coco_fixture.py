"""A tiny COCO-format detection set and helpers that point a config at it (for tests).

Images are noise with a few filled rectangles labelled with the first COCO classes; all 80
COCO class names are declared (ids 1..80), so mmdet's CocoDataset, the configs' 80-class heads
and CocoMetric (which maps every predicted label to a category id) take it as COCO.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mmdet.datasets import CocoDataset
from PIL import Image

CATEGORIES = [dict(id=i + 1, name=name) for i, name in enumerate(CocoDataset.METAINFO['classes'])]
NUM_LABELLED = 3  # boxes use the first three classes only


def make_coco(root: str | Path, num_images: int = 2, image_size: int = 64,
              seed: int = 0) -> Path:
    """Write ``root/images/*.png`` and ``root/annotations/instances.json``; return the json."""
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        for _ in range(2):
            w, h = rng.integers(image_size // 4, image_size // 2, size=2)
            x, y = rng.integers(0, image_size - max(w, h), size=2)
            pixels[y:y + h, x:x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id,
                category_id=int(rng.integers(1, NUM_LABELLED + 1)),
                bbox=[int(x), int(y), int(w), int(h)], area=int(w * h), iscrowd=0))
        file_name = f'{image_id:04d}.png'
        Image.fromarray(pixels).save(root / 'images' / file_name)
        images.append(dict(id=image_id, file_name=file_name, width=image_size,
                           height=image_size))
    ann_file = root / 'annotations' / 'instances.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations,
                                        categories=CATEGORIES)))
    return ann_file


def use_tiny_coco(cfg, data_root: str | Path, image_size: int = 64, batch_size: int = 2,
                  work_dir: str | Path | None = None):
    """Point an mmdet config (in place) at make_coco's set, at ``image_size`` px, on one process.

    Every resize / crop scale in the pipelines becomes ``image_size`` square, the loaders run in
    the main process, and training is one epoch (num_images / batch_size iterations) followed
    by one validation pass with the config's CocoMetric (score threshold 0, so an untrained
    model still predicts boxes). Returns ``cfg``.
    """
    data_root = str(data_root).rstrip('/') + '/'
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        loader.batch_size = batch_size if split == 'train' else 1
        dataset = loader.dataset
        dataset.update(data_root=data_root, ann_file='annotations/instances.json',
                       data_prefix=dict(img='images/'))
        for transform in dataset.pipeline:
            for key in ('scale', 'crop_size'):
                if key in transform:
                    transform[key] = (image_size, image_size)
    for split in ('val', 'test'):
        cfg[f'{split}_evaluator'].ann_file = data_root + 'annotations/instances.json'
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    # An untrained RetinaNet scores every anchor near its 0.01 prior, under the usual 0.05
    # threshold: keep all detections, so that the metric has predictions to evaluate.
    cfg.model.test_cfg.score_thr = 0.0
    cfg.default_hooks.logger.interval = 1
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    return cfg
