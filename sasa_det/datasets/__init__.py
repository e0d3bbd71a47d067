"""Datasets: ``CheckedCocoDataset`` (registered in mmdet's ``DATASETS``) with the COCO checks it
runs, and the embedded synthetic COCO-format demo set (:mod:`.demo_coco`, :mod:`.shapes`)."""
from .checked_coco import CheckedCocoDataset, SampleLoadError, coco_index
from .coco_checks import (CocoAnnotationError, check_coco_annotations, check_coco_data,
                          load_coco_json)
from .demo_coco import SPLITS, coco_categories, make_demo_dataset, write_split
from .shapes import BACKGROUNDS, CLASSES, ShapeStyle, render_image

__all__ = ['BACKGROUNDS', 'CLASSES', 'CheckedCocoDataset', 'CocoAnnotationError', 'SPLITS',
           'SampleLoadError', 'ShapeStyle', 'check_coco_annotations', 'check_coco_data',
           'coco_categories', 'coco_index', 'load_coco_json', 'make_demo_dataset',
           'render_image', 'write_split']
