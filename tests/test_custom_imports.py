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
# mmdet's own FPN, every ConvModule of it built as conv type 'SASA' (kernel 1 laterals, 3x3 outputs).
model = dict(
    type='FPN',
    in_channels=[16, 32],
    out_channels=16,
    num_outs=2,
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
fpn = MODELS.build(cfg.model).eval()
inputs = (torch.randn(2, 16, 12, 10), torch.randn(2, 32, 6, 5))  # C_i at strides s, 2s
with torch.no_grad():
    outputs = fpn(inputs)
print(json.dumps(dict(
    imported='sasa_det' in sys.modules,
    conv_types=sorted({type(m.conv).__qualname__ for m in [*fpn.lateral_convs, *fpn.fpn_convs]}),
    shapes=[list(out.shape) for out in outputs],
    finite=all(bool(torch.isfinite(out).all()) for out in outputs))))
"""


def test_custom_imports_registers_sasa_for_mmdet(tmp_path):
    """custom_imports=['sasa_det'] makes conv type 'SASA' buildable inside mmdet's FPN."""
    config = tmp_path / 'fpn_sasa.py'
    config.write_text(CONFIG)
    script = tmp_path / 'build.py'
    script.write_text(textwrap.dedent(SCRIPT))

    run = subprocess.run([sys.executable, str(script), str(config)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result['imported']
    assert result['conv_types'] == ['LocalSelfAttention2d']
    # FPN keeps each level's resolution and maps every level to out_channels.
    assert result['shapes'] == [[2, 16, 12, 10], [2, 16, 6, 5]]
    assert result['finite']
