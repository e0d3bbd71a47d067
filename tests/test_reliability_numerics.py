"""Numerics: non-finite losses never reach the weights or a checkpoint; mixed precision gives
finite losses; seeded deterministic runs repeat exactly; the soak test's memory measurement."""
import importlib.util
import math
import mmap
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

from conftest import ToyRegressor
from sasa_det.engine import NonFiniteLossError, NonFiniteLossHook

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest


class FaultyToy(ToyRegressor):
    """The toy regressor with a second loss term ``loss_aux`` (zero) whose value
    (``fault='loss'``) or gradient (``fault='grad'``) is NaN at the training iterations
    (1-based) in ``bad_iters``."""

    def __init__(self, bad_iters=(), fault='loss'):
        super().__init__()
        self.bad_iters, self.fault, self.calls = set(bad_iters), fault, 0

    def forward(self, inputs, targets, mode='tensor'):
        out = super().forward(inputs, targets, mode)
        if mode != 'loss':
            return out
        self.calls += 1
        aux = (self.linear.weight * 0).sum()
        if self.calls in self.bad_iters:
            if self.fault == 'loss':
                aux = aux + float('nan')
            else:  # value 0, gradient d sqrt(|u|)/du at 0 = inf * 0 = nan
                aux = aux.abs().sqrt()
        return dict(out, loss_aux=aux)


class RecordWeights(Hook):
    """Keeps a copy of the weights after every iteration (1-based)."""

    def __init__(self):
        self.weights = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.weights[runner.iter + 1] = runner.model.linear.weight.detach().clone()


@pytest.fixture
def runner(tmp_path, toy_runner):
    """The toy run of ``model`` with ``hooks``, checkpoints every 2 iterations (the configs'
    AtomicCheckpointHook), in tmp_path."""
    return lambda model, hooks, max_iters=8: toy_runner(tmp_path, max_iters, hooks=hooks,
                                                        model=model)


@pytest.mark.parametrize('fault', ['loss', 'grad'])
def test_non_finite_stops_before_the_step_and_keeps_last_checkpoint(tmp_path, runner, fault):
    """NaN at iteration 5 (checkpoints every 2): the run stops naming iteration 5 and the loss
    terms; weights are those after iteration 4; iter_4.pth is the last checkpoint and finite."""
    model = FaultyToy(bad_iters={5}, fault=fault)
    record = RecordWeights()
    with pytest.raises(NonFiniteLossError) as info:
        runner(model, [dict(type='NonFiniteLossHook'), record]).train()
    message = str(info.value)
    what = {'loss': 'loss', 'grad': 'gradient'}[fault]
    assert f'Non-finite {what} at iteration 5' in message
    assert 'loss_mse=' in message and 'loss_aux=' in message
    if fault == 'loss':
        assert 'loss_aux=nan' in message
    assert torch.equal(model.linear.weight, record.weights[4])  # step 5 was not applied
    assert torch.isfinite(model.linear.weight).all()
    assert open(osp.join(tmp_path, 'last_checkpoint')).read() == osp.join(tmp_path, 'iter_4.pth')
    assert not osp.exists(osp.join(tmp_path, 'iter_6.pth'))
    state = torch.load(osp.join(tmp_path, 'iter_4.pth'), weights_only=True)['state_dict']
    assert torch.equal(state['linear.weight'], record.weights[4])


def test_non_finite_skip_mode_drops_only_that_update(tmp_path, runner):
    """mode='skip': NaN loss at iteration 3 leaves the weights as after iteration 2, training
    finishes, and every checkpoint holds finite weights."""
    model = FaultyToy(bad_iters={3})
    record = RecordWeights()
    hook = NonFiniteLossHook(mode='skip')
    runner(model, [hook, record], max_iters=6).train()
    assert hook.skipped_iters == [3]
    assert torch.equal(record.weights[3], record.weights[2])
    assert not torch.equal(record.weights[4], record.weights[3])  # training went on
    for it in (2, 4, 6):
        state = torch.load(osp.join(tmp_path, f'iter_{it}.pth'), weights_only=True)
        assert all(torch.isfinite(v).all() for v in state['state_dict'].values())


def test_non_finite_skip_mode_stops_after_too_many(runner):
    """A loss that stays NaN is not skipped forever: max_consecutive_skips stops the run."""
    model = FaultyToy(bad_iters=set(range(3, 100)))
    hook = NonFiniteLossHook(mode='skip', max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match='3 non-finite iterations in a row'):
        runner(model, [hook], max_iters=10).train()
    assert hook.skipped_iters == [3, 4, 5]


def test_non_finite_hook_rejects_unknown_mode():
    with pytest.raises(ValueError, match=r"mode must be one of \('stop', 'skip'\), got 'ignore'"):
        NonFiniteLossHook(mode='ignore')


# --- mixed precision and determinism -----------------------------------------------------

class TinySASANet(BaseModel):
    """conv stem -> SASA layer (k=3, stride 2) -> SASA layer -> global pool -> 3 classes."""

    def __init__(self):
        super().__init__()
        from sasa_det.layers import LocalSelfAttention2d
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.attn1 = LocalSelfAttention2d(16, 16, kernel_size=3, heads=4, stride=2)
        self.attn2 = LocalSelfAttention2d(16, 16, kernel_size=5, heads=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = torch.relu(self.stem(inputs))
        x = torch.relu(self.attn2(torch.relu(self.attn1(x))))
        logits = self.fc(x.mean((2, 3)))
        if mode == 'loss':
            return dict(loss_cls=nn.functional.cross_entropy(logits.float(), labels))
        return logits


class ImageData(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 11, 13, generator=g), labels=i % 3)


