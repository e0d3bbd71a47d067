r"""Tabulate and plot detectors' accuracy against their cost: mAP vs GFLOPs, marker size = params.

    # configs and their work dirs (the latest `tools/test.py` result, else the last validation)
    python tools/analyze.py configs/demo/retinanet_r26w16_demo.py \
        configs/demo/retinanet_sasa_r26w16_demo.py \
        --results work_dirs/demo/retinanet_r26w16_demo work_dirs/demo/retinanet_sasa_r26w16_demo \
        --plot work_dirs/demo/map_vs_flops.png

    # parameters and FLOPs only (no training needed), at the paper's 640 x 640
    python tools/analyze.py configs/retinanet_r50.py configs/retinanet_sasa_r50.py \
        --complexity-only --input-size 640

Result files are what mmengine's Runner writes: the json of a test run
(``WORK_DIR/<timestamp>/<timestamp>.json``, one dict with ``coco/bbox_mAP`` ...) or the json-lines
scalars of a training run (``WORK_DIR/<timestamp>/vis_data/scalars.json``; the last record with
``coco/bbox_mAP`` is used). FLOPs are 2 x multiply-adds (the paper's convention), counted by
``sasa_det.analysis.complexity`` with attention counted exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without install

# Table column -> key in mmdet's CocoMetric results (bbox, values in [0, 1]).
METRICS = {
    'mAP': 'coco/bbox_mAP',
    'AP50': 'coco/bbox_mAP_50',
    'AP75': 'coco/bbox_mAP_75',
    'APs': 'coco/bbox_mAP_s',
    'APm': 'coco/bbox_mAP_m',
    'APl': 'coco/bbox_mAP_l',
}

# The paper's COCO RetinaNet rows (Ramachandran et al. 2019, Table 3; 640 x 640 input), as
# reported: "FLOPS (B)" and "Params (M)". Only the two rows the abstract's claim rests on
# (39% fewer FLOPS, 34% fewer parameters at the same mAP).
PAPER_POINTS = [
    dict(model='paper: RetinaNet R-50 (conv)', params=33.4e6, gflops=182.0, mAP=0.365),
    dict(model='paper: RetinaNet SASA R-50 (attention backbone, FPN, heads)', params=22.0e6,
         gflops=111.0, mAP=0.366),
]


class ResultFileError(ValueError):
    """A result file or work dir is missing, unreadable or has no COCO bbox metrics."""


# ----------------------------------------------------------------------------- results


def _metrics_from_record(record: dict) -> dict[str, float] | None:
    """The table's metrics from one result dict, or None if it has no 'coco/bbox_mAP'."""
    if not isinstance(record, dict) or METRICS['mAP'] not in record:
        return None
    return {col: float(record[key]) if key in record else math.nan
            for col, key in METRICS.items()}


def load_result_file(path: str | Path) -> dict[str, float]:
    """COCO bbox metrics from a test-run json (one dict) or a scalars.json (json lines)."""
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f'result file {path} does not exist')
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as err:
        raise ResultFileError(f'result file {path} cannot be read: {err}') from err
    try:
        records = [json.loads(text)]
    except json.JSONDecodeError:
        # mmengine's scalars.json holds one json dict per line (one per logged step).
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ResultFileError(f'result file {path} is not valid json or json lines: '
                                  f'{err}') from err
    for record in reversed(records):
        metrics = _metrics_from_record(record)
        if metrics is not None:
            return metrics
    raise ResultFileError(f"result file {path} has no '{METRICS['mAP']}' entry (expected the "
                          f"json that mmengine writes for a test run with mmdet's CocoMetric; "
                          f"CocoMetric writes none when no detection passed the score "
                          f"threshold)")


