"""Soak test: train for N iterations under a memory cap and show that host memory does not grow.

    .venv/bin/python tools/soak.py --iters 300 --max-rss-mib 4096 --tolerance-mib 64

Trains a demo config (default: the SASA demo RetinaNet) on freshly generated demo data in one
process (data loading in the main process, so the RSS measured is the whole run's), samples the
resident set size after every iteration with :class:`MemoryMonitorHook`, prints it every
``--every`` iterations, and fits a line through the samples after ``--warmup`` iterations
(:func:`growth`): a leak shows as RSS rising iteration after iteration, the allocator's
warm-up as a plateau.

Exit status: 0 when the fitted growth over the measured iterations is within
``--tolerance-mib``; 1 when it is not (a leak); 2 when the RSS passed ``--max-rss-mib`` (the run
is stopped there). ``--limit-as-mib`` also sets RLIMIT_AS, a hard cap on address space (torch
reserves far more address space than it uses; give it room). Not part of the CI test run.
"""
import argparse
import json
import os
import os.path as osp
import resource
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from mmengine.hooks import Hook

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config',
                        default=osp.join(ROOT, 'configs/demo/retinanet_sasa_r26w16_demo.py'))
    parser.add_argument('--iters', type=int, default=300, help='training iterations')
    parser.add_argument('--warmup', type=int, default=30,
                        help='iterations excluded from the growth fit (allocator warm-up)')
    parser.add_argument('--every', type=int, default=10, help='print memory every K iterations')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--image-size', type=int, default=160, help='demo image side (px)')
    parser.add_argument('--num-images', type=int, default=32, help='demo training images')
    parser.add_argument('--data-root', help='existing demo data (default: generate in a temp dir)')
    parser.add_argument('--max-rss-mib', type=float, help='stop (exit 2) above this RSS')
    parser.add_argument('--limit-as-mib', type=float, help='also set RLIMIT_AS to this')
    parser.add_argument('--tolerance-mib', type=float, default=64.0,
                        help='largest fitted RSS growth over the measured iterations')
    parser.add_argument('--work-dir', help='default: a temp dir')
    parser.add_argument('--out', help='write the samples and the verdict as JSON here')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help="extra config overrides, mmengine's syntax")
    return parser.parse_args(argv)


def soak_config(args, data_root: str, work_dir: str):
    """The config to soak: ``args.config`` on the demo data, iteration-based, in one process."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(args.config)
    data_root = data_root.rstrip('/') + '/'
    loader = cfg.train_dataloader
    loader.update(batch_size=args.batch_size, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=data_root, ann_file='annotations/instances_train.json',
                          data_prefix=dict(img='train/'))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters,
                         val_interval=args.iters + 1)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.param_scheduler = None  # the demo's schedule is sized for its own length
    cfg.default_hooks.checkpoint = None  # nothing to resume: the run measures memory only
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=args.every)
    cfg.log_processor = dict(by_epoch=False)
    cfg.work_dir = work_dir
    if args.cfg_options:
        action = DictAction(option_strings=[], dest='options')
        namespace = argparse.Namespace()
        action(None, namespace, args.cfg_options)
        cfg.merge_from_dict(namespace.options)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.limit_as_mib:
        limit = int(args.limit_as_mib * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, ROOT)
    import sasa_det  # noqa: F401  (registrations)
    from mmengine.runner import Runner

    with tempfile.TemporaryDirectory(prefix='sasa-soak-') as tmp:
        data_root = args.data_root
        if data_root is None:
            from sasa_det.datasets import make_demo_dataset
            data_root = osp.join(tmp, 'data')
            make_demo_dataset(data_root, num_train=args.num_images, num_val=1,
                              image_size=args.image_size)
        cfg = soak_config(args, data_root, args.work_dir or osp.join(tmp, 'work'))
        runner = Runner.from_cfg(cfg)
        monitor = MemoryMonitorHook(interval=args.every, max_rss_mib=args.max_rss_mib)
        runner.register_hook(monitor)
        status, reason = 0, ''
        try:
            runner.train()
        except MemoryLimitExceeded as err:
            status, reason = 2, str(err)

    measured = [(i, r) for i, r in zip(monitor.iters, monitor.rss_mib) if i > args.warmup]
    fit = growth([i for i, _ in measured], [r for _, r in measured])
    if status == 0 and fit['growth_mib'] > args.tolerance_mib:
        status, reason = 1, (f"RSS grew {fit['growth_mib']:.1f} MiB over iterations "
                             f'{measured[0][0]}-{measured[-1][0]} (tolerance '
                             f'{args.tolerance_mib} MiB)')
    print(f'{"iter":>6} {"rss MiB":>9}')
    for i, r in zip(monitor.iters, monitor.rss_mib):
        if i % args.every == 0 or i == monitor.iters[-1]:
            print(f'{i:>6} {r:>9.1f}')
    summary = dict(config=args.config, iters=monitor.iters[-1] if monitor.iters else 0,
                   peak_rss_mib=round(peak_rss_mib(), 1), warmup=args.warmup,
                   slope_mib_per_1k_iters=round(fit['slope_mib_per_1k_iters'], 2),
                   growth_mib=round(fit['growth_mib'], 2), tolerance_mib=args.tolerance_mib,
                   status=status, reason=reason or 'no growth beyond tolerance')
    print(json.dumps(summary, indent=1))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(summary, samples=dict(iters=monitor.iters, rss_mib=monitor.rss_mib)),
                      f)
    return status


if __name__ == '__main__':
    sys.exit(main())
