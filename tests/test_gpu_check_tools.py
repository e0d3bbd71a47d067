"""tools/gpu_check.sh and tools/backbone_benchmark.py, the GPU session's tools, on CPU: the
standalone ResNet-50 is torchvision's backbone, the SASA one keeps its shapes, bad arguments
are named."""
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import backbone_benchmark  # noqa: E402


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_standalone_conv_resnet50_has_torchvisions_backbone_parameter_count():
    reference = torchvision.models.resnet50()
    expected = _params(reference) - _params(reference.fc)
    assert _params(backbone_benchmark.standalone_resnet50(attention=False)) == expected


def test_standalone_sasa_resnet50_keeps_the_conv_backbones_output_shape():
    x = torch.randn(1, 3, 64, 96)
    conv = backbone_benchmark.standalone_resnet50(attention=False).eval()
    sasa = backbone_benchmark.standalone_resnet50(attention=True).eval()
    with torch.no_grad():
        assert sasa(x).shape == conv(x).shape == (1, 2048, 2, 3)


def test_gpu_check_names_an_unknown_argument_and_the_allowed_ones():
    result = subprocess.run(['bash', str(ROOT / 'tools' / 'gpu_check.sh'), '--fast'],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown argument '--fast'" in result.stderr and '--dry-run' in result.stderr
