"""Every config in configs/ (top level) builds its detector, trains one iteration and tests; all
configs (demo included) select the project's reliability parts.

Building uses each config unchanged (full depth). Training and testing run through mmengine's
Runner with mmdet's pipeline and CocoMetric, on a one-image COCO set at 64 px made in tmp_path,
with SASA backbones at depth 26: depth changes no module type, pipeline or schedule, so the
R-38 and R-101 variants (which differ from retinanet_sasa_r50.py in depth only) are covered by
the build test and by retinanet_sasa_r26.py.
"""
import math
import re
from pathlib import Path

import pytest
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
DEMO_CONFIGS = sorted(f'demo/{p.name}' for p in (ROOT / 'configs' / 'demo').glob('*.py'))
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
    """configs/<name> (a path under configs/, e.g. 'demo/x.py')."""
    return Config.fromfile(str(ROOT / 'configs' / name))


def expected_parts(name: str) -> dict:
    """What the file name promises: retinanet[_sasa]_r<depth>[_attnstem][_convhead][_paper-150e]."""
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


@pytest.mark.parametrize('name', CONFIGS + DEMO_CONFIGS)
def test_config_selects_the_reliability_parts(name):
    """Every config (demo included) checkpoints with AtomicCheckpointHook, stops on NaN/Inf with
    NonFiniteLossHook, reads CheckedCocoDataset, and imports sasa_det to register them."""
    cfg = load(name)
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert dict(type='NonFiniteLossHook', mode='stop') in cfg.custom_hooks
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.type == 'CheckedCocoDataset'
    assert cfg.custom_imports == dict(imports=['sasa_det'], allow_failed_imports=False)


def test_coco_configs_differ_from_mmdets_retinanet_where_documented():
    """The baseline is mmdet's RetinaNet 1x (inherited, not restated) except: from scratch,
    P6 from P5, GroupNorm in the FPN and head, and the project's dataset and hooks."""
    cfg = load('retinanet_r50.py')
    assert cfg.model.backbone.init_cfg is None and cfg.model.backbone.frozen_stages == -1
    assert cfg.model.backbone.norm_eval is False
    assert cfg.model.neck.add_extra_convs == 'on_output'
    assert cfg.model.neck.norm_cfg.type == cfg.model.bbox_head.norm_cfg.type == 'GN'
    assert cfg.optim_wrapper.optimizer.lr == 0.01  # mmdet's RetinaNet lr, not its base 0.02
    assert cfg.train_cfg.max_epochs == 12 and cfg.default_hooks.checkpoint.max_keep_ckpts == 3
    assert cfg.train_dataloader.dataset.ann_file == 'annotations/instances_train2017.json'


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
