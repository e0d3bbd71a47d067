"""Attention diagnostics (statistics, capture, tools/attention_stats.py, tools/visualize_attention.py)
and the seed sweep's table (tools/seed_sweep.py)."""
import csv
import importlib.util
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from sasa_det.analysis.attention_maps import (capture_attention, layer_statistics,
                                              window_statistics)
from sasa_det.datasets import make_demo_dataset
from sasa_det.layers import LocalSelfAttention2d

ROOT = Path(__file__).resolve().parents[1]
SASA_DEMO = ROOT / 'configs/demo/retinanet_sasa_r26w16_demo.py'


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- statistics

def test_uniform_weights_have_entropy_one_and_the_whole_window_as_effective_window():
    k = 5
    weights = torch.full((1, 2, 2, 3, k * k), 1.0 / (k * k))
    valid = torch.ones(2, 2, 1, k * k, dtype=torch.bool)
    stats = window_statistics(weights, valid, torch.zeros_like(weights), k)
    assert stats['entropy'] == pytest.approx(1.0)
    assert stats['effective_window'] == pytest.approx(k * k)
    assert stats['centre_mass'] == pytest.approx(9 / 25)
    assert stats['max_abs_logit'] == 0.0


def test_one_hot_weights_have_entropy_zero_and_masked_keys_do_not_count():
    k = 3
    weights = torch.zeros(1, 1, 1, 1, k * k)
    weights[..., 4] = 1.0  # the centre
    logits = torch.full_like(weights, -2.0)
    logits[..., 4] = 7.0
    logits[..., 0] = float('-inf')
    valid = torch.ones(1, 1, 1, k * k, dtype=torch.bool)
    valid[..., 0] = False  # a key outside the image: its -inf logit is not the largest |logit|
    stats = window_statistics(weights, valid, logits, k)
    assert stats['entropy'] == pytest.approx(0.0)
    assert stats['effective_window'] == pytest.approx(1.0)
    assert stats['centre_mass'] == pytest.approx(1.0)
    assert stats['max_abs_logit'] == 7.0


def test_entropy_is_normalised_by_the_number_of_keys_inside_the_image():
    """A corner query of a 3 x 3 window sees 4 keys: uniform over them is entropy 1."""
    weights = torch.zeros(1, 1, 1, 1, 9)
    valid = torch.zeros(1, 1, 1, 9, dtype=torch.bool)
    valid[..., [4, 5, 7, 8]] = True
    weights[..., [4, 5, 7, 8]] = 0.25
    stats = window_statistics(weights, valid, torch.zeros_like(weights), 3)
    assert stats['entropy'] == pytest.approx(1.0)
    assert stats['effective_window'] == pytest.approx(4.0)


# -------------------------------------------------------------------------------- capture

def _two_layer_model():
    torch.manual_seed(0)
    return nn.Sequential(LocalSelfAttention2d(4, 8, kernel_size=3, heads=2),
                         LocalSelfAttention2d(8, 8, kernel_size=5, heads=4, stride=2))


def test_capture_records_every_call_of_every_layer_and_then_removes_its_hooks():
    model = _two_layer_model()
    x = torch.randn(2, 4, 6, 7)
    with capture_attention(model) as captured:
        model(x)
        model(x)
    assert sorted(captured) == ['0', '1'] and all(len(c) == 2 for c in captured.values())
    first = captured['0'][0]
    assert first['weights'].shape == (2, 6, 7, 2, 9) and first['input_size'] == (6, 7)
    torch.testing.assert_close(first['weights'].sum(-1), torch.ones(2, 6, 7, 2))
    assert captured['1'][0]['weights'].shape == (2, 6, 7, 4, 25)  # stride-1 attention, then pool
    with capture_attention(model) as again:
        pass
    model(x)
    assert all(len(c) == 0 for c in again.values())  # hooks gone after the block
    stats = layer_statistics(captured['1'])
    assert 0.0 < stats['entropy'] <= 1.0 and 1.0 <= stats['effective_window'] <= 25.0


def test_capture_names_the_layers_it_has_when_asked_for_an_unknown_one():
    with pytest.raises(ValueError, match=r"no SASA layer named \['2'\].*\['0', '1'\]"):
        with capture_attention(_two_layer_model(), ['2']):
            pass


# -------------------------------------------------------------------------------- tools

@pytest.fixture(scope='module')
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_dataset(root, num_train=2, num_val=3, image_size=64, seed=1)
    return root


def _data_options(root: Path) -> list:
    return [f'test_dataloader.dataset.data_root={root}/']


