r"""Train and evaluate configs over several seeds; tabulate mean and spread of mAP and AP50.

    # the fair conv / SASA comparison of the demo, three seeds each (resumable: finished
    # (config, seed) pairs are not run again)
    python tools/seed_sweep.py configs/demo/retinanet_r26w16_demo.py \
        configs/demo/retinanet_sasa_r26w16_demo.py --seeds 0 1 2 \
        --work-dir work_dirs/sweep --table work_dirs/sweep/table.md

    # only the table, from runs already in the work dir
    python tools/seed_sweep.py CONFIG [CONFIG ...] --seeds 0 1 2 --no-run

Each (config, seed) trains with ``tools/train.py`` into ``WORK_DIR/<config name>/seed<N>``
(``randomness.seed=N``) and is evaluated on the config's test split with ``tools/test.py``.
Parameters and FLOPs come from ``tools/analyze.py`` (attention counted exactly), results are
read the way ``analyze.py`` reads them. Every quoted number is the mean over seeds; the table also
gives the sample standard deviation and the lowest and highest value.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from analyze import (ResultFileError, add_input_size_option, input_size_option,  # noqa: E402
                     load_results, model_complexity)
from mmengine.config import DictAction  # noqa: E402

SUMMARISED = ('mAP', 'AP50')


def run_dir(work_dir: Path, config: Path, seed: int) -> Path:
    return work_dir / config.stem / f'seed{seed}'


def has_test_result(directory: Path) -> bool:
    """Whether ``tools/test.py`` has written its metrics json into ``directory``."""
    try:
        _, source = load_results(directory)
    except ResultFileError:
        return False
    return source.name != 'scalars.json'  # a training log's validation is not the test result


def train_and_test(config: Path, seed: int, directory: Path, cfg_options: list[str]) -> None:
    """Train ``config`` with this seed into ``directory``, then evaluate its last checkpoint."""
    options = ['--cfg-options', f'randomness.seed={seed}', *cfg_options]
    python = sys.executable
    subprocess.run([python, str(TOOLS / 'train.py'), str(config), '--work-dir', str(directory),
                    *options], check=True)
    checkpoint = (directory / 'last_checkpoint').read_text().strip()
    subprocess.run([python, str(TOOLS / 'test.py'), str(config), checkpoint, '--work-dir',
                    str(directory), *options], check=True)


def summarise(values: list[float]) -> str:
    """'mean +- std (min-max)' of the seeds' values, 'mean' alone for a single seed."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f'{mean:.3f}'
    return (f'{mean:.3f} +- {statistics.stdev(values):.3f} '
            f'({min(values):.3f}-{max(values):.3f})')


def sweep_row(name: str, config: Path, work_dir: Path, seeds: list[int]) -> dict:
    """One table row: the config's complexity and its seeds' results summarised."""
    per_seed = {}
    for seed in seeds:
        directory = run_dir(work_dir, config, seed)
        if has_test_result(directory):
            per_seed[seed] = load_results(directory)[0]
    row = dict(model=name, seeds=sorted(per_seed))
    for column in SUMMARISED:
        values = [m[column] for m in per_seed.values() if not math.isnan(m[column])]
        row[column] = summarise(values) if values else 'n/a'
        row[f'{column} per seed'] = ', '.join(f'{per_seed[s][column]:.3f}' for s in sorted(per_seed))
    return row


def parse_cfg_options(options: list[str]) -> dict:
    """``KEY=VALUE`` strings as train.py's ``--cfg-options`` reads them."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='*', action=DictAction, default={})
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def format_table(rows: list[dict]) -> str:
    header = ['model', 'input', 'params (M)', 'GFLOPs', 'seeds', 'mAP', 'AP50', 'mAP per seed']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join([
            row['model'], '{}x{}'.format(*row['input_size']), f"{row['params'] / 1e6:.2f}",
            f"{row['flops'] / 1e9:.3f}", ' '.join(map(str, row['seeds'])) or 'none',
            row['mAP'], row['AP50'], row['mAP per seed']]) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', type=Path, help='mmdet config files')
    parser.add_argument('--names', nargs='+', help='row names (default: config file names)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2],
                        help='seeds to run and summarise (default: 0 1 2)')
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/sweep'))
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed to every training and test run, and to the complexity '
                             'count (input size, FLOPs) of every row')
    add_input_size_option(parser)
    parser.add_argument('--no-run', action='store_true',
                        help='only tabulate the runs that are already there')
    parser.add_argument('--table', type=Path, help='also write the Markdown table here')
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.configs):
        parser.error(f'--names has {len(args.names)} values for {len(args.configs)} configs')
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f'--seeds must be distinct non-negative integers, got {args.seeds}')
    args.input_size = input_size_option(parser, args.input_size)
    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        parser.error(f'config files not found: {", ".join(missing)}')
    stems = [c.stem for c in args.configs]
    if len(set(stems)) != len(stems):
        parser.error(f'config file names must differ (they name the work dirs), got {stems}')
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    overrides = parse_cfg_options(args.cfg_options)  # a malformed option fails before any run
    if not args.no_run:
        for config in args.configs:
            for seed in args.seeds:
                directory = run_dir(args.work_dir, config, seed)
                if has_test_result(directory):
                    print(f'seed_sweep: {directory} is done, skipped')
                    continue
                print(f'seed_sweep: training and testing {config} with seed {seed}', flush=True)
                train_and_test(config, seed, directory, args.cfg_options)
    names = args.names or [c.stem for c in args.configs]
    rows = []
    for name, config in zip(names, args.configs):
        row = sweep_row(name, config, args.work_dir, args.seeds)
        # at --input-size, else at the test input size of the config with the options
        row.update(model_complexity(config, args.input_size, overrides))
        rows.append(row)
    table = format_table(rows)
    print(f'\nFLOPs = 2 x multiply-adds; mAP, AP50: COCO bbox metrics on the test split, mean '
          f'+- sample std (min-max) over seeds.\n{table}')
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + '\n', encoding='utf-8')
    return rows


if __name__ == '__main__':
    main()
