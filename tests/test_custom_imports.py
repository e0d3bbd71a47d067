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
