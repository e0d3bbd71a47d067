"""The README's "Using it in your own mmdet project" config, taken literally, trains in mmdet.

The test reads the python block under that heading from README.md, so an edit that breaks the
snippet users copy fails here. The block names mmdet's own RetinaNet config as ``_base_``; the
only changes made to it are the test-size overrides of :func:`shrink_for_a_cpu_test` (a tiny
COCO-format set, 64 px, one epoch of two iterations), applied after mmengine has loaded the
snippet unchanged. mmengine's Runner builds it and trains, checkpoints and validates; mmdet's own
``tools/train.py`` (shipped in its package) runs the same config file too.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from coco_fixture import make_coco, use_tiny_coco

ROOT = Path(__file__).resolve().parents[1]
HEADING = '## Using it in your own mmdet project'
MMDET_BASE = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
NUM_IMAGES, BATCH_SIZE = 4, 2  # one epoch = 2 training iterations


def readme_snippet() -> str:
    """The first ```python block of the README section ``HEADING``."""
    readme = (ROOT / 'README.md').read_text()
    assert HEADING in readme, f'README.md has no section {HEADING!r}'
    section = readme.split(HEADING, 1)[1].split('\n## ', 1)[0]
    match = re.search(r'^```python\n(.*?)^```', section, re.S | re.M)
    assert match, f'no ```python block under {HEADING!r} in README.md'
    return match.group(1)


def shrink_for_a_cpu_test(cfg: Config, data_root: Path, work_dir: Path) -> Config:
    """Test-size overrides only: data, image size, length, work dir. Model and hooks stay."""
    use_tiny_coco(cfg, data_root, image_size=64, batch_size=BATCH_SIZE, work_dir=work_dir)
    # mmdet's base names its visualizer 'visualizer'; a process-wide instance of that name
    # may exist from another test, with another save dir.
    cfg.visualizer.name = f'readme-snippet-{work_dir.parent.name}'
    return cfg


def test_readme_snippet_is_a_complete_config_on_mmdets_retinanet():
    snippet = readme_snippet()
    assert f"_base_ = '{MMDET_BASE}'" in snippet
    assert "custom_imports = dict(imports=['sasa_det']" in snippet


@pytest.fixture(scope='module')
def trained_runner(tmp_path_factory):
    """The README snippet, loaded by mmengine from a file, shrunk, built and trained."""
    from mmengine.runner import Runner

    tmp = tmp_path_factory.mktemp('readme_snippet')
    config = tmp / 'sasa_retinanet.py'
    config.write_text(readme_snippet())
    make_coco(tmp / 'coco', num_images=NUM_IMAGES, image_size=64)
    cfg = shrink_for_a_cpu_test(Config.fromfile(str(config)), tmp / 'coco', tmp / 'work')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64 px: one thread is as fast, and spares a small shared machine
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    finally:
        torch.set_num_threads(threads)
    return runner, tmp / 'work'


def test_readme_snippet_builds_the_sasa_backbone_neck_and_head(trained_runner):
    from sasa_det.layers import LocalSelfAttention2d

    runner, _ = trained_runner
    model = runner.model
    assert [type(m).__name__ for m in (model.backbone, model.neck, model.bbox_head)] == \
        ['SASAResNet', 'SASAFPN', 'SASARetinaHead']
    for part in (model.backbone, model.neck, model.bbox_head):
        assert any(isinstance(m, LocalSelfAttention2d) for m in part.modules())
    # From scratch: nothing frozen, so stage 1's attention layers train too.
    assert all(p.requires_grad for p in model.parameters())


def test_readme_snippet_uses_the_reliability_parts_it_names(trained_runner):
    runner, _ = trained_runner
    hooks = {type(h).__name__ for h in runner.hooks}
    assert {'AtomicCheckpointHook', 'NonFiniteLossHook'} <= hooks
    assert type(runner.train_dataloader.dataset).__name__ == 'CheckedCocoDataset'


def test_readme_snippet_trains_checkpoints_and_validates(trained_runner):
    runner, work_dir = trained_runner
    assert runner.iter == NUM_IMAGES // BATCH_SIZE
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.as_tensor(loss))
    checkpoint = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == NUM_IMAGES // BATCH_SIZE
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'coco/bbox_mAP' in log  # mmdet's CocoMetric ran on the validation set


def test_mmdets_own_train_script_trains_and_validates_the_readme_snippet(tmp_path):
    """mmdet's packaged tools/train.py, which knows nothing of sasa_det but custom_imports."""
    import mmdet
    train_script = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    assert train_script.is_file(), train_script
    snippet = tmp_path / 'sasa_retinanet.py'
    snippet.write_text(readme_snippet())
    make_coco(tmp_path / 'coco', num_images=NUM_IMAGES, image_size=64)
    cfg = shrink_for_a_cpu_test(Config.fromfile(str(snippet)), tmp_path / 'coco',
                                tmp_path / 'work')
    config = tmp_path / 'sasa_retinanet_small.py'
    cfg.dump(str(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, str(train_script), str(config)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
    log = next((tmp_path / 'work').glob('*/*.log')).read_text()
    assert 'coco/bbox_mAP' in log
