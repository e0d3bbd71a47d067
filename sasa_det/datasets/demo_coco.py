"""Write the demo detection set to disk in the COCO layout that mmdet's CocoDataset reads.

Layout under ``out_dir``::

    train/000001.png ...            val/000001.png ...
    annotations/instances_train.json   annotations/instances_val.json

Every image has its own random stream, derived from (seed, split, image index), so the splits are
independent (val is held out: no image of it appears in train) and the output is byte-identical
for the same arguments.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import CLASSES, ShapeStyle, render_image

SPLITS = ('train', 'val')
# Distinct integers mixed into the seed, so that train and val never share a random stream.
_SPLIT_KEYS = {'train': 0, 'val': 1}


def coco_categories() -> list[dict]:
    """COCO 'categories' entries: ids 1..len(CLASSES), in CLASSES order."""
    return [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]


def write_split(out_dir: str | os.PathLike, split: str, num_images: int, image_size: int,
                seed: int, style: ShapeStyle = ShapeStyle()) -> Path:
    """Render ``num_images`` images of one split and write their PNGs and COCO json.

    Returns the path of ``annotations/instances_{split}.json``.
    """
    if split not in _SPLIT_KEYS:
        raise ValueError(f'split={split!r}: expected one of {SPLITS}')
    if num_images < 1:
        raise ValueError(f'num_images={num_images!r}: expected an integer >= 1')
    if image_size < 32:
        raise ValueError(f'image_size={image_size!r}: expected an integer >= 32')
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / 'annotations').mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_KEYS[split], index])
        pixels, objects = render_image(rng, image_size, style)
        image_id = index + 1
        file_name = f'{image_id:06d}.png'
        # Fast zlib level: the files are written once per machine and read many times.
        Image.fromarray(pixels).save(out_dir / split / file_name, format='PNG', compress_level=1)
        images.append(dict(id=image_id, file_name=file_name, width=image_size,
                           height=image_size))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=obj['category'] + 1, bbox=obj['bbox'],
                                    area=round(obj['area'], 2), iscrowd=0))
    coco = dict(
        info=dict(description=f'sasa-det synthetic shapes, split {split}, seed {seed}',
                  version='1.0'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=coco_categories(),
    )
    ann_file = out_dir / 'annotations' / f'instances_{split}.json'
    ann_file.write_text(json.dumps(coco, indent=None, separators=(',', ':')))
    return ann_file


def make_demo_dataset(out_dir: str | os.PathLike, num_train: int = 800, num_val: int = 200,
                      image_size: int = 128, seed: int = 0,
                      style: ShapeStyle = ShapeStyle()) -> dict[str, Path]:
    """Write both splits; returns {'train': json path, 'val': json path}."""
    return {
        'train': write_split(out_dir, 'train', num_train, image_size, seed, style),
        'val': write_split(out_dir, 'val', num_val, image_size, seed, style),
    }
