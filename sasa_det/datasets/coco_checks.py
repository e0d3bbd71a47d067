"""Validate a COCO detection annotation file before training on it, naming every fault.

mmdet's ``CocoDataset`` trusts its input: a file that is not JSON fails inside pycocotools, a
missing image fails hours later in the data loader, and several faults are dropped silently
(degenerate boxes, boxes outside the image, category ids absent from ``categories``, annotations
of unknown images). :func:`check_coco_annotations` reads the file once and classifies each fault.

Errors (:class:`CocoAnnotationError`; the data are wrong and training on them would be wrong):

- the file cannot be read, is not JSON, or is not a COCO dict with lists ``images``,
  ``categories`` and (except for test sets) ``annotations``;
- an image without ``id``/``file_name``/``width``/``height``, non-positive size, or a duplicate id;
- with ``check_images='exists'`` (default) a missing image file, with ``'decode'`` also one that
  PIL cannot decode;
- an annotation without ``id``/``image_id``/``category_id``/``bbox``/``area``, a duplicate id,
  an ``image_id`` not among the images, a ``category_id`` not in ``categories``, a ``bbox`` that is
  not 4 finite numbers, or a box with negative width or height (usually x1, y1, x2, y2 stored
  where COCO wants x, y, w, h).

Warnings (returned and issued with :func:`warnings.warn`; mmdet drops these boxes, which is
right, but the user should know): a box with width or height below 1 pixel or ``area <= 0``
(zero-area boxes included), or a box entirely outside its image. ``strict=True`` makes them
errors. Images without annotations are valid (they train as all-background images).
"""
import json
import math
import os.path as osp
import warnings
from typing import List, Optional

CHECK_IMAGES = ('exists', 'decode', 'none')
MAX_LISTED = 10  # faults listed in one error message; the rest are counted


class CocoAnnotationError(ValueError):
    """The annotation file (or its images) is not usable COCO detection data."""


def _load_json(ann_file: str):
    try:
        with open(ann_file, 'rb') as f:
            raw = f.read()
    except OSError as err:
        raise CocoAnnotationError(f'annotation file {ann_file} cannot be read: {err}') from err
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoAnnotationError(f'annotation file {ann_file} is not JSON: {err}') from err


def _missing(entry: dict, keys) -> List[str]:
    return [k for k in keys if k not in entry]


def _image_problem(path: str, mode: str) -> Optional[str]:
    if not osp.isfile(path):
        return 'is missing'
    if mode == 'decode':
        from PIL import Image
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many types on bad files
            return f'cannot be decoded ({type(err).__name__}: {err})'
    return None


