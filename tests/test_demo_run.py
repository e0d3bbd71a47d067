"""tools/demo.sh end to end in miniature: data, train, test and analyze for both demo models.

The real demo trains for minutes; here a handful of images and two iterations per model check
that every step runs and hands its output to the next (checkpoints, CocoMetric results, the
table and the plot). About a minute on a 2-core CPU.
"""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_runs_end_to_end(tmp_path):
    """Property: `bash tools/demo.sh` trains and evaluates both demo models and ends with the
    analysis table (a row per model with mAP) and a PNG plot, all under its work dir."""
    work, data = tmp_path / 'work', tmp_path / 'data'
    env = dict(
        os.environ,
        SASA_DEMO_SKIP_SETUP='1',
        SASA_DEMO_WORK_DIR=str(work),
        SASA_DEMO_DATA=str(data),
        SASA_DEMO_DATA_ARGS='--num-train 4 --num-val 3',
        SASA_DEMO_CFG_OPTIONS=('train_cfg.max_iters=2 train_dataloader.batch_size=2 '
                               'train_dataloader.num_workers=0 '
                               'train_dataloader.persistent_workers=False '
                               'test_dataloader.num_workers=0 '
                               'test_dataloader.persistent_workers=False '
                               'default_hooks.checkpoint.interval=2 '
                               'default_hooks.logger.interval=1 '
                               # two iterations score every box below the 0.05 default: keep
                               # them all, so that CocoMetric has detections to evaluate
                               'model.test_cfg.score_thr=0.0'),
    )
    proc = subprocess.run(['bash', str(ROOT / 'tools' / 'demo.sh')], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for model in ('retinanet_r26w16_demo', 'retinanet_sasa_r26w16_demo'):
        assert (work / model / 'last_checkpoint').is_file(), output[-3000:]
    table = (work / 'table.md').read_text()
    assert table.count('\n') == 4 and '| mAP |' in table
    assert (work / 'map_vs_flops.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'finished in' in proc.stdout and str(work / 'map_vs_flops.png') in proc.stdout
