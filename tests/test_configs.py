"""Every config in configs/ (top level) builds its detector, trains one iteration and tests.

Building uses each config unchanged (full depth). Training and testing run through mmengine's
Runner with mmdet's pipeline and CocoMetric, on a one-image COCO set at 64 px made in tmp_path,
with SASA backbones at depth 26: depth changes no module type, pipeline or schedule, so the
R-38 and R-101 variants (which differ from retinanet_sasa_r50.py in depth only) are covered by
the build test and by retinanet_sasa_r26.py.
"""
import math
import re
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import sasa_det  # noqa: F401
from sasa_det.layers import LocalSelfAttention2d, SpatiallyAwareStem
from coco_fixture import make_coco, use_tiny_coco

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / 'configs').glob('*.py'))
# Configs that differ from another only in the depth of the SASA backbone.
DEPTH_ONLY = ('retinanet_sasa_r38.py', 'retinanet_sasa_r101.py')
FIVE = ['retinanet_r50.py', 'retinanet_sasa_r50_convhead.py',
        'retinanet_sasa_r50_attnstem_convhead.py', 'retinanet_sasa_r50.py',
        'retinanet_sasa_r50_attnstem.py']

register_all_modules(init_default_scope=False)


@pytest.fixture(autouse=True)
def mmdet_scope():
    """mmdet's default scope, as tools/train.py's Runner sets it. Per test: a Runner built by
    another test module leaves its own scope ('mmengine') as the current one."""
    init_default_scope('mmdet')


def load(name: str) -> Config:
    return Config.fromfile(str(ROOT / 'configs' / name))


def expected_parts(name: str) -> dict:
    """What the file name promises (DESIGN.md section 6 naming)."""
    attention_backbone = name.startswith('retinanet_sasa_')
    return dict(
        attention_backbone=attention_backbone,
        attention_stem='_attnstem' in name,
        attention_neck_head=attention_backbone and '_convhead' not in name,
        depth=int(re.search(r'_r(\d+)', name).group(1)),
        paper_recipe='_paper-150e' in name)


def test_the_five_paper_configs_and_their_variants_exist():
    for name in FIVE:
        assert name in CONFIGS
        assert name.replace('.py', '_paper-150e_coco.py') in CONFIGS
    for depth in (26, 38, 101):
        assert f'retinanet_sasa_r{depth}.py' in CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_the_model_its_name_promises(name):
    cfg, want = load(name), expected_parts(name)
    model = MODELS.build(cfg.model)
    attention = [m for m in model.backbone.modules() if isinstance(m, LocalSelfAttention2d)]
    stems = [m for m in model.backbone.modules() if isinstance(m, SpatiallyAwareStem)]
    assert bool(attention) == want['attention_backbone']
    assert bool(stems) == want['attention_stem']
    assert type(model.neck).__name__ == ('SASAFPN' if want['attention_neck_head'] else 'FPN')
    assert type(model.bbox_head).__name__ == (
        'SASARetinaHead' if want['attention_neck_head'] else 'RetinaHead')
    assert cfg.model.backbone.depth == want['depth']
    # From scratch: no download at run time, nothing frozen.
    assert cfg.model.backbone.init_cfg is None and cfg.model.backbone.frozen_stages == -1
    assert cfg.data_root == 'data/coco/'
    assert 'sasa_det' in cfg.custom_imports.imports


def flatten(node, prefix=''):
    """{'a.b.0.c': leaf} for nested dicts and lists."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)) and any(isinstance(v, (dict, list)) for v in node):
        items = enumerate(node)
    else:
        return {prefix[:-1]: node}
    return {k: v for key, value in items for k, v in flatten(value, f'{prefix}{key}.').items()}


def test_baseline_is_mmdets_retinanet_1x_but_from_scratch():
    """configs/_base_ restates mmdet's files; only the documented choices may differ."""
    mmdet_config = (Path(mmdet.__file__).parent / '.mim' / 'configs' / 'retinanet'
                    / 'retinanet_r50_fpn_1x_coco.py')
    ours = flatten(load('retinanet_r50.py').to_dict())
    theirs = flatten(Config.fromfile(str(mmdet_config)).to_dict())
    theirs = {k: v for k, v in theirs.items() if not k.startswith(('tta_', 'img_scales'))}
    differences = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differences == {
        'custom_imports.imports', 'custom_imports.allow_failed_imports',  # registers sasa_det
        'default_hooks.checkpoint.max_keep_ckpts',
        'model.backbone.init_cfg.type', 'model.backbone.init_cfg.checkpoint',  # from scratch
        'model.backbone.frozen_stages',
        'model.backbone.norm_eval',
        'model.neck.add_extra_convs',  # P6 from P5, as the paper's parameter count
        'custom_hooks.0.type', 'custom_hooks.0.mode',  # NonFiniteLossHook: stop on NaN/Inf
        # CheckedCocoDataset: CocoDataset that names the file and annotation of bad data
        'dataset_type', 'train_dataloader.dataset.type', 'val_dataloader.dataset.type',
        'test_dataloader.dataset.type'}


@pytest.mark.parametrize('name', [n for n in CONFIGS if '_paper-150e' in n])
def test_paper_recipe(name):
    """640 max side, jitter, crop, flip; 150 epochs, batch 8 x 8 GPUs; warm-up + cosine; SyncBN."""
    cfg = load(name)
    steps = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert steps['RandomResize'].scale == (640, 640) and steps['RandomResize'].ratio_range
    assert steps['RandomCrop'].crop_size == (640, 640) and steps['RandomFlip'].prob == 0.5
    assert cfg.train_cfg.max_epochs == 150 and cfg.auto_scale_lr.base_batch_size == 64
    assert cfg.train_dataloader.batch_size * 8 == 64
    assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'CosineAnnealingLR']
    assert cfg.sync_bn == 'torch'
    base = load(name.replace('_paper-150e_coco', ''))
    assert cfg.model == base.model  # same detector as the 1x config, only the recipe differs


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    make_coco(root, num_images=1, image_size=64)
    return root


def tiny(name: str, coco: Path, work_dir: Path) -> Config:
    """The config at 64 px on the tiny set: one training iteration, then the validation pass."""
    cfg = use_tiny_coco(load(name), coco, image_size=64, batch_size=1, work_dir=work_dir)
    if cfg.model.backbone.type == 'SASAResNet':
        cfg.model.backbone.depth = 26
    cfg.default_hooks.checkpoint = None  # nothing to resume here: skip writing ~100 MB
    # Runners in one process share mmengine's named visualiser and logger instances otherwise.
    cfg.experiment_name = cfg.visualizer.name = f'{Path(name).stem}-{work_dir.name}'
    return cfg


@pytest.mark.parametrize('name', [n for n in CONFIGS if n not in DEPTH_ONLY])
def test_config_trains_one_iteration_and_evaluates(name, coco, tmp_path, one_thread):
    runner = Runner.from_cfg(tiny(name, coco, tmp_path))
    runner.train()  # one epoch of one iteration, then the config's CocoMetric on the val set
    assert runner.iter == 1
    assert math.isfinite(runner.message_hub.get_scalar('train/loss').current())
    assert math.isfinite(runner.message_hub.get_scalar('val/coco/bbox_mAP').current())