def check_coco_annotations(ann_file: str, img_prefix: Optional[str] = None,
                           check_images: str = 'exists', strict: bool = False,
                           require_annotations: bool = True) -> List[str]:
    """Check a COCO detection file; raise :class:`CocoAnnotationError` listing all errors.

    Args:
        ann_file: path of the COCO json.
        img_prefix: directory the images' ``file_name`` is relative to; None skips image checks.
        check_images: 'exists', 'decode' (open every image with PIL: slow) or 'none'.
        strict: treat warnings as errors.
        require_annotations: whether ``annotations`` must be present (False for test sets).

    Returns:
        The warnings (also issued with ``warnings.warn``).
    """
    if check_images not in CHECK_IMAGES:
        raise ValueError(f'check_images must be one of {CHECK_IMAGES}, got {check_images!r}')
    data = _load_json(ann_file)
    required = ('images', 'categories') + (('annotations',) if require_annotations else ())
    if not isinstance(data, dict):
        raise CocoAnnotationError(f'annotation file {ann_file} is not COCO: the top level is a '
                                  f'{type(data).__name__}, expected an object with keys '
                                  f'{required}')
    absent = [k for k in required if not isinstance(data.get(k), list)]
    if absent:
        raise CocoAnnotationError(f'annotation file {ann_file} is not COCO: no list under key(s) '
                                  f'{absent} (found keys {sorted(data)})')

    errors, warns = [], []
    categories = {}
    for i, cat in enumerate(data['categories']):
        if not isinstance(cat, dict) or _missing(cat, ('id', 'name')):
            errors.append(f'categories[{i}] = {cat!r} needs an "id" and a "name"')
        else:
            categories[cat['id']] = cat['name']

    images = {}
    for i, img in enumerate(data['images']):
        lacking = _missing(img, ('id', 'file_name', 'width', 'height')) if isinstance(
            img, dict) else ['id', 'file_name', 'width', 'height']
        if lacking:
            errors.append(f'images[{i}] lacks {lacking}')
            continue
        where = f'image id {img["id"]} ({img["file_name"]!r})'
        if img['id'] in images:
            errors.append(f'{where}: duplicate image id')
        images[img['id']] = img
        if not (isinstance(img['width'], int) and isinstance(img['height'], int)
                and img['width'] > 0 and img['height'] > 0):
            errors.append(f'{where}: width and height must be positive integers, got '
                          f'{img["width"]!r} x {img["height"]!r}')
        if img_prefix is not None and check_images != 'none':
            path = osp.join(img_prefix, img['file_name'])
            problem = _image_problem(path, check_images)
            if problem:
                errors.append(f'{where}: image file {path} {problem}')

    ann_ids = set()
    for i, ann in enumerate(data.get('annotations', [])):
        lacking = _missing(ann, ('id', 'image_id', 'category_id', 'bbox', 'area')) if isinstance(
            ann, dict) else ['id', 'image_id', 'category_id', 'bbox', 'area']
        if lacking:
            errors.append(f'annotations[{i}] lacks {lacking}')
            continue
        img = images.get(ann['image_id'])
        where = (f'annotation id {ann["id"]} (image id {ann["image_id"]}'
                 + (f', {img["file_name"]!r})' if img else ')'))
        if ann['id'] in ann_ids:
            errors.append(f'{where}: duplicate annotation id')
        ann_ids.add(ann['id'])
        if img is None:
            errors.append(f'{where}: image_id {ann["image_id"]!r} is not among the images')
        if ann['category_id'] not in categories:
            errors.append(f'{where}: category_id {ann["category_id"]!r} is not in the '
                          f'categories list {sorted(categories, key=str)}')
        bbox = ann['bbox']
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            errors.append(f'{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}')
            continue
        x, y, w, h = bbox
        if w < 0 or h < 0:
            errors.append(f'{where}: bbox {bbox} has negative width or height (COCO boxes are '
                          '[x, y, width, height])')
        elif w < 1 or h < 1 or ann['area'] <= 0:
            warns.append(f'{where}: bbox {bbox} with area {ann["area"]} has zero area or a side '
                         'below 1 pixel; mmdet ignores it')
        elif img is not None and (x >= img['width'] or y >= img['height'] or x + w <= 0
                                  or y + h <= 0):
            warns.append(f'{where}: bbox {bbox} lies outside the {img["width"]}x{img["height"]} '
                         'image; mmdet ignores it')

    if strict:
        errors, warns = errors + warns, []
    if errors:
        listed = '\n  '.join(errors[:MAX_LISTED])
        more = f'\n  ... and {len(errors) - MAX_LISTED} more' if len(errors) > MAX_LISTED else ''
        raise CocoAnnotationError(f'annotation file {ann_file} has {len(errors)} error(s):\n  '
                                  f'{listed}{more}')
    warns = [f'{ann_file}: {message}' for message in warns]
    for message in warns[:MAX_LISTED]:
        warnings.warn(message, stacklevel=2)
    if len(warns) > MAX_LISTED:
        warnings.warn(f'{ann_file}: {len(warns) - MAX_LISTED} more ignored boxes', stacklevel=2)
    return warns
