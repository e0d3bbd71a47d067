"""Data faults get errors or warnings that name the file and the annotation.

Errors: unreadable or non-COCO annotation files, missing or undecodable images, negative box
sizes, category ids not in ``categories``, annotations of unknown images. Warnings: boxes mmdet
ignores (zero area, a side below one pixel, outside the image). Images without objects are valid.
"""
import builtins
import copy
import json
import re

import numpy as np
import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from PIL import Image

from sasa_det.datasets import CocoAnnotationError, SampleLoadError, check_coco_annotations

CATEGORIES = [dict(id=1, name='square'), dict(id=2, name='disc')]


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest


def _write_set(root, annotations=None, size=32):
    """Three PNG images (the third has no objects) and their COCO json; return (json, dict)."""
    (root / 'images').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for image_id in (1, 2, 3):
        name = f'{image_id:02d}.png'
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            root / 'images' / name)
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
    if annotations is None:
        annotations = [dict(id=10, image_id=1, category_id=1, bbox=[2, 3, 10, 12], area=120,
                            iscrowd=0),
                       dict(id=11, image_id=2, category_id=2, bbox=[5, 5, 8, 8], area=64,
                            iscrowd=0)]
    data = dict(images=images, annotations=annotations, categories=CATEGORIES)
    return _dump(root / 'instances.json', data), data


def _dump(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def _with_annotation(tmp_path, **changes):
    """The valid set with annotation 10 changed; return the json path."""
    ann_file, data = _write_set(tmp_path)
    data = copy.deepcopy(data)
    data['annotations'][0].update(changes)
    return _dump(tmp_path / 'instances.json', data)


def test_valid_set_with_an_empty_image_passes(tmp_path, recwarn):
    """A correct file, image 3 without objects: no error, no warning."""
    ann_file, _ = _write_set(tmp_path)
    assert check_coco_annotations(ann_file, img_prefix=str(tmp_path / 'images'),
                                  check_images='decode') == []
    assert not [w for w in recwarn if ann_file in str(w.message)]


def test_not_json(tmp_path):
    bad = tmp_path / 'instances.json'
    bad.write_text('{"images": [1, 2,')
    with pytest.raises(CocoAnnotationError, match=rf'{re.escape(str(bad))} is not JSON: '):
        check_coco_annotations(str(bad))


@pytest.mark.parametrize('data, expected', [
    ([1, 2], 'the top level is a list'),
    (dict(images=[], annotations=[]), r"no list under key\(s\) \['categories'\]"),
    (dict(images={}, annotations=[], categories=[]), r"no list under key\(s\) \['images'\]"),
])
def test_not_coco(tmp_path, data, expected):
    ann_file = _dump(tmp_path / 'other.json', data)
    with pytest.raises(CocoAnnotationError, match=rf'{re.escape(ann_file)} is not COCO: '
                                                 f'{expected}'):
        check_coco_annotations(ann_file)


def test_missing_annotations_key_allowed_for_test_sets(tmp_path):
    ann_file = _dump(tmp_path / 'test.json', dict(images=[], categories=CATEGORIES))
    assert check_coco_annotations(ann_file, require_annotations=False) == []


def test_missing_image_is_an_error_naming_it(tmp_path):
    ann_file, _ = _write_set(tmp_path)
    (tmp_path / 'images' / '02.png').unlink()
    with pytest.raises(CocoAnnotationError) as info:
        check_coco_annotations(ann_file, img_prefix=str(tmp_path / 'images'))
    assert ann_file in str(info.value)
    assert f"image id 2 ('02.png'): image file {tmp_path / 'images' / '02.png'} is missing" \
        in str(info.value)


def test_image_files_are_found_relative_to_the_prefix(tmp_path, monkeypatch):
    """Images in a subdirectory of the prefix, and a prefix of '' (the working directory)."""
    ann_file, data = _write_set(tmp_path)
    monkeypatch.chdir(tmp_path / 'images')
    assert check_coco_annotations(ann_file, img_prefix='') == []
    (tmp_path / 'images' / '03.png').unlink()
    with pytest.raises(CocoAnnotationError, match=r"image id 3 \('03.png'\): image file 03.png "
                                                  r'is missing'):
        check_coco_annotations(ann_file, img_prefix='')
    for img in data['images']:
        img['file_name'] = f'images/{img["file_name"]}'
    _dump(tmp_path / 'instances.json', data)
    with pytest.raises(CocoAnnotationError, match=r"image id 3 \('images/03.png'\): image file "
                                                  rf'{re.escape(str(tmp_path))}/images/03.png'):
        check_coco_annotations(ann_file, img_prefix=str(tmp_path))
    data['images'].pop()
    _dump(tmp_path / 'instances.json', data)
    assert check_coco_annotations(ann_file, img_prefix=str(tmp_path)) == []


def test_undecodable_image_is_an_error_with_decode(tmp_path):
    ann_file, _ = _write_set(tmp_path)
    (tmp_path / 'images' / '01.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    prefix = str(tmp_path / 'images')
    check_coco_annotations(ann_file, img_prefix=prefix)  # 'exists' does not open files
    with pytest.raises(CocoAnnotationError, match=r"image id 1 \('01.png'\): image file .*01.png "
                                                  r'cannot be decoded'):
        check_coco_annotations(ann_file, img_prefix=prefix, check_images='decode')


@pytest.mark.parametrize('bbox, area', [([2, 3, 0, 12], 0), ([2, 3, 10, 0.5], 5),
                                        ([2, 3, 10, 12], 0)])
def test_zero_area_box_is_a_warning_or_strict_error(tmp_path, bbox, area):
    """mmdet ignores such a box: warn naming the annotation and image; strict=True: error."""
    ann_file = _with_annotation(tmp_path, bbox=bbox, area=area)
    expected = rf"annotation id 10 \(image id 1, '01.png'\): bbox .* has zero area"
    with pytest.warns(UserWarning, match=expected):
        warns = check_coco_annotations(ann_file)
    assert len(warns) == 1 and warns[0].startswith(ann_file)
    with pytest.raises(CocoAnnotationError, match=expected):
        check_coco_annotations(ann_file, strict=True)


def test_box_outside_the_image_is_a_warning(tmp_path):
    ann_file = _with_annotation(tmp_path, bbox=[40, 3, 5, 5], area=25)
    with pytest.warns(UserWarning, match=r'annotation id 10 .* lies outside the 32x32 image'):
        check_coco_annotations(ann_file)


@pytest.mark.parametrize('changes, expected', [
    (dict(bbox=[2, 3, -10, 12]),
     r"annotation id 10 \(image id 1, '01.png'\): bbox \[2, 3, -10, 12\] has negative width"),
    (dict(bbox=[2, 3, 10]), r"annotation id 10 \(image id 1, '01.png'\): bbox must be 4 finite"),
    (dict(category_id=7), r"annotation id 10 \(image id 1, '01.png'\): category_id 7 is not in "
                          r'the categories list \[1, 2\]'),
    (dict(image_id=99), r'annotation id 10 \(image id 99\): image_id 99 is not among the images'),
    (dict(id=11), r"annotation id 11 \(image id 2, '02.png'\): duplicate annotation id"),
])
def test_malformed_annotation_is_an_error_naming_it(tmp_path, changes, expected):
    ann_file = _with_annotation(tmp_path, **changes)
    with pytest.raises(CocoAnnotationError) as info:
        check_coco_annotations(ann_file)
    message = str(info.value)
    assert message.startswith(f'annotation file {ann_file} has 1 error(s)')
    assert re.search(expected, message), message


# --- the registered dataset (mmdet) -------------------------------------------------------------

def _dataset(tmp_path, ann_file, **kwargs):
    init_default_scope('mmdet')
    return DATASETS.build(dict(dict(
        type='CheckedCocoDataset', data_root=str(tmp_path), ann_file=ann_file,
        data_prefix=dict(img='images/'), metainfo=dict(classes=('square', 'disc')),
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='PackDetInputs')]), **kwargs))


