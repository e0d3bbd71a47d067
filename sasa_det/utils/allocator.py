"""glibc's malloc set to keep freed memory for reuse: what the training tools run under on CPU.

By default glibc returns freed blocks of 128 KiB and more to the kernel (blocks above 32 MiB
always), so a training step maps its large tensors afresh every step and page-faults them back
in, one fault and one zeroed page per 4 KiB. The SASA layer saves its attention weights for the
backward (k*k values per query and head, 16 MB for the demo's stage 1 and about 80 MB per
layer for a 640 px R-50's), so it pays this on far more memory than a convolution does.
:func:`keep_freed_memory` sets the two thresholds for the running process (``mallopt``), as
``MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456`` would at start-up:
blocks up to 64 MiB come from the heap, and up to 256 MiB of free heap is kept. Measurements:
docs/performance.md.
"""
import ctypes
import ctypes.util
import os
import platform
from typing import Optional

__all__ = ['ENVIRONMENT', 'MMAP_THRESHOLD', 'TRIM_THRESHOLD', 'chosen_by_environment',
           'keep_freed_memory']

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
ENVIRONMENT = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')  # glibc's start-up tunables
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def chosen_by_environment() -> Optional[str]:
    """The allocator setting, in words, where the environment chooses it (the caller's glibc
    variables, or ``SASA_DET_MALLOC_DEFAULTS=1`` for glibc's defaults); None where it does not."""
    given = [f'{name}={os.environ[name]}' for name in ENVIRONMENT if name in os.environ]
    if given:
        return ', '.join(given)
    if os.environ.get('SASA_DET_MALLOC_DEFAULTS', '') not in ('', '0'):
        return 'glibc malloc defaults (SASA_DET_MALLOC_DEFAULTS)'
    return None


def keep_freed_memory() -> str:
    """Set glibc's mmap threshold to 64 MiB and its trim threshold to 256 MiB for this process,
    unless the caller set either through the environment (their setting stays) or
    ``SASA_DET_MALLOC_DEFAULTS=1`` asks for glibc's defaults; nothing off glibc (macOS, musl).
    Returns the setting in force, in words, for logs."""
    chosen = chosen_by_environment()
    if chosen:
        return chosen
    libc_name = platform.libc_ver()[0] == 'glibc' and ctypes.util.find_library('c')
    if not libc_name:
        return 'allocator defaults (not glibc)'
    mallopt = ctypes.CDLL(libc_name).mallopt
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and
            mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return 'glibc malloc defaults (mallopt refused the thresholds)'
    return (f'glibc malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, '
            f'trim threshold {TRIM_THRESHOLD >> 20} MiB)')
