"""mmengine checkpoints under torch >= 2.6 (``torch.load`` defaults to ``weights_only=True``).

With ``import sasa_det`` (its allowlist of mmengine's globals) an mmengine Runner resumes from its
own checkpoints (iteration counter, weights, optimizer and message hub continue), while a
checkpoint that carries code is refused on every mmengine load path, URL checkpoints included
once downloaded as ``tools/train.py`` and ``tools/test.py`` download them.
"""
import copy
import io
import json
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import checkpoint as mmengine_checkpoint

from conftest import ToyRegressor, make_toy_runner
from sasa_det.engine import checkpoint as sasa_checkpoint
from sasa_det.engine.checkpoint import (download_checkpoint, download_url_checkpoints,
                                        mmengine_checkpoint_globals)

CHECKPOINT_INTERVAL = 3


class RecordStateBeforeTrain(Hook):
    """Keeps what the train loop starts from: after ``load_or_resume``, before the first step."""

    def before_train(self, runner):
        self.iter = runner.iter
        self.weights = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        # state_dict() shares the live momentum buffers: copy before training updates them.
        self.optimizer = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())
        self.schedulers = copy.deepcopy([s.state_dict() for s in runner.param_schedulers])


def make_runner(work_dir, name, max_iters, resume=False, hooks=()):
    """The toy run with momentum and two schedulers, whose state a resume must restore
    (MultiStepLR's milestones are a Counter)."""
    return make_toy_runner(
        work_dir, max_iters, resume=resume, hooks=hooks, experiment_name=name,
        checkpoint=dict(type='AtomicCheckpointHook', interval=CHECKPOINT_INTERVAL,
                        by_epoch=False),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
            dict(type='MultiStepLR', milestones=[4], by_epoch=False),
        ],
        log_level='WARNING')


def allowlisted_names():
    """The fully qualified names under which our allowlist admits globals."""
    return {
        entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'
        for entry in mmengine_checkpoint_globals()
    }


def globals_torch_refuses(path):
    """Globals in the checkpoint that torch refuses in a fresh process (no sasa_det imported)."""
    script = ('import json, sys, torch; from torch.serialization import '
              'get_unsafe_globals_in_checkpoint as unsafe; print(json.dumps(unsafe(sys.argv[1])))')
    out = subprocess.run([sys.executable, '-c', script, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_runner_resumes_from_its_checkpoint(tmp_path):
    """Train 6 iterations, resume to 9: counter, weights, momentum and logs continue."""
    first = make_runner(tmp_path, f'{tmp_path.name}_first', max_iters=6)
    first.train()
    saved_path = tmp_path / 'iter_6.pth'
    assert first.iter == 6 and saved_path.is_file() and (tmp_path / 'iter_3.pth').is_file()

    # Without sasa_det the checkpoint does not load; what it lacks is exactly in our allowlist.
    unsafe = globals_torch_refuses(saved_path)
    assert unsafe, 'checkpoint loads without our allowlist: this test would not test it'
    assert unsafe <= allowlisted_names(), unsafe - allowlisted_names()
    saved = torch.load(saved_path, map_location='cpu')  # default weights_only=True
    assert saved['meta']['iter'] == 6

    record = RecordStateBeforeTrain()
    second = make_runner(tmp_path, f'{tmp_path.name}_second', max_iters=9, resume=True,
                         hooks=[record])
    second.train()

    assert record.iter == 6
    assert record.weights.keys() == saved['state_dict'].keys()
    for key, value in saved['state_dict'].items():
        torch.testing.assert_close(record.weights[key], value, rtol=0, atol=0)
    momentum = {i: s['momentum_buffer'] for i, s in record.optimizer['state'].items()}
    saved_momentum = {i: s['momentum_buffer'] for i, s in saved['optimizer']['state'].items()}
    assert momentum.keys() == saved_momentum.keys() and momentum
    for i in momentum:
        torch.testing.assert_close(momentum[i], saved_momentum[i], rtol=0, atol=0)

    # Scheduler state (last_step, MultiStepLR's Counter of milestones, ...) and the lr continue.
    assert record.schedulers == saved['param_schedulers']
    assert [g['lr'] for g in record.optimizer['param_groups']] == pytest.approx([1e-3])

    assert second.iter == 9
    # The message hub's HistoryBuffer came back through the allowlist: 6 old losses + 3 new.
    losses, _ = second.message_hub.get_scalar('train/loss').data
    assert len(losses) == 9
    assert not torch.equal(second.model.linear.weight.detach(), record.weights['linear.weight'])
    resumed_end = torch.load(tmp_path / 'iter_9.pth', map_location='cpu')
    assert resumed_end['meta']['iter'] == 9


def test_numpy1_checkpoint_loads():
    """numpy 1.x wrote ``numpy.core.multiarray`` where numpy 2 writes ``numpy._core.multiarray``."""
    buffer = io.BytesIO()
    saved = dict(history=np.array([1.5, 2.0]), eta=np.float64(3.0))
    # The legacy format is a plain pickle stream, so the module name can be rewritten in place.
    torch.save(saved, buffer, _use_new_zipfile_serialization=False)
    numpy2_bytes = buffer.getvalue()
    assert numpy2_bytes.count(b'numpy._core.multiarray') == 2
    numpy1_bytes = numpy2_bytes.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')

    loaded = torch.load(io.BytesIO(numpy1_bytes), map_location='cpu')  # weights_only=True
    np.testing.assert_array_equal(loaded['history'], saved['history'])
    assert loaded['eta'] == saved['eta'] and isinstance(loaded['eta'], np.float64)


class RunsShellOnLoad:
    """Unpickling this runs a shell command (stands in for any code a checkpoint could carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(str(self.marker))}', )


class GetattrEscape:
    """Asks the unpickler for an attribute other than HistoryBuffer's statistics."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_code_payload_is_live(tmp_path):
    """Control for the refusal tests: unpickled unsafely, the payload does create its marker."""
    marker = tmp_path / 'marker'
    pickle.loads(pickle.dumps(RunsShellOnLoad(marker)))
    assert marker.exists()


LOADERS = {
    '_load_checkpoint': lambda path: mmengine_checkpoint._load_checkpoint(str(path), 'cpu'),
    'load_checkpoint': lambda path: mmengine_checkpoint.load_checkpoint(
        ToyRegressor(), str(path), map_location='cpu'),
    # A URL checkpoint as the tools load it: downloaded (a file:// URL reaches the same
    # download code without a network), then read as a local file.
    'downloaded_url': lambda path: mmengine_checkpoint._load_checkpoint(
        download_checkpoint(path.as_uri(), model_dir=str(path.parent / 'hub')), 'cpu'),
}


@pytest.mark.parametrize('loader', sorted(LOADERS))
@pytest.mark.parametrize('payload', ['shell', 'getattr', 'object_array'])
def test_checkpoint_carrying_code_is_refused(tmp_path, loader, payload):
    """Loading raises UnpicklingError and the payload never runs."""
    marker = tmp_path / 'marker'
    extra = {
        'shell': RunsShellOnLoad(marker),
        'getattr': GetattrEscape(),
        'object_array': np.array([1, None], dtype=object),
    }[payload]
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=ToyRegressor().state_dict(), meta=dict(note=extra)), path)

    with pytest.raises(pickle.UnpicklingError):
        LOADERS[loader](path)
    assert not marker.exists()


