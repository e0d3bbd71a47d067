"""Shared test set-up: required dependencies, a fixed random state, one-thread runs, and a toy
mmengine training run (model, data, Runner) for the engine tests.

mmengine, mmcv, mmdet and timm are required (install_requires): importing them here makes a
missing one fail the whole run at collection instead of skipping the tests that need it.
"""
import itertools
import os
import random

import mmcv  # noqa: F401  (required: fail the run if missing)
import mmdet  # noqa: F401
import mmengine  # noqa: F401
import numpy as np
import pytest
import timm  # noqa: F401
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import sasa_det  # noqa: F401  (registers the hooks the toy runs name)


@pytest.fixture(autouse=True)
def seed_everything():
    """Seed Python, numpy and torch before each test: random inputs repeat from run to run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test, restored afterwards.

    For tests of tiny models: one thread is as fast there, and on a small shared machine idle
    OpenMP workers spinning for busy cores make such runs several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a toy training run ---------------------------------------------------------------------------

class ToyRegressor(BaseModel):
    """y = w.x + b on 8-d inputs, mean squared error as ``loss_mse``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, inputs, targets, mode='tensor'):
        out = self.linear(inputs)  # (B, 1)
        return dict(loss_mse=((out - targets) ** 2).mean()) if mode == 'loss' else out


class ToyData(torch.utils.data.Dataset):
    """64 fixed samples: inputs (8,) drawn from the sample's own seed, targets (1,) their sum."""
    metainfo = dict(classes=('toy',))

    def __len__(self):
        return 64

    def __getitem__(self, index):
        x = torch.randn(8, generator=torch.Generator().manual_seed(index))
        return dict(inputs=x, targets=x.sum(0, keepdim=True))


_RUN_IDS = itertools.count()


def make_toy_runner(work_dir, max_iters, checkpoint=None, hooks=(), model=None, **runner_kwargs):
    """An iteration-based mmengine Runner training :class:`ToyRegressor` on :class:`ToyData`.

    Batch 4, SGD lr 0.01, seed 0, a log line per iteration. ``checkpoint`` is the
    ``default_hooks.checkpoint`` entry (default: ``AtomicCheckpointHook`` every 2 iterations);
    ``runner_kwargs`` override the Runner's other arguments (e.g. ``resume=True``).
    """
    if checkpoint is None:
        checkpoint = dict(type='AtomicCheckpointHook', interval=2, by_epoch=False)
    kwargs = dict(
        model=model if model is not None else ToyRegressor(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(),
                              sampler=dict(type='InfiniteSampler', shuffle=True), batch_size=4,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(hooks),
        randomness=dict(seed=0),
        default_scope='mmengine',
        # mmengine keeps one logger, message hub and visualiser per experiment name.
        experiment_name=f'toy_{os.getpid()}_{next(_RUN_IDS)}')
    kwargs.update(runner_kwargs)
    return Runner(**kwargs)


@pytest.fixture
def toy_runner():
    """:func:`make_toy_runner`: a factory of toy training Runners."""
    return make_toy_runner