def find_result_file(work_dir: str | Path) -> Path:
    """The newest test-run json in ``work_dir``, else the newest training scalars.json."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise ResultFileError(f'work dir {work_dir} does not exist')
    # Runs are sub-directories named by their timestamp (YYYYMMDD_HHMMSS): names sort by time.
    for pattern in ('*/*.json', '*/vis_data/scalars.json'):
        for candidate in sorted(work_dir.glob(pattern), reverse=True):
            try:
                load_result_file(candidate)
            except ResultFileError:
                continue
            return candidate
    raise ResultFileError(f"work dir {work_dir} has no result with '{METRICS['mAP']}' (looked "
                          f'for {work_dir}/<timestamp>/<timestamp>.json from tools/test.py and '
                          f'{work_dir}/<timestamp>/vis_data/scalars.json from training)')


def load_results(path: str | Path) -> tuple[dict[str, float], Path]:
    """(metrics, file they came from) for a result file or a work dir."""
    path = Path(path)
    file = find_result_file(path) if path.is_dir() else path
    return load_result_file(file), file


# -------------------------------------------------------------------------- complexity


def input_size_from_config(cfg) -> tuple[int, int] | None:
    """(H, W) of a fixed-size test input (a Resize without keep_ratio), else None."""
    pipeline = cfg.test_dataloader.dataset.get('pipeline') or cfg.get('test_pipeline', [])
    for step in pipeline:
        if step.get('type') == 'Resize' and not step.get('keep_ratio', False):
            scale = step['scale']
            if isinstance(scale, int):
                return scale, scale
            return int(scale[1]), int(scale[0])  # mmcv scales are (w, h)
    return None


def add_input_size_option(parser: argparse.ArgumentParser) -> None:
    """``--input-size H [W]``; turn its values into (H, W) with ``input_size_option``."""
    parser.add_argument('--input-size', type=int, nargs='+', metavar=('H', 'W'),
                        help="input size for params/FLOPs (default: the test pipeline's fixed "
                             'Resize, else 640x640)')


def input_size_option(parser: argparse.ArgumentParser, values: list[int] | None
                      ) -> tuple[int, int] | None:
    """(H, W) from ``--input-size``'s values (one value: a square), None when not given."""
    if values is None:
        return None
    if len(values) not in (1, 2):
        parser.error(f'--input-size takes H or H W, got {values}')
    return values[0], values[-1]


