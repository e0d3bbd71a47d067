"""The embedded demo data set: deterministic, valid COCO, loadable by mmdet's CocoDataset."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sasa_det.datasets import CLASSES, ShapeStyle, make_demo_dataset, render_image


def _digests(root: Path) -> dict:
    """sha256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('demo')
    make_demo_dataset(out, num_train=12, num_val=6, image_size=64, seed=3)
    return out


def test_same_seed_gives_byte_identical_files(demo_dir, tmp_path):
    """Property: the generator is a pure function of its arguments (json and PNG bytes)."""
    make_demo_dataset(tmp_path, num_train=12, num_val=6, image_size=64, seed=3)
    assert _digests(tmp_path) == _digests(demo_dir)


def test_other_seed_gives_other_images(demo_dir, tmp_path):
    """Property: the seed matters (a generator ignoring it would pass the test above)."""
    make_demo_dataset(tmp_path, num_train=12, num_val=6, image_size=64, seed=4)
    ours, theirs = _digests(tmp_path), _digests(demo_dir)
    assert ours.keys() == theirs.keys()
    assert ours['train/000001.png'] != theirs['train/000001.png']


def test_val_is_held_out(demo_dir):
    """Property: no validation image is a copy of a training image (independent streams)."""
    train = {v for k, v in _digests(demo_dir).items() if k.startswith('train/')}
    val = {v for k, v in _digests(demo_dir).items() if k.startswith('val/')}
    assert len(val) == 6 and not train & val


def test_json_loads_with_pycocotools(demo_dir):
    """Property: the json is valid COCO: pycocotools indexes it, ids and files are consistent."""
    from pycocotools.coco import COCO
    for split, n in (('train', 12), ('val', 6)):
        coco = COCO(str(demo_dir / 'annotations' / f'instances_{split}.json'))
        assert len(coco.getImgIds()) == n
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(demo_dir / split / img['file_name']) as im:
                assert im.size == (img['width'], img['height']) == (64, 64)
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            assert 0 < ann['area'] <= w * h


def test_boxes_are_tight_around_the_shape():
    """Property: a box is the extent of its shape's pixels, to within the 1-pixel anti-aliased
    rim. The shape's pixels are found by rendering the same background without the shape."""
    with_shape = ShapeStyle(max_objects=1, empty_fraction=0.0, noise_std=0.0)
    without = ShapeStyle(empty_fraction=1.0, noise_std=0.0)
    for seed in range(10):
        # The background is drawn first, so the same seed gives the same background.
        img, (obj,) = render_image(np.random.default_rng(seed), 96, with_shape)
        bg, none = render_image(np.random.default_rng(seed), 96, without)
        assert none == []
        changed = np.abs(img.astype(int) - bg.astype(int)).max(axis=-1) > 0
        ys, xs = np.nonzero(changed)
        x, y, w, h = obj['bbox']
        assert xs.min() - 1 <= x <= xs.min() + 1 and ys.min() - 1 <= y <= ys.min() + 1
        assert xs.max() <= x + w <= xs.max() + 2 and ys.max() <= y + h <= ys.max() + 2


def test_objects_vary_and_some_images_are_empty():
    """Property: the set is not trivial: all classes, a wide size range, empty images."""
    rng = np.random.default_rng(1)
    objects, empty = [], 0
    for _ in range(60):
        _, objs = render_image(rng, 96)
        objects += objs
        empty += not objs
    sides = [np.sqrt(o['bbox'][2] * o['bbox'][3]) for o in objects]
    assert {o['category'] for o in objects} == set(range(len(CLASSES)))
    assert min(sides) < 15 and max(sides) > 35
    assert 1 <= empty <= 20


def test_mmdet_coco_dataset_loads_it(demo_dir):
    """Property: mmdet's own CocoDataset and pipeline read the set (classes, boxes, images)."""
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    dataset = CocoDataset(
        data_root=str(demo_dir), ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'), metainfo=dict(classes=CLASSES),
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='PackDetInputs')])
    assert len(dataset) == 6
    coco = json.loads((demo_dir / 'annotations' / 'instances_val.json').read_text())
    first = dataset[0]
    assert tuple(first['inputs'].shape) == (3, 64, 64)
    n_first = sum(a['image_id'] == 1 for a in coco['annotations'])
    assert len(first['data_samples'].gt_instances.bboxes) == n_first
