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
