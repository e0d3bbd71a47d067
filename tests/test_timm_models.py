"""timm models: the classifier body is the mmdet backbone, and timm checkpoints load into it."""
import subprocess
import sys
import warnings

import pytest
import timm
import torch

import sasa_det  # noqa: F401  (registers the timm models)
from sasa_det.models.backbones import SASAResNet
from sasa_det.timm_models import SASAResNetClassifier, timm_to_mmdet_state_dict

NAMES = [f'sasa_resnet{depth}{suffix}' for depth in (26, 38, 50, 101)
         for suffix in ('', '_attnstem')]


@pytest.fixture(autouse=True)
def _quiet_checkpoint_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*use_reentrant.*')
        yield


def test_all_eight_models_are_registered_with_pretrained_cfgs():
    assert sorted(timm.list_models('sasa_resnet*')) == sorted(NAMES)
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224)
        assert cfg.classifier == 'fc'


@pytest.mark.parametrize('name, depth, stem', [('sasa_resnet50', 50, 'conv'),
                                               ('sasa_resnet26_attnstem', 26, 'attention')])
def test_create_model_gives_the_mmdet_backbone_plus_a_classifier(name, depth, stem):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000)
    assert isinstance(model.body, SASAResNet) and model.body.stem_type == stem
    assert model.body.depth == depth and model.pretrained_cfg['architecture'] == name
    with torch.device('meta'):  # structure only: skip allocating and initialising weights
        reference = SASAResNet(depth, stem=stem)
    assert {k: v.shape for k, v in model.body.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    model.eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, 2048, 2, 1)
        assert model.forward_head(features, pre_logits=True).shape == (1, 2048)
        assert model.forward_head(features).shape == (1, 1000)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7


def test_without_attention_the_classifier_is_timm_resnet50():
    """Conv-only sasa_resnet50 has resnet50's parameters (25.56M) and, with its weights, logits."""
    torch.manual_seed(0)
    ours = timm.create_model('sasa_resnet50', stage_with_attention=(False,) * 4).eval()
    theirs = timm.create_model('resnet50').eval()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 25_557_032
    state = {('body.' + k if not k.startswith('fc.') else k): v
             for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ['sasa_resnet26', 'sasa_resnet26_attnstem'])
def test_round_trip_timm_checkpoint_to_mmdet_backbone(tmp_path, name):
    """timm model -> checkpoint file as timm's train.py writes it -> SASAResNet through
    init_cfg (prefix 'body.') and through the converter -> identical features."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, base_channels=16,
                              attention_cfg=dict(type='SASA', heads=4))
    model.train()
    for _ in range(2):  # non-trivial BN running statistics
        model(torch.randn(2, 3, 40, 40))
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save({'epoch': 3, 'arch': name, 'state_dict': model.state_dict()}, path)

    stem = 'attention' if name.endswith('attnstem') else 'conv'
    attention = dict(type='SASA', heads=4)
    backbone = SASAResNet(26, stem=stem, base_channels=16, attention_cfg=attention,
                          init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='body.'))
    backbone.init_weights()
    converted = SASAResNet(26, stem=stem, base_channels=16, attention_cfg=attention)
    converted.load_state_dict(timm_to_mmdet_state_dict(torch.load(path)), strict=True)

    model.eval()
    backbone.eval()
    converted.eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        expected = model.forward_features(x)
        torch.testing.assert_close(backbone(x)[-1], expected)
        torch.testing.assert_close(converted(x)[-1], expected)


def test_converter_strips_ddp_prefix_and_head():
    state = {'module.body.conv1.weight': torch.ones(1), 'module.fc.weight': torch.ones(1),
             'body.layer1.0.bn1.bias': torch.zeros(1)}
    assert set(timm_to_mmdet_state_dict(state)) == {'conv1.weight', 'layer1.0.bn1.bias'}


def test_grad_checkpointing_switch_and_training_mode_bn():
    model = SASAResNetClassifier(26, num_classes=3, base_channels=16,
                                 attention_cfg=dict(type='SASA', heads=4))
    assert not model.body.norm_eval  # classification trains BN statistics
    model.set_grad_checkpointing(True)
    assert all(block.with_cp for stage in (model.body.layer1, model.body.layer4)
               for block in stage)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert model.body.layer1[0].bn1.training


def test_mmdet_backbone_works_without_timm():
    """timm is only needed for the timm models: with it unimportable, sasa_det still imports and
    SASAResNet builds and runs."""
    code = ("import sys; sys.modules['timm'] = None\n"
            "import torch, sasa_det, sasa_det.timm_models\n"
            "from sasa_det.models.backbones import SASAResNet\n"
            "assert sasa_det.timm_models.timm is None  # the guard, not an error\n"
            "out = SASAResNet(26, base_channels=8, attention_cfg=dict(type='SASA', heads=4))"
            ".eval()(torch.randn(1, 3, 16, 16))\n"
            "assert out[-1].shape == (1, 256, 1, 1)\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
