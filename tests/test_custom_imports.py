"""An mmdet config reaches sasa_det through ``custom_imports`` alone.

The config is loaded in a fresh Python process that has not imported sasa_det, so the modules it
builds can only have been registered by mmengine importing what ``custom_imports`` names.
"""
import json
import subprocess
import sys
import textwrap

CONFIG = """
custom_imports = dict(imports=['sasa_det'], allow_failed_imports=False)
# A detector's body as a user writes it: sasa_det's backbone, and mmdet's own FPN with every
# ConvModule built as conv type 'SASA' (kernel 1 laterals, 3x3 outputs).
backbone = dict(type='SASAResNet', depth=26, out_indices=(0, 1, 2, 3))
neck = dict(
    type='FPN',
    in_channels=[256, 512, 1024, 2048],
    out_channels=16,
    num_outs=4,
    conv_cfg=dict(type='SASA', heads=4))
"""

SCRIPT = """
import json, sys

import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope

assert 'sasa_det' not in sys.modules and 'SASA' not in ROOT_MODELS.module_dict
cfg = Config.fromfile(sys.argv[1])  # runs custom_imports
from mmdet.registry import MODELS

init_default_scope('mmdet')
backbone = MODELS.build(cfg.backbone).eval()
neck = MODELS.build(cfg.neck).eval()
with torch.no_grad():
    outputs = neck(backbone(torch.randn(2, 3, 64, 64)))
print(json.dumps(dict(
    imported='sasa_det' in sys.modules,
    backbone=type(backbone).__qualname__,
    spatial_layer=type(backbone.layer1[0].conv2).__qualname__,
    neck_convs=sorted({type(m.conv).__qualname__ for m in [*neck.lateral_convs, *neck.fpn_convs]}),
    shapes=[list(out.shape) for out in outputs],
    finite=all(bool(torch.isfinite(out).all()) for out in outputs))))
"""


def test_custom_imports_builds_sasa_modules_through_mmdet(tmp_path):
    """custom_imports=['sasa_det'] makes 'SASAResNet' and conv type 'SASA' buildable by mmdet."""
    config = tmp_path / 'sasa_body.py'
    config.write_text(CONFIG)
    script = tmp_path / 'build.py'
    script.write_text(textwrap.dedent(SCRIPT))

    run = subprocess.run([sys.executable, str(script), str(config)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result['imported']
    assert result['backbone'] == 'SASAResNet'
    assert result['spatial_layer'] == 'LocalSelfAttention2d'
    assert result['neck_convs'] == ['LocalSelfAttention2d']
    # Strides 4, 8, 16, 32 on a 64 x 64 image; FPN maps every level to out_channels.
    assert result['shapes'] == [[2, 16, 16, 16], [2, 16, 8, 8], [2, 16, 4, 4], [2, 16, 2, 2]]
    assert result['finite']


# Imports every OpenMMLab module sasa_det's import touches, records the identity of every
# attribute of those modules and of the classes they define, imports sasa_det (or runs the
# statement in argv[1]), and prints the attributes whose object changed.
SNAPSHOT = """
import importlib, inspect, json, sys

import mmcv.cnn, mmdet.datasets, mmdet.models, mmdet.registry, mmengine.fileio, mmengine.hooks
import mmengine.optim, mmengine.runner, mmengine.runner.checkpoint, timm, torch


def snapshot():
    seen = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(('mmengine', 'mmcv', 'mmdet', 'timm')):
            continue
        for attr, value in list(vars(module).items()):
            seen[f'{name}.{attr}'] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for member, obj in list(vars(value).items()):
                    seen[f'{name}.{attr}.{member}'] = id(obj)
    return seen


before = snapshot()
exec(sys.argv[1])
after = snapshot()
print(json.dumps(sorted(k for k in before if k in after and after[k] != before[k])))
"""


def changed_by(statement, tmp_path):
    """The mmengine/mmcv/mmdet/timm attributes whose object ``statement`` replaced."""
    script = tmp_path / 'snapshot.py'
    script.write_text(SNAPSHOT)
    run = subprocess.run([sys.executable, str(script), statement], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_sasa_det_replaces_no_openmmlab_function(tmp_path):
    """``import sasa_det`` registers its parts and leaves every function, method and class of
    mmengine, mmcv, mmdet and timm as it was (same objects before and after the import)."""
    assert changed_by('import sasa_det', tmp_path) == []


def test_control_a_patch_is_detected(tmp_path):
    """Control: replacing one mmengine method after the snapshot is reported by name."""
    patch = ('from mmengine.fileio.backends import local_backend\n'
             'local_backend.LocalBackend.put = lambda self, obj, path: None')
    assert changed_by(patch, tmp_path) == [
        'mmengine.fileio.backends.local_backend.LocalBackend.put']
