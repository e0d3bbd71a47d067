"""tools/train.py, tools/test.py and tools/dist_train.sh end to end, on CPU, as a user runs them.

Each run is a subprocess on the headline model (attention backbone, FPN and head) at R-26 and
64 px, on a COCO-format set made in tmp_path, written out as one flat config file: the 1x config
for single-process runs, the paper's multi-GPU recipe (SyncBN) for the distributed one.
"""
import json
import math
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from coco_fixture import make_coco, use_tiny_coco

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CONFIG = ROOT / 'configs' / 'retinanet_sasa_r50.py'
PAPER_CONFIG = ROOT / 'configs' / 'retinanet_sasa_r50_paper-150e_coco.py'

# Saves each rank's parameters at the start and end of training; imported by the trained
# process through custom_imports, so it has to be a module on disk.
RANK_PROBE = '''
import torch
from mmengine.hooks import Hook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    def _save(self, runner, tag):
        model = getattr(runner.model, 'module', runner.model)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save(dict(rank=runner.rank, world_size=runner.world_size, iter=runner.iter,
                        params=params), f'{runner.work_dir}/{tag}_rank{runner.rank}.pth')

    def before_train(self, runner):
        self._save(runner, 'start')

    def after_train(self, runner):
        self._save(runner, 'end')
'''


def write_config(tmp: Path, data_root: Path, num_images: int, batch_size: int,
                 probe: bool = False, config: Path = CONFIG) -> Path:
    cfg = use_tiny_coco(Config.fromfile(str(config)), data_root, image_size=64,
                        batch_size=batch_size)
    cfg.model.backbone.depth = 26  # the smallest SASA ResNet: same modules, less CPU time
    cfg.train_dataloader.batch_sampler = None  # plain batches: 1 image per rank is one batch
    if probe:
        (tmp / 'rank_probe.py').write_text(RANK_PROBE)
        cfg.custom_imports.imports = ['sasa_det', 'rank_probe']
        cfg.custom_hooks = [dict(type='RankProbeHook')]
    path = tmp / f'config_{num_images}x{batch_size}{"_probe" if probe else ""}.py'
    cfg.dump(str(path))
    return path


