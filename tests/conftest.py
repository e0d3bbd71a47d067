"""Shared test set-up: every test starts from the same random state."""
import random

import numpy as np
import pytest
import torch


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