def test_resume_of_a_checkpoint_carrying_code_is_refused(tmp_path):
    """``Runner(resume=True)`` finds the planted checkpoint as the latest one and refuses it."""
    marker = tmp_path / 'marker'
    planted = tmp_path / 'iter_3.pth'
    torch.save(dict(meta=dict(iter=3), state_dict=ToyRegressor().state_dict(),
                    message_hub=dict(note=RunsShellOnLoad(marker))), planted)
    (tmp_path / 'last_checkpoint').write_text(str(planted))

    runner = make_runner(tmp_path, f'{tmp_path.name}_planted', max_iters=6, resume=True)
    with pytest.raises(pickle.UnpicklingError):
        runner.train()
    assert not marker.exists()


def test_url_checkpoints_of_a_config_are_downloaded(tmp_path, monkeypatch):
    """load_from and Pretrained init_cfg URLs (http(s):// and torchvision://) become the local
    files they download to; local paths and other init_cfg types stay as they are."""
    fetched = []

    def fake_download(url, model_dir=None):
        fetched.append(url)
        return str(tmp_path / os.path.basename(url))

    monkeypatch.setattr(sasa_checkpoint, 'download_checkpoint', fake_download)
    cfg = Config(dict(
        load_from='https://example.org/detector.pth',
        model=dict(backbone=dict(init_cfg=dict(type='Pretrained',
                                               checkpoint='torchvision://resnet50')),
                   neck=dict(init_cfg=dict(type='Pretrained', checkpoint='local/neck.pth')),
                   bbox_head=dict(init_cfg=[dict(type='Normal', std=0.01)]))))
    download_url_checkpoints(cfg)
    resnet50_url = mmengine_checkpoint.get_torchvision_models()['resnet50']
    assert fetched == ['https://example.org/detector.pth', resnet50_url]
    assert cfg.load_from == str(tmp_path / 'detector.pth')
    assert cfg.model.backbone.init_cfg.checkpoint == str(tmp_path / os.path.basename(
        resnet50_url))
    assert cfg.model.neck.init_cfg.checkpoint == 'local/neck.pth'
