"""The demo's fair protocol: the conv and SASA demo models (and their ablations) share one recipe,
so that a difference in mAP is the attention's, not the optimiser's, the schedule's or the norm's."""
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'configs' / 'demo'
MODELS = ['retinanet_r26w16_demo.py', 'retinanet_sasa_r26w16_demo.py',
          *(f'ablations/{p.name}' for p in sorted((DEMO / 'ablations').glob('*.py')))]
SHARED = ('optim_wrapper', 'param_scheduler', 'train_cfg', 'train_dataloader', 'test_dataloader',
          'test_evaluator', 'randomness')


def _cfg(name: str) -> Config:
    return Config.fromfile(str(DEMO / name))


@pytest.mark.parametrize('name', MODELS[1:])
def test_every_demo_model_trains_with_the_conv_models_recipe_and_data(name):
    conv, other = _cfg(MODELS[0]), _cfg(name)
    for key in SHARED:
        assert other[key] == conv[key], key
    for part in ('neck', 'bbox_head'):
        assert other.model[part].norm_cfg == conv.model[part].norm_cfg == dict(
            type='GN', num_groups=8, requires_grad=True)
    assert other.model.bbox_head.feat_channels == conv.model.bbox_head.feat_channels
    assert other.model.backbone.depth == conv.model.backbone.depth == 26


def test_the_paper_attention_ablation_differs_from_the_sasa_demo_only_in_its_logits():
    sasa, dot = _cfg(MODELS[1]).model, _cfg('ablations/retinanet_sasa-dot_r26w16_demo.py').model
    assert sasa.backbone.attention_cfg == dict(dot.backbone.attention_cfg, similarity='cosine',
                                               position_bias=True)
    for part in ('neck', 'bbox_head'):
        paper = dict(dot[part].attention_cfg)
        assert paper.pop('scale') == pytest.approx(8 ** -0.5)
        assert sasa[part].attention_cfg == dict(paper, similarity='cosine', position_bias=True)


@pytest.mark.parametrize('name', ['retinanet_r26w16_coco128.py',
                                  'retinanet_sasa_r26w16_coco128.py'])
def test_coco128_configs_change_only_the_data_and_the_number_of_classes(name, monkeypatch):
    monkeypatch.setenv('COCO128_ROOT', '/data/coco128/')
    coco128, demo = _cfg(name), _cfg(name.replace('coco128', 'demo'))
    assert coco128.test_evaluator.ann_file == '/data/coco128/annotations/instances_val2017.json'
    assert coco128.model.bbox_head.pop('num_classes') == 80
    assert demo.model.bbox_head.pop('num_classes') == 4
    assert coco128.model == demo.model
    assert coco128.optim_wrapper == demo.optim_wrapper


PAPER_LAYER = {f'model.{part}.attention_cfg.{key}': value
               for part in ('backbone', 'neck', 'bbox_head')
               for key, value in (('similarity', 'dot'), ('position_bias', False))}


def test_the_coco_headline_configs_paper_layer_is_one_cfg_options_away():
    """README's override turns every SASA layer of the headline COCO model into the paper's."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as DETECTORS

    import sasa_det  # noqa: F401
    from sasa_det.layers import LocalSelfAttention2d

    cfg = Config.fromfile(str(ROOT / 'configs' / 'retinanet_sasa_r26.py'))
    init_default_scope('mmdet')
    ours = [m for m in DETECTORS.build(cfg.model).modules()
            if isinstance(m, LocalSelfAttention2d)]
    assert ours and all(m.similarity == 'cosine' and m.position_bias is not None for m in ours)
    cfg.merge_from_dict(PAPER_LAYER)
    paper = [m for m in DETECTORS.build(cfg.model).modules()
             if isinstance(m, LocalSelfAttention2d)]
    assert len(paper) == len(ours)
    assert all(m.similarity == 'dot' and m.position_bias is None and m.scale is None
               and m.kernel_size == 7 and m.heads == 8 for m in paper)
