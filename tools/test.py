"""Test (and evaluate with the config's CocoMetric) a checkpoint: mmdet's test.py command line.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
        [--cfg-options key=value ...] [--launcher none|pytorch|slurm]

Multi-GPU: ``tools/dist_test.sh CONFIG CHECKPOINT GPUS [args]``.
"""
import os.path as osp
import sys

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults

# tools/ is this script's directory, so train.py's command line and set-up are importable; it
# also puts the repository on sys.path and imports sasa_det.
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import (build_runner, download_url_checkpoints, keep_freed_memory,  # noqa: E402
                   load_config, parse_args, setup_cache_size_limit_of_dynamo)


def main(argv=None) -> None:
    args = parse_args(argv, test=True)
    keep_freed_memory()
    setup_cache_size_limit_of_dynamo()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    download_url_checkpoints(cfg)  # a URL checkpoint loads as a local file, safely
    if args.show_dir:
        args.show, args.wait_time = False, 0
        cfg = trigger_visualization_hook(cfg, args)
    runner = build_runner(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must name a .pkl or .pickle file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
