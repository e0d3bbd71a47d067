"""tools/analyze.py: result files in mmengine's formats, the table, the PNG, clear errors."""
import importlib.util
import json
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = [ROOT / 'configs/demo/retinanet_r26w16_demo.py',
                ROOT / 'configs/demo/retinanet_sasa_r26w16_demo.py']


def _load_analyze():
    spec = importlib.util.spec_from_file_location('analyze', ROOT / 'tools' / 'analyze.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


analyze = _load_analyze()

# What mmengine writes after `tools/test.py` with mmdet's CocoMetric (WORK_DIR/<ts>/<ts>.json).
TEST_RESULT = {'coco/bbox_mAP': 0.412, 'coco/bbox_mAP_50': 0.701, 'coco/bbox_mAP_75': 0.43,
               'coco/bbox_mAP_s': 0.2, 'coco/bbox_mAP_m': 0.5, 'coco/bbox_mAP_l': 0.61,
               'data_time': 0.01, 'time': 0.2}
# What training with validation writes (WORK_DIR/<ts>/vis_data/scalars.json): json lines.
SCALARS = [dict(lr=0.01, loss=1.2, step=10),
           {'coco/bbox_mAP': 0.1, 'coco/bbox_mAP_50': 0.2, 'step': 1},
           dict(lr=0.001, loss=0.5, step=20),
           {'coco/bbox_mAP': 0.3, 'coco/bbox_mAP_50': 0.5, 'coco/bbox_mAP_75': 0.31,
            'coco/bbox_mAP_s': 0.1, 'coco/bbox_mAP_m': 0.35, 'coco/bbox_mAP_l': 0.4, 'step': 2}]


def _png_size(path: Path) -> tuple:
    """(width, height) from a PNG's IHDR chunk; fails unless the file starts as a PNG."""
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
    assert data[12:16] == b'IHDR'
    return struct.unpack('>II', data[16:24])


def _work_dir(root: Path, name: str, test_result=None, scalars=None) -> Path:
    work_dir = root / name
    if scalars is not None:
        run = work_dir / '20260101_000000' / 'vis_data'
        run.mkdir(parents=True)
        (run / 'scalars.json').write_text('\n'.join(json.dumps(r) for r in scalars) + '\n')
    if test_result is not None:
        run = work_dir / '20260101_010000'
        run.mkdir(parents=True)
        (run / '20260101_010000.json').write_text(json.dumps(test_result))
    return work_dir


def test_work_dir_prefers_the_test_run(tmp_path):
    """Property: a work dir with both a training log and a test json reports the test json."""
    work_dir = _work_dir(tmp_path, 'm', test_result=TEST_RESULT, scalars=SCALARS)
    metrics, source = analyze.load_results(work_dir)
    assert source.name == '20260101_010000.json'
    assert metrics['mAP'] == 0.412 and metrics['APl'] == 0.61


def test_scalars_json_gives_the_last_evaluation(tmp_path):
    """Property: from training's json lines the last record with bbox mAP is used."""
    work_dir = _work_dir(tmp_path, 'm', scalars=SCALARS)
    metrics, source = analyze.load_results(work_dir)
    assert source.name == 'scalars.json'
    assert metrics == dict(mAP=0.3, AP50=0.5, AP75=0.31, APs=0.1, APm=0.35, APl=0.4)


@pytest.mark.parametrize('content, message', [
    (None, 'does not exist'),
    ('{"coco/bbox_mAP": 0.3', 'not valid json'),
    ('{"loss": 1.0}\n{"lr": 0.1}\n', "no 'coco/bbox_mAP'"),
    ('[1, 2]', "no 'coco/bbox_mAP'"),
])
def test_bad_result_files_are_named_in_the_error(tmp_path, content, message):
    """Property: a missing, malformed or metric-less result file fails with its path."""
    path = tmp_path / 'results.json'
    if content is not None:
        path.write_text(content)
    with pytest.raises(analyze.ResultFileError, match=message) as err:
        analyze.load_results(path)
    assert str(path) in str(err.value)


def test_work_dir_without_results_is_named(tmp_path):
    """Property: a work dir with no evaluation (or none at all) fails naming the directory."""
    for work_dir in (_work_dir(tmp_path, 'empty', scalars=SCALARS[:1]), tmp_path / 'missing'):
        with pytest.raises(analyze.ResultFileError) as err:
            analyze.load_results(work_dir)
        assert str(work_dir) in str(err.value)


def test_table_and_png_from_rows(tmp_path):
    """Property: the table has one row per model with the counts and metrics, and the plot is
    a PNG of the size asked for (with and without the paper's panel)."""
    rows = [dict(model='conv', input_size=(160, 160), params=2_500_000, macs=1_000_000_000,
                 flops=2_000_000_000, **dict(mAP=0.412, AP50=0.7, AP75=0.43, APs=0.2, APm=0.5,
                                             APl=float('nan'))),
            dict(model='sasa', input_size=(160, 160), params=1_700_000, macs=600_000_000,
                 flops=1_200_000_000, **dict(mAP=0.395, AP50=0.68, AP75=0.41, APs=0.18,
                                             APm=0.48, APl=0.6))]
    table = analyze.format_table(rows, with_results=True).splitlines()
    assert table[0].split('|')[1:-1] == [' model ', ' input ', ' params (M) ', ' GMACs ',
                                        ' GFLOPs ', ' mAP ', ' AP50 ', ' AP75 ', ' APs ',
                                        ' APm ', ' APl ']
    assert [c.strip() for c in table[2].split('|')[1:-1]] == [
        'conv', '160x160', '2.50', '1.000', '2.000', '0.412', '0.700', '0.430', '0.200',
        '0.500', 'n/a']
    assert len(table) == 4
    assert _png_size(analyze.save_plot(rows, tmp_path / 'a.png', paper=False)) == (650, 480)
    assert _png_size(analyze.save_plot(rows, tmp_path / 'b.png', paper=True)) == (1200, 480)


def test_main_end_to_end_on_demo_configs(tmp_path, capsys):
    """Property: analyze.py builds both demo detectors, counts them (SASA has fewer params),
    reads their work dirs, prints the table and writes the PNG."""
    conv = _work_dir(tmp_path, 'conv', test_result=TEST_RESULT)
    sasa = _work_dir(tmp_path, 'sasa', scalars=SCALARS)
    plot = tmp_path / 'plot.png'
    rows = analyze.main([*map(str, DEMO_CONFIGS), '--results', str(conv), str(sasa),
                         '--names', 'conv', 'sasa', '--input-size', '64', '--plot', str(plot),
                         '--paper', '--table', str(tmp_path / 'table.md')])
    out = capsys.readouterr().out
    assert '| conv | 64x64 |' in out and '| sasa | 64x64 |' in out
    assert '0.412' in out and '0.300' in out
    assert rows[0]['flops'] == 2 * rows[0]['macs'] > 0
    assert rows[1]['params'] < rows[0]['params']
    assert _png_size(plot) == (1200, 480)
    assert (tmp_path / 'table.md').read_text().count('\n') == 4


def test_complexity_only_needs_no_results(tmp_path, capsys):
    """Property: --complexity-only prints params/FLOPs columns only and reads no result file."""
    analyze.main([*map(str, DEMO_CONFIGS), '--complexity-only', '--input-size', '64',
                  '--results', str(tmp_path / 'nope'), str(tmp_path / 'nope')])
    out = capsys.readouterr().out
    assert '| GFLOPs |' in out and 'mAP' not in out.split('GFLOPs |')[1]


def test_main_names_the_missing_result_file(tmp_path, capsys):
    """Property: the command line tool exits with an error that names the bad file."""
    missing = tmp_path / 'nowhere.json'
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(['configs/whatever.py', '--results', str(missing)])
    assert str(missing) in str(exit_info.value.code)