def model_complexity(config: str | Path, input_size: tuple[int, int] | None,
                     cfg_options: dict | None = None) -> dict[str, float]:
    """params, macs, flops and the (H, W) used, of the detector built from ``config`` with
    ``cfg_options`` (``--cfg-options``-style keys) merged in."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    from sasa_det.analysis import complexity

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f'config file {config} does not exist')
    cfg = Config.fromfile(str(config))  # also imports custom_imports (sasa_det)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    size = input_size or input_size_from_config(cfg) or (640, 640)
    model = MODELS.build(cfg.model)
    counts = complexity(model, (3, *size))
    return dict(counts, input_size=size)


# ------------------------------------------------------------------------ table, plot


def format_table(rows: list[dict], with_results: bool) -> str:
    """A Markdown table: model, input, params (M), GMACs, GFLOPs [, mAP ... APl]."""
    header = ['model', 'input', 'params (M)', 'GMACs', 'GFLOPs']
    if with_results:
        header += list(METRICS)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    for row in rows:
        cells = [row['model'], '{}x{}'.format(*row['input_size']), f"{row['params'] / 1e6:.2f}",
                 f"{row['macs'] / 1e9:.3f}", f"{row['flops'] / 1e9:.3f}"]
        if with_results:
            # CocoMetric writes -1 for an area range with no objects (APl on small images).
            cells += ['n/a' if math.isnan(row[col]) or row[col] < 0 else f'{row[col]:.3f}'
                      for col in METRICS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _scatter(ax, points: list[dict], title: str, xlabel: str) -> None:
    """mAP against GFLOPs, marker area proportional to the parameter count."""
    largest = max(p['params'] for p in points)
    for p in points:
        ax.scatter(p['gflops'], p['mAP'], s=60 + 600 * p['params'] / largest, alpha=0.6,
                   label=f"{p['model']} ({p['params'] / 1e6:.2f}M params)")
        ax.annotate(f"{p['mAP']:.3f}", (p['gflops'], p['mAP']), textcoords='offset points',
                    xytext=(8, 8), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('bbox mAP@[.5:.95]')
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    gflops = [p['gflops'] for p in points]
    maps = [p['mAP'] for p in points]
    ax.set_xlim(0, max(gflops) * 1.3)
    ax.set_ylim(max(0.0, min(maps) - 0.1), min(1.0, max(maps) + 0.1))
    legend = ax.legend(fontsize=7, loc='lower right')
    for handle in legend.legend_handles:  # same small marker for every entry
        handle.set_sizes([40])


def save_plot(rows: list[dict], path: str | Path, paper: bool) -> Path:
    """Save the mAP-vs-GFLOPs scatter (with the paper's COCO points in a second panel)."""
    import matplotlib
    matplotlib.use('Agg')  # no display needed
    import matplotlib.pyplot as plt

    ours = [dict(model=r['model'], params=r['params'], gflops=r['flops'] / 1e9, mAP=r['mAP'])
            for r in rows if not math.isnan(r['mAP'])]
    if not ours:
        raise ValueError('no model has an mAP to plot')
    size = '{}x{}'.format(*rows[0]['input_size'])
    fig, axes = plt.subplots(1, 2 if paper else 1, figsize=(12 if paper else 6.5, 4.8),
                             squeeze=False)
    _scatter(axes[0][0], ours, f'this run (input {size})', 'GFLOPs (2 x multiply-adds)')
    if paper:
        _scatter(axes[0][1], PAPER_POINTS, 'paper: COCO, 640x640',
                 "FLOPS (B), as the paper's COCO table reports them")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='mmdet config files, one per model')
    parser.add_argument('--results', nargs='+',
                        help='one per config: a work dir or a result json (default: '
                             'work_dirs/<config name>)')
    parser.add_argument('--names', nargs='+', help='model names for the table (default: '
                                                   'config file names)')
    add_input_size_option(parser)
    parser.add_argument('--complexity-only', action='store_true',
                        help='only params and FLOPs: no result files needed, no plot')
    parser.add_argument('--plot', default='work_dirs/analyze/map_vs_flops.png',
                        help='PNG path of the mAP-vs-GFLOPs plot')
    parser.add_argument('--paper', action='store_true',
                        help="add a panel with the paper's COCO points for reference")
    parser.add_argument('--table', help='also write the Markdown table to this file')
    args = parser.parse_args(argv)
    for option in ('results', 'names'):
        values = getattr(args, option)
        if values is not None and len(values) != len(args.configs):
            parser.error(f'--{option} has {len(values)} values for {len(args.configs)} configs')
    args.input_size = input_size_option(parser, args.input_size)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    names = args.names or [Path(c).stem for c in args.configs]
    results = args.results or [str(Path('work_dirs') / Path(c).stem) for c in args.configs]
    rows = []
    try:
        for name, config, result in zip(names, args.configs, results):
            row = dict(model=name)
            if not args.complexity_only:  # read results first: a typo fails before counting
                metrics, source = load_results(result)
                print(f'{name}: results from {source}')
                row.update(metrics)
            row.update(model_complexity(config, args.input_size))
            rows.append(row)
    except (ResultFileError, FileNotFoundError) as err:
        sys.exit(f'analyze.py: error: {err}')
    table = format_table(rows, with_results=not args.complexity_only)
    print(f'\nFLOPs = 2 x multiply-adds; mAP etc. are COCO bbox metrics in [0, 1].\n{table}')
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + '\n', encoding='utf-8')
    if not args.complexity_only:
        plot = save_plot(rows, args.plot, paper=args.paper)
        print(f'\nplot: {plot}')
    return rows


if __name__ == '__main__':
    main()
