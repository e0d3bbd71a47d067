"""Validate a COCO detection annotation file before training on it, naming every fault.

mmdet's ``CocoDataset`` trusts its input: a file that is not JSON fails inside pycocotools, a
missing image fails hours later in the data loader, and several faults are dropped silently
(degenerate boxes, boxes outside the image, category ids absent from ``categories``, annotations
of unknown images). :func:`check_coco_annotations` reads the file and classifies each fault;
:func:`check_coco_data` does the same for a file already parsed (``CheckedCocoDataset`` parses
it once for the check and for mmdet's COCO index).

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
import os
import os.path as osp
import warnings
from typing import Dict, Iterable, List, Optional, Set, Tuple

CHECK_IMAGES = ('exists', 'decode', 'none')
MAX_LISTED = 10  # faults listed in one error message; the rest are counted
IMAGE_KEYS = ('id', 'file_name', 'width', 'height')
ANNOTATION_KEYS = ('id', 'image_id', 'category_id', 'bbox', 'area')


class CocoAnnotationError(ValueError):
    """The annotation file (or its images) is not usable COCO detection data."""


def load_coco_json(ann_file: str) -> object:
    """The parsed content of ``ann_file``; :class:`CocoAnnotationError` if unreadable or not
    JSON."""
    try:
        with open(ann_file, 'rb') as f:
            raw = f.read()
    except OSError as err:
        raise CocoAnnotationError(f'annotation file {ann_file} cannot be read: {err}') from err
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoAnnotationError(f'annotation file {ann_file} is not JSON: {err}') from err


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
    return check_coco_data(load_coco_json(ann_file), ann_file, img_prefix, check_images, strict,
                           require_annotations)


def check_coco_data(data: object, ann_file: str, img_prefix: Optional[str] = None,
                    check_images: str = 'exists', strict: bool = False,
                    require_annotations: bool = True) -> List[str]:
    """:func:`check_coco_annotations` on the parsed content ``data`` of ``ann_file``."""
    if check_images not in CHECK_IMAGES:
        raise ValueError(f'check_images must be one of {CHECK_IMAGES}, got {check_images!r}')
    _check_top_level(data, ann_file, require_annotations)
    errors: List[str] = []
    warns: List[str] = []
    categories = _check_categories(data['categories'], errors)
    images = _check_images(data['images'], errors)
    if img_prefix is not None and check_images != 'none':
        _check_image_files(images.values(), img_prefix, check_images, errors)
    _check_annotations(data.get('annotations', []), images, categories, errors, warns)
    return _report(ann_file, errors, warns, strict)


def _check_top_level(data: object, ann_file: str, require_annotations: bool) -> None:
    """A dict with lists under ``images``, ``categories`` (and ``annotations`` if required)."""
    required = ('images', 'categories') + (('annotations',) if require_annotations else ())
    if not isinstance(data, dict):
        raise CocoAnnotationError(f'annotation file {ann_file} is not COCO: the top level is a '
                                  f'{type(data).__name__}, expected an object with keys '
                                  f'{required}')
    absent = [k for k in required if not isinstance(data.get(k), list)]
    if absent:
        raise CocoAnnotationError(f'annotation file {ann_file} is not COCO: no list under key(s) '
                                  f'{absent} (found keys {sorted(data)})')


def _missing(entry: object, keys: Tuple[str, ...]) -> List[str]:
    """The ``keys`` that ``entry`` lacks (all of them if it is not a dict)."""
    return [k for k in keys if k not in entry] if isinstance(entry, dict) else list(keys)


def _check_categories(categories: list, errors: List[str]) -> Dict:
    """{category id: name}; entries without an id and a name are errors."""
    names = {}
    for i, cat in enumerate(categories):
        if _missing(cat, ('id', 'name')):
            errors.append(f'categories[{i}] = {cat!r} needs an "id" and a "name"')
        else:
            names[cat['id']] = cat['name']
    return names


def _image_name(img: dict) -> str:
    return f'image id {img["id"]} ({img["file_name"]!r})'


def _check_images(images: list, errors: List[str]) -> Dict:
    """{image id: image entry}; missing keys, duplicate ids and non-positive sizes are errors."""
    by_id = {}
    for i, img in enumerate(images):
        lacking = _missing(img, IMAGE_KEYS)
        if lacking:
            errors.append(f'images[{i}] lacks {lacking}')
            continue
        if img['id'] in by_id:
            errors.append(f'{_image_name(img)}: duplicate image id')
        by_id[img['id']] = img
        if not (isinstance(img['width'], int) and isinstance(img['height'], int)
                and img['width'] > 0 and img['height'] > 0):
            errors.append(f'{_image_name(img)}: width and height must be positive integers, '
                          f'got {img["width"]!r} x {img["height"]!r}')
    return by_id


def _files_in(directory: str) -> Set[str]:
    """Names of the files in ``directory`` (empty if it does not exist): one directory read."""
    try:
        with os.scandir(directory) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _check_image_files(images: Iterable[dict], img_prefix: str, mode: str,
                       errors: List[str]) -> None:
    """Every image file exists (``mode='exists'``) and also decodes (``'decode'``).

    Existence is looked up in one listing per directory rather than one ``stat`` per image:
    COCO train2017 has 118k images in one directory.
    """
    listings: Dict[str, Set[str]] = {}
    for img in images:
        path = osp.join(img_prefix, img['file_name'])
        directory, name = osp.split(path)
        if directory not in listings:
            listings[directory] = _files_in(directory or os.curdir)
        if name not in listings[directory]:
            errors.append(f'{_image_name(img)}: image file {path} is missing')
        elif mode == 'decode':
            problem = _decode_problem(path)
            if problem:
                errors.append(f'{_image_name(img)}: image file {path} {problem}')


def _decode_problem(path: str) -> Optional[str]:
    """Why PIL cannot decode the image at ``path``, or None."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises many types on bad files
        return f'cannot be decoded ({type(err).__name__}: {err})'
    return None