def test_attention_stats_reports_every_sasa_layer_of_the_demo_model(demo_data, tmp_path,
                                                                    one_thread):
    out = tmp_path / 'stats.csv'
    stats = _tool('attention_stats').main([str(SASA_DEMO), '--num-images', '2', '--out', str(out),
                                           '--cfg-options', *_data_options(demo_data)])
    # 8 backbone blocks, 5 FPN output layers, 2 x 2 head layers.
    assert len(stats) == 17
    assert {name.split('.')[0] for name in stats} == {'backbone', 'neck', 'bbox_head'}
    for row in stats.values():
        assert 0.0 <= row['entropy'] <= 1.0 and 0.0 <= row['centre_mass'] <= 1.0 + 1e-6  # float32 sums
        assert math.isfinite(row['max_abs_logit'])
    with open(out, newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['layer'] for r in rows] == list(stats)


def test_visualize_attention_draws_one_row_per_point_and_one_panel_per_head(demo_data, tmp_path,
                                                                           one_thread):
    out = tmp_path / 'attention.png'
    image = sorted((demo_data / 'val').iterdir())[0]
    _tool('visualize_attention').main([str(SASA_DEMO), str(image), '--layer',
                                       'backbone.layer3.0.conv2', '--points', '10,10', '40,50',
                                       '--out', str(out)])
    data = out.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    width, height = struct.unpack('>II', data[16:24])
    assert (width, height) == (1600, 400)  # 8 heads x 2 in, 2 points x 2 in, 100 dpi


def test_visualize_attention_refuses_a_point_outside_the_image(demo_data, tmp_path, one_thread):
    image = sorted((demo_data / 'val').iterdir())[0]
    with pytest.raises(ValueError, match=r'point \(500.0, 10.0\) is outside the image'):
        _tool('visualize_attention').main([str(SASA_DEMO), str(image), '--layer',
                                           'backbone.layer3.0.conv2', '--points', '500,10',
                                           '--out', str(tmp_path / 'a.png')])


# ---------------------------------------------------------------------------- seed sweep

def _test_result(directory: Path, mAP: float, ap50: float) -> None:
    run = directory / '20260101_000000'
    run.mkdir(parents=True)
    (run / '20260101_000000.json').write_text(json.dumps(
        {'coco/bbox_mAP': mAP, 'coco/bbox_mAP_50': ap50}))


def test_seed_sweep_tabulates_mean_std_and_range_over_the_seeds_found(tmp_path, capsys):
    work = tmp_path / 'sweep'
    for seed, mAP in enumerate([0.5, 0.6, 0.7]):
        _test_result(work / SASA_DEMO.stem / f'seed{seed}', mAP, mAP + 0.2)
    rows = _tool('seed_sweep').main([str(SASA_DEMO), '--seeds', '0', '1', '2', '3',
                                     '--work-dir', str(work), '--no-run',
                                     '--table', str(tmp_path / 't.md')])
    assert rows[0]['seeds'] == [0, 1, 2]  # seed 3 has no result yet
    assert rows[0]['mAP'] == '0.600 +- 0.100 (0.500-0.700)'
    assert rows[0]['AP50'] == '0.800 +- 0.100 (0.700-0.900)'
    assert rows[0]['mAP per seed'] == '0.500, 0.600, 0.700'
    assert '| retinanet_sasa_r26w16_demo | 128x128 |' in capsys.readouterr().out
    assert (tmp_path / 't.md').read_text().count('\n') == 3


def test_seed_sweep_counts_complexity_with_the_cfg_options_the_runs_use(tmp_path):
    _test_result(tmp_path / SASA_DEMO.stem / 'seed0', 0.5, 0.7)
    plain, = _tool('seed_sweep').main([str(SASA_DEMO), '--seeds', '0', '--no-run',
                                       '--work-dir', str(tmp_path)])
    larger, = _tool('seed_sweep').main([
        str(SASA_DEMO), '--seeds', '0', '--no-run', '--work-dir', str(tmp_path),
        '--cfg-options', 'test_dataloader.dataset.pipeline.1.scale=(160,160)'])
    assert plain['input_size'] == (128, 128) and larger['input_size'] == (160, 160)
    assert larger['flops'] > 1.5 * plain['flops']  # (160 / 128) ** 2 = 1.56 times the pixels
    assert larger['mAP'] == plain['mAP'] == '0.500'
    given, = _tool('seed_sweep').main([str(SASA_DEMO), '--seeds', '0', '--no-run', '--work-dir',
                                       str(tmp_path), '--input-size', '96'])
    assert given['input_size'] == (96, 96)


@pytest.mark.parametrize('argv, message', [
    (['--seeds', '0', '0'], 'distinct non-negative'),
    (['--names', 'a', 'b'], '--names has 2 values for 1 configs'),
    (['--input-size', '1', '2', '3'], '--input-size takes H or H W'),
])
def test_seed_sweep_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        _tool('seed_sweep').main([str(SASA_DEMO), *argv, '--no-run'])
    assert message in capsys.readouterr().err
