"""Numerics (issue 7, items 2 and 5): non-finite losses never reach the weights or a checkpoint;
mixed precision gives finite losses; seeded deterministic runs repeat exactly."""
import math
import os.path as osp

import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')

from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from sasa_det.reliability import NonFiniteLossError, NonFiniteLossHook  # noqa: E402


class FaultyToy(BaseModel):
    """A linear regressor whose loss (``fault='loss'``) or gradient (``fault='grad'``) is NaN at
    the training iterations (1-based) in ``bad_iters``; the other terms stay finite."""

    def __init__(self, bad_iters=(), fault='loss'):
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.bad_iters, self.fault, self.calls = set(bad_iters), fault, 0

    def forward(self, inputs, targets, mode='tensor'):
        out = self.linear(inputs)
        if mode != 'loss':
            return out
        self.calls += 1
        aux = (self.linear.weight * 0).sum()
        if self.calls in self.bad_iters:
            if self.fault == 'loss':
                aux = aux + float('nan')
            else:  # value 0, gradient d sqrt(|u|)/du at 0 = inf * 0 = nan
                aux = aux.abs().sqrt()
        return dict(loss_mse=((out - targets) ** 2).mean(), loss_aux=aux)


class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        return dict(inputs=x, targets=x.sum(0, keepdim=True))


class RecordWeights(Hook):
    """Keeps a copy of the weights after every iteration (1-based)."""

    def __init__(self):
        self.weights = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.weights[runner.iter + 1] = runner.model.linear.weight.detach().clone()


def _runner(tmp_path, model, hooks, max_iters=8):
    return Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='InfiniteSampler'),
                              batch_size=4, num_workers=0,
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=hooks, randomness=dict(seed=0), default_scope='mmengine',
        experiment_name=f'numerics_{id(model)}')


@pytest.mark.parametrize('fault', ['loss', 'grad'])
def test_non_finite_stops_before_the_step_and_keeps_last_checkpoint(tmp_path, fault):
    """NaN at iteration 5 (checkpoints every 2): the run stops naming iteration 5 and the loss
    terms; weights are those after iteration 4; iter_4.pth is the last checkpoint and finite."""
    model = FaultyToy(bad_iters={5}, fault=fault)
    record = RecordWeights()
    runner = _runner(tmp_path, model, [dict(type='NonFiniteLossHook'), record])
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
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


def test_non_finite_skip_mode_drops_only_that_update(tmp_path):
    """mode='skip': NaN loss at iteration 3 leaves the weights as after iteration 2, training
    finishes, and every checkpoint holds finite weights."""
    model = FaultyToy(bad_iters={3})
    record = RecordWeights()
    hook = NonFiniteLossHook(mode='skip')
    _runner(tmp_path, model, [hook, record], max_iters=6).train()
    assert hook.skipped_iters == [3]
    assert torch.equal(record.weights[3], record.weights[2])
    assert not torch.equal(record.weights[4], record.weights[3])  # training went on
    for it in (2, 4, 6):
        state = torch.load(osp.join(tmp_path, f'iter_{it}.pth'), weights_only=True)
        assert all(torch.isfinite(v).all() for v in state['state_dict'].values())


def test_non_finite_skip_mode_stops_after_too_many(tmp_path):
    """A loss that stays NaN is not skipped forever: max_consecutive_skips stops the run."""
    model = FaultyToy(bad_iters=set(range(3, 100)))
    hook = NonFiniteLossHook(mode='skip', max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match='3 non-finite iterations in a row'):
        _runner(tmp_path, model, [hook], max_iters=10).train()
    assert hook.skipped_iters == [3, 4, 5]


def test_non_finite_hook_rejects_unknown_mode():
    with pytest.raises(ValueError, match=r"mode must be one of \('stop', 'skip'\), got 'ignore'"):
        NonFiniteLossHook(mode='ignore')


def _finite(values):
    return all(math.isfinite(v) for v in values)