def _check_annotations(annotations: list, images: Dict, categories: Dict, errors: List[str],
                       warns: List[str]) -> None:
    """Each annotation's keys, id, image, category and box (see :func:`_box_faults`)."""
    ann_ids = set()
    for i, ann in enumerate(annotations):
        lacking = _missing(ann, ANNOTATION_KEYS)
        if lacking:
            errors.append(f'annotations[{i}] lacks {lacking}')
            continue
        img = images.get(ann['image_id'])
        faults = []  # messages, built only for faulty annotations (COCO train has 860k)
        if ann['id'] in ann_ids:
            faults.append('duplicate annotation id')
        ann_ids.add(ann['id'])
        if img is None:
            faults.append(f'image_id {ann["image_id"]!r} is not among the images')
        if ann['category_id'] not in categories:
            faults.append(f'category_id {ann["category_id"]!r} is not in the categories list '
                          f'{sorted(categories, key=str)}')
        error, warning = _box_faults(ann['bbox'], ann['area'], img)
        if error:
            faults.append(error)
        if faults or warning:
            where = (f'annotation id {ann["id"]} (image id {ann["image_id"]}'
                     + (f', {img["file_name"]!r})' if img else ')'))
            errors.extend(f'{where}: {fault}' for fault in faults)
            if warning:
                warns.append(f'{where}: {warning}')


def _box_faults(bbox: object, area: object, img: Optional[dict]) -> Tuple[str, str]:
    """(error, warning) about one ``[x, y, w, h]`` box; '' where there is none.

    Not 4 finite numbers, or a negative width or height: an error. A side below one pixel,
    ``area <= 0``, or a box entirely outside its image: a warning (mmdet ignores the box).
    """
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        return f'bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}', ''
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return (f'bbox {bbox} has negative width or height (COCO boxes are '
                '[x, y, width, height])'), ''
    if w < 1 or h < 1 or area <= 0:
        return '', (f'bbox {bbox} with area {area} has zero area or a side below 1 pixel; '
                    'mmdet ignores it')
    if img is not None and (x >= img['width'] or y >= img['height'] or x + w <= 0
                            or y + h <= 0):
        return '', (f'bbox {bbox} lies outside the {img["width"]}x{img["height"]} image; '
                    'mmdet ignores it')
    return '', ''


def _report(ann_file: str, errors: List[str], warns: List[str], strict: bool) -> List[str]:
    """Raise the errors (with the warnings, if ``strict``); else issue and return the warnings."""
    if strict:
        errors, warns = errors + warns, []
    if errors:
        listed = '\n  '.join(errors[:MAX_LISTED])
        more = f'\n  ... and {len(errors) - MAX_LISTED} more' if len(errors) > MAX_LISTED else ''
        raise CocoAnnotationError(f'annotation file {ann_file} has {len(errors)} error(s):\n  '
                                  f'{listed}{more}')
    warns = [f'{ann_file}: {message}' for message in warns]
    for message in warns[:MAX_LISTED]:
        warnings.warn(message, stacklevel=3)
    if len(warns) > MAX_LISTED:
        warnings.warn(f'{ann_file}: {len(warns) - MAX_LISTED} more ignored boxes', stacklevel=3)
    return warns
