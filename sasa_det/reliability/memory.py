"""Host memory over a training run: resident set size per iteration, peak, and growth slope.

:class:`MemoryMonitorHook` records the process's current RSS after every training iteration
(``/proc/self/statm`` on Linux, else the peak from ``getrusage``), stops the run when it passes
``max_rss_mib``, and :func:`growth` fits a least-squares line to the samples after the warm-up,
which is how ``tools/soak.py`` tells a leak (RSS rising iteration after iteration) from the
allocator's plateau.
"""
import os
import resource
import sys
from typing import Dict, List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

MIB = 1024 * 1024


def current_rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / MIB
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best available
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == 'darwin' else peak / 1024  # bytes on macOS, KiB else


def growth(iters: Sequence[int], rss: Sequence[float]) -> Dict[str, float]:
    """Least-squares line through (iteration, RSS MiB): slope in MiB per 1000 iterations, and
    the growth it implies over the sampled range in MiB."""
    n = len(iters)
    if n < 2:
        return dict(slope_mib_per_1k_iters=0.0, growth_mib=0.0)
    mean_x, mean_y = sum(iters) / n, sum(rss) / n
    sxx = sum((x - mean_x) ** 2 for x in iters)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(iters, rss))
    slope = sxy / sxx if sxx else 0.0
    return dict(slope_mib_per_1k_iters=1000 * slope, growth_mib=slope * (iters[-1] - iters[0]))


class MemoryLimitExceeded(RuntimeError):
    """The process's RSS passed the cap given to :class:`MemoryMonitorHook`."""


@HOOKS.register_module()
class MemoryMonitorHook(Hook):
    """Record RSS after each training iteration; log every ``interval``; enforce a cap.

    Args:
        interval: log a line every this many iterations (samples are taken every iteration).
        max_rss_mib: raise :class:`MemoryLimitExceeded` when the RSS passes it (None: no cap).
    """

    priority = 'LOW'

    def __init__(self, interval: int = 10, max_rss_mib: Optional[float] = None) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be a positive integer, got {interval!r}')
        self.interval, self.max_rss_mib = interval, max_rss_mib
        self.iters: List[int] = []
        self.rss_mib: List[float] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        iteration, rss = runner.iter + 1, current_rss_mib()
        self.iters.append(iteration)
        self.rss_mib.append(rss)
        if iteration % self.interval == 0:
            runner.logger.info(f'memory: iter {iteration} rss {rss:.1f} MiB '
                               f'peak {peak_rss_mib():.1f} MiB')
        if self.max_rss_mib is not None and rss > self.max_rss_mib:
            raise MemoryLimitExceeded(f'RSS {rss:.1f} MiB at iteration {iteration} exceeds the '
                                      f'cap of {self.max_rss_mib} MiB')
