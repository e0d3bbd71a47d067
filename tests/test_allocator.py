"""sasa_det.utils.keep_freed_memory: freed blocks stay mapped for the next step, on glibc."""
import os
import platform
import subprocess
import sys

import pytest

from sasa_det.utils import allocator, keep_freed_memory

# A 32 MiB block allocated, written and freed, then a 16 MiB one (the size of the demo's stage-1
# attention weights) allocated: the minor page faults of writing it.
_REFAULTS = """
import resource, torch
from sasa_det.utils import keep_freed_memory
print(keep_freed_memory())
block = torch.empty(8 << 20); block.fill_(1.0); del block
block = torch.empty(4 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block.fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_PAGES = (16 << 20) // 4096


def _refaults(env):
    result = subprocess.run([sys.executable, '-c', _REFAULTS], capture_output=True, text=True,
                            env=env, check=True, timeout=120)
    setting, faults = result.stdout.strip().splitlines()
    return setting, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='the thresholds are glibc\'s')
def test_a_freed_block_is_reused_without_page_faults_and_glibc_defaults_refault_it():
    base = {k: v for k, v in os.environ.items()
            if k not in allocator.ENVIRONMENT and k != 'SASA_DET_MALLOC_DEFAULTS'}
    setting, kept = _refaults(base)
    assert 'keeps freed memory' in setting and kept < _PAGES // 10
    setting, defaults = _refaults({**base, 'SASA_DET_MALLOC_DEFAULTS': '1'})
    assert 'defaults' in setting and defaults > _PAGES // 2


def test_the_callers_environment_wins(monkeypatch):
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1234')
    assert keep_freed_memory() == 'MALLOC_TRIM_THRESHOLD_=1234'
