"""Inputs (issue 7, items 4 and 6): bad config values fail at build time naming the config key,
the value and what is allowed; inputs of any size run through the layer, backbone and detector."""
import pytest
import torch
from torch import nn

from sasa_det.layers import LocalSelfAttention2d

pytest.importorskip('mmengine')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import Registry  # noqa: E402

from sasa_det.reliability import ConfigValueError, explain_config_errors  # noqa: E402

# --- item 6: config errors name the key ----------------------------------------------------------

TOY_MODELS = Registry('reliability toy models')


@TOY_MODELS.register_module()
class ToyNet(nn.Module):
    """Builds its parts from sub-configs, as a detector does."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = TOY_MODELS.build(backbone), TOY_MODELS.build(head)


@TOY_MODELS.register_module()
class ToyAttentionStage(nn.Module):
    """Builds a SASA layer from an ``attention_cfg``, as SASAResNet does."""

    def __init__(self, channels=16, attention_cfg=None):
        super().__init__()
        self.layer = LocalSelfAttention2d(channels, channels, **(attention_cfg or {}))


def _toy_cfg(**attention_cfg):
    return Config(dict(model=dict(
        type='ToyNet',
        backbone=dict(type='ToyAttentionStage', channels=16,
                      attention_cfg=dict(dict(kernel_size=3, heads=4), **attention_cfg)),
        head=dict(type='ToyAttentionStage', channels=16, attention_cfg=dict(kernel_size=3)))))


@pytest.mark.parametrize('change, key, reason', [
    (dict(kernel_size=4), 'model.backbone.attention_cfg.kernel_size = 4',
     'kernel_size must be a positive odd integer, got 4'),
    (dict(heads=3), 'model.backbone.attention_cfg.heads = 3',
     r'out_channels \(16\) must be divisible by heads \(3\)'),
    (dict(positional_encoding='learned'),
     "model.backbone.attention_cfg.positional_encoding = 'learned'",
     r"positional_encoding must be one of \('relative', 'absolute', 'none'\), got 'learned'"),
])
def test_bad_value_is_reported_with_its_config_key(change, key, reason):
    """The ValueError raised deep inside the build starts with the full config key."""
    cfg = _toy_cfg(**change)
    with pytest.raises(ConfigValueError, match=rf'^{key.replace(".", r"[.]")}: {reason}') as info:
        with explain_config_errors(cfg):
            TOY_MODELS.build(cfg.model)
    assert info.value.key == key.split(' = ')[0]


def test_same_key_and_value_elsewhere_is_not_blamed():
    """heads=3 in the backbone (12 channels: fine) and in the head (16 channels: error): the
    component being built when the error came decides which key is named."""
    cfg = _toy_cfg(heads=3)
    cfg.model.backbone.channels = 12
    cfg.model.head.attention_cfg.heads = 3
    with pytest.raises(ConfigValueError, match=r'^model[.]head[.]attention_cfg[.]heads = 3: '):
        with explain_config_errors(cfg):
            TOY_MODELS.build(cfg.model)


def test_unlocatable_error_is_left_unchanged():
    with pytest.raises(ValueError, match='^something else$') as info:
        with explain_config_errors(_toy_cfg()):
            raise ValueError('something else')
    assert not isinstance(info.value, ConfigValueError)
