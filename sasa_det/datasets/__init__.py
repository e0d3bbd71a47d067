"""Embedded demo data: a deterministic synthetic COCO-format detection set.

Needs only numpy and PIL (no mmdet), so the data can be written before the rest is installed.
"""
from .demo_coco import SPLITS, coco_categories, make_demo_dataset, write_split
from .shapes import BACKGROUNDS, CLASSES, ShapeStyle, render_image

__all__ = ['BACKGROUNDS', 'CLASSES', 'SPLITS', 'ShapeStyle', 'coco_categories',
           'make_demo_dataset', 'render_image', 'write_split']