class RecordLosses(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(outputs['loss'].item())


def _seeded_losses(tmp_path, seed):
    record = RecordLosses()
    # The model is given as a config so that the Runner builds it after seeding.
    Runner(model=dict(type=TinySASANet), work_dir=str(tmp_path),
           train_dataloader=dict(dataset=ImageData(),
                                 sampler=dict(type='InfiniteSampler', shuffle=True),
                                 batch_size=4, num_workers=0,
                                 collate_fn=dict(type='default_collate')),
           train_cfg=dict(by_epoch=False, max_iters=4),
           optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
           default_hooks=dict(checkpoint=None), custom_hooks=[record],
           randomness=dict(seed=seed, deterministic=True), default_scope='mmengine',
           experiment_name=f'determinism_{seed}_{len(str(tmp_path))}_{id(record)}').train()
    return record.losses


@pytest.fixture
def restore_determinism():
    """mmengine's deterministic=True switches torch's global flags on; switch them back after."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1:]


def test_seeded_deterministic_runs_repeat_exactly(tmp_path, restore_determinism):
    """Two runs with randomness=dict(seed=0, deterministic=True) give bit-identical losses;
    another seed gives different ones (so the comparison can fail)."""
    first = _seeded_losses(tmp_path / 'a', seed=0)
    second = _seeded_losses(tmp_path / 'b', seed=0)
    assert len(first) == 4 and all(math.isfinite(v) for v in first)
    assert first == second
    assert _seeded_losses(tmp_path / 'c', seed=1) != first


def _cpu_autocast_supported(dtype):
    try:
        with torch.autocast('cpu', dtype=dtype):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except (RuntimeError, AssertionError):
        return False


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_sasa_model_trains_finite_with_cpu_amp(tmp_path, dtype):
    """``CPUAmpOptimWrapper`` (what --amp uses without CUDA): six iterations of a SASA model
    through mmengine's Runner with NonFiniteLossHook; the attention runs in the low precision
    (its output dtype says so) and every loss is finite."""
    torch_dtype = getattr(torch, dtype)
    if not _cpu_autocast_supported(torch_dtype):
        pytest.skip(f'CPU autocast does not support {dtype} in this torch')
    model, record = TinySASANet(), RecordLosses()
    seen = set()
    model.attn1.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=ImageData(), sampler=dict(type='InfiniteSampler'),
                              batch_size=4, num_workers=0,
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=6),
        optim_wrapper=dict(type='CPUAmpOptimWrapper', dtype=dtype,
                           optimizer=dict(type='SGD', lr=0.1), clip_grad=dict(max_norm=10)),
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=6,
                                           by_epoch=False)),
        custom_hooks=[dict(type='NonFiniteLossHook'), record], randomness=dict(seed=0),
        default_scope='mmengine', experiment_name=f'amp_{dtype}_{id(model)}')
    runner.train()
    assert seen == {torch_dtype}
    assert len(record.losses) == 6 and all(math.isfinite(v) for v in record.losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(osp.join(tmp_path, 'iter_6.pth'), weights_only=True)['optimizer']
    assert ('loss_scaler' in state) == (dtype == 'float16')


# --- memory over a run (the soak test's measurement) ---------------------------------------------

def _load_soak():
    """tools/soak.py as a module: its MemoryMonitorHook and growth fit."""
    spec = importlib.util.spec_from_file_location('soak', osp.join(ROOT, 'tools', 'soak.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


class Leak(Hook):
    """Keeps ``mib`` MiB of freshly mapped, written pages alive per iteration: a synthetic leak.

    An anonymous mmap, not a bytes object: in a process that already freed large blocks (the
    full test suite), malloc may serve a bytes object from memory that is resident already, and
    the leak would not show in the RSS.
    """

    def __init__(self, mib):
        self.mib, self.kept = mib, []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.mib:
            pages = mmap.mmap(-1, self.mib * 1024 * 1024)
            pages.write(b'\x01' * len(pages))
            self.kept.append(pages)


@pytest.mark.parametrize('leak_mib', [0, 2])
def test_memory_monitor_measures_growth(runner, leak_mib):
    """MemoryMonitorHook + growth(), as tools/soak.py uses them: a 2 MiB/iteration leak is
    measured as ~2 MiB per iteration; without it the fitted growth stays small."""
    monitor = soak.MemoryMonitorHook(interval=5)
    runner(FaultyToy(), [Leak(leak_mib), monitor], max_iters=25).train()
    assert monitor.iters == list(range(1, 26))
    fit = soak.growth(monitor.iters[5:], monitor.rss_mib[5:])
    if leak_mib:
        assert fit['slope_mib_per_1k_iters'] == pytest.approx(1000 * leak_mib, rel=0.25)
    else:
        assert abs(fit['growth_mib']) < 8


def test_memory_monitor_stops_at_the_cap(runner):
    with pytest.raises(soak.MemoryLimitExceeded, match='exceeds the cap of 1 MiB'):
        runner(FaultyToy(), [soak.MemoryMonitorHook(max_rss_mib=1)]).train()


@pytest.mark.soak
def test_soak_demo_memory_does_not_grow(tmp_path):
    """tools/soak.py on the SASA demo config: 300 iterations, RSS growth after warm-up within
    64 MiB and under a 6 GiB cap (exit status 0)."""
    import subprocess
    import sys
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    out = tmp_path / 'soak.json'
    proc = subprocess.run([sys.executable, osp.join(root, 'tools', 'soak.py'), '--iters', '300',
                           '--max-rss-mib', '6144', '--tolerance-mib', '64', '--out', str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