def test_checked_dataset_loads_a_valid_set_with_empty_images(tmp_path):
    ann_file, _ = _write_set(tmp_path)
    dataset = _dataset(tmp_path, ann_file)
    assert len(dataset) == 3
    assert len(dataset[2]['data_samples'].gt_instances) == 0  # image 3, no objects


def test_checked_dataset_reads_the_file_once_and_loads_what_mmdet_loads(tmp_path, monkeypatch):
    """The annotation file is opened once (the check and the COCO index share the parsed
    file), and the data list is mmdet's CocoDataset's for the same file."""
    ann_file, _ = _write_set(tmp_path)
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file) == ann_file:
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', counting_open)
    checked = _dataset(tmp_path, ann_file)
    monkeypatch.undo()
    assert len(opened) == 1
    plain = _dataset(tmp_path, ann_file, type='CocoDataset')
    assert [checked.get_data_info(i) for i in range(len(checked))] == [
        plain.get_data_info(i) for i in range(len(plain))]
    assert checked.cat_ids == plain.cat_ids and checked.cat_img_map == plain.cat_img_map


def test_checked_dataset_refuses_bad_annotations(tmp_path):
    ann_file = _with_annotation(tmp_path, category_id=7)
    with pytest.raises(CocoAnnotationError, match='annotation id 10 .* category_id 7'):
        _dataset(tmp_path, ann_file)


def test_checked_dataset_names_image_that_fails_to_load(tmp_path):
    """An image that exists but cannot be decoded fails in the pipeline with its path, image id
    and the annotation file in the message."""
    ann_file, _ = _write_set(tmp_path)
    (tmp_path / 'images' / '02.png').write_bytes(b'not an image')
    dataset = _dataset(tmp_path, ann_file)
    with pytest.raises(SampleLoadError, match=rf'{re.escape(ann_file)}: loading image '
                                              rf'.*02.png \(image id 2, dataset index 1\)'):
        dataset[1]


def test_images_without_objects_train_normally(tmp_path):
    """A batch of an annotated image and one without objects, then a batch of two images
    without objects, through CheckedCocoDataset and one SGD step of the SASA demo detector
    (shrunk): finite losses, zero box loss when there is no object, weights updated."""
    from test_reliability_inputs import CONFIG_DIR, tiny_detector_cfg

    ann_file, _ = _write_set(tmp_path)
    dataset = _dataset(tmp_path, ann_file)
    model = MODELS.build(tiny_detector_cfg(
        f'{CONFIG_DIR}/demo/retinanet_sasa_r26w16_demo.py').model)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    model.train()
    for indices, has_objects in (((0, 2), True), ((2, 2), False)):
        before = [p.detach().clone() for p in model.parameters()]
        log_vars = model.train_step(pseudo_collate([dataset[i] for i in indices]),
                                    optim_wrapper)
        assert all(torch.isfinite(v) for v in log_vars.values()), log_vars
        assert (log_vars['loss_bbox'] > 0) == has_objects
        assert log_vars['loss_cls'] > 0
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