def run(args, tmp: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    # One intra-op thread per process: OpenMP threads spin-waiting for the few cores of a CI
    # machine (shared by the two ranks) cost more than they bring at 64 px.
    env = dict(os.environ, PYTHONPATH=f'{ROOT}:{tmp}', PYTHON=PYTHON, OMP_NUM_THREADS='1',
               **env)
    result = subprocess.run([str(a) for a in args], cwd=tmp, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One epoch of tools/train.py (2 images, batch 2: one iteration), then validation."""
    tmp = tmp_path_factory.mktemp('train')
    make_coco(tmp / 'coco', num_images=2, image_size=64)
    config = write_config(tmp, tmp / 'coco', num_images=2, batch_size=2)
    work_dir = tmp / 'work'
    run([PYTHON, ROOT / 'tools' / 'train.py', config, '--work-dir', work_dir], tmp)
    return tmp, config, work_dir


def test_train_writes_a_checkpoint_after_one_iteration_and_validates(trained):
    _, _, work_dir = trained
    checkpoint = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert checkpoint['meta']['epoch'] == 1 and checkpoint['meta']['iter'] == 1
    assert any(k.startswith('bbox_head.cls_convs') for k in checkpoint['state_dict'])
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'coco/bbox_mAP' in log  # mmdet's CocoMetric ran on the validation set


def test_resume_continues_from_the_saved_iteration(trained):
    """--resume (latest checkpoint) with max_epochs=2 trains epoch 2 only: iter 1 -> 2."""
    tmp, config, work_dir = trained
    first = (work_dir / 'epoch_1.pth').read_bytes()
    result = run([PYTHON, ROOT / 'tools' / 'train.py', config, '--work-dir', work_dir,
                  '--resume', '--cfg-options', 'train_cfg.max_epochs=2'], tmp)
    assert 'resumed epoch: 1, iter: 1' in result.stdout + result.stderr
    assert (work_dir / 'epoch_1.pth').read_bytes() == first  # epoch 1 was not trained again
    checkpoint = torch.load(work_dir / 'epoch_2.pth', map_location='cpu', weights_only=False)
    assert checkpoint['meta']['epoch'] == 2 and checkpoint['meta']['iter'] == 2


def test_test_tool_evaluates_a_checkpoint_and_dumps_predictions(trained):
    tmp, config, work_dir = trained
    out = tmp / 'predictions.pkl'
    run([PYTHON, ROOT / 'tools' / 'test.py', config, work_dir / 'epoch_1.pth',
         '--work-dir', tmp / 'test', '--out', out], tmp)
    metrics = json.loads(next((tmp / 'test').glob('*/*.json')).read_text())
    assert math.isfinite(metrics['coco/bbox_mAP'])
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2 and 'pred_instances' in predictions[0]


def test_dist_train_two_cpu_ranks_hold_identical_weights(tmp_path):
    """tools/dist_train.sh CONFIG 2 over torchrun and gloo: 4 images, 1 per rank and iteration,
    2 iterations. DDP averages gradients, so both ranks end with the same parameters, which
    differ from the start (they trained) although each rank saw different images. The paper's
    recipe asks for SyncBN, which needs CUDA: on CPU the run warns and uses per-process BN."""
    make_coco(tmp_path / 'coco', num_images=4, image_size=64)
    config = write_config(tmp_path, tmp_path / 'coco', num_images=4, batch_size=1, probe=True,
                          config=PAPER_CONFIG)
    work_dir = tmp_path / 'work'
    result = run(['bash', ROOT / 'tools' / 'dist_train.sh', config, 2, '--work-dir', work_dir],
                 tmp_path, PORT=str(free_port()))
    assert 'SyncBN needs CUDA' in result.stderr
    end = [torch.load(work_dir / f'end_rank{r}.pth', weights_only=False) for r in (0, 1)]
    start = torch.load(work_dir / 'start_rank0.pth', weights_only=False)
    assert [e['world_size'] for e in end] == [2, 2] and [e['iter'] for e in end] == [2, 2]
    for name, value in end[0]['params'].items():
        assert torch.equal(value, end[1]['params'][name]), name
    assert any(not torch.equal(start['params'][n], v) for n, v in end[0]['params'].items())


def import_train():
    """tools/train.py as a module."""
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT / 'tools'))
    return train


def test_url_checkpoints_are_downloaded_before_mmengine_loads_them(tmp_path, monkeypatch):
    """tools/train.py's config names the downloaded file where the user gave a URL, so mmengine
    loads it as a local file (with torch's safe unpickler), not through torch.hub."""
    from sasa_det.engine import checkpoint
    train = import_train()
    monkeypatch.setattr(checkpoint, 'download_checkpoint',
                        lambda url, model_dir=None: str(tmp_path / Path(url).name))
    args = train.parse_args([str(CONFIG), '--work-dir', str(tmp_path), '--cfg-options',
                             'load_from=https://example.org/retinanet.pth'])
    assert train.load_config(args).load_from == str(tmp_path / 'retinanet.pth')


def test_bad_config_value_is_reported_with_its_config_key(tmp_path):
    """tools/train.py builds the Runner so that a layer's ValueError names the config key."""
    train = import_train()
    from sasa_det.utils import ConfigValueError
    args = train.parse_args([str(CONFIG), '--work-dir', str(tmp_path), '--cfg-options',
                             'model.neck.attention_cfg.kernel_size=4'])
    cfg = train.load_config(args)
    cfg.visualizer.name = f'bad-value-{tmp_path.name}'  # not the process-wide 'visualizer'
    with pytest.raises(ConfigValueError, match=r'^model\.neck\.attention_cfg\.kernel_size = 4'):
        train.build_runner(cfg)
