"""Train a detector from an mmdet config: mmdet's train.py command line, mmengine's Runner.

    python tools/train.py configs/retinanet_sasa_r50.py [--work-dir DIR] [--resume [CKPT]]
        [--amp] [--auto-scale-lr] [--cfg-options key=value ...] [--launcher none|pytorch|slurm]

Multi-GPU: ``tools/dist_train.sh CONFIG GPUS [args]`` (torchrun) or Slurm ``srun ... --launcher
slurm``. Without CUDA, distributed runs use the gloo backend on CPU (see use_cpu_distributed).
"""
import argparse
import os
import os.path as osp
import sys
import warnings

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

# Run from a checkout without `pip install -e .`: make the repository importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import sasa_det  # noqa: E402,F401  (registers the modules the configs name)
from mmdet.utils import setup_cache_size_limit_of_dynamo  # noqa: E402
from sasa_det.engine import download_url_checkpoints  # noqa: E402
from sasa_det.utils import explain_config_errors, keep_freed_memory  # noqa: E402


TRAIN_HELP = """\
Train a detector from an mmdet config with mmengine's Runner (mmdet's train.py command line).
mmengine logs losses, learning rate and ETA as it trains; checkpoints, logs and validation
metrics go to the work dir (default: work_dirs/<config name>/)."""
TRAIN_EXAMPLES = """\
examples:
  python tools/train.py configs/retinanet_sasa_r50.py
  python tools/train.py configs/demo/retinanet_sasa_r26w16_demo.py --work-dir work_dirs/sasa_demo
  python tools/train.py configs/retinanet_sasa_r50.py --amp --resume
  python tools/train.py configs/retinanet_sasa_r50.py --cfg-options model.backbone.depth=26
  bash tools/dist_train.sh configs/retinanet_sasa_r50_paper-150e_coco.py 8   # 8 GPUs (torchrun)"""
TEST_HELP = """\
Test a checkpoint: run the config's test split through the detector with mmengine's Runner and
evaluate it with the config's metric (COCO bbox mAP for the COCO and demo configs). mmengine logs
progress as it goes; the metrics are written under the work dir."""
TEST_EXAMPLES = """\
examples:
  python tools/test.py configs/retinanet_sasa_r50.py work_dirs/retinanet_sasa_r50/epoch_12.pth
  python tools/test.py configs/demo/retinanet_sasa_r26w16_demo.py \\
      "$(cat work_dirs/sasa_demo/last_checkpoint)" --out predictions.pkl --show-dir painted
  bash tools/dist_test.sh configs/retinanet_sasa_r50.py work_dirs/.../epoch_12.pth 8   # 8 GPUs"""


def parse_args(argv=None, test: bool = False) -> argparse.Namespace:
    """mmdet's train.py / test.py arguments (``test`` adds the checkpoint and test options)."""
    parser = argparse.ArgumentParser(description=TEST_HELP if test else TRAIN_HELP,
                                     epilog=TEST_EXAMPLES if test else TRAIN_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file path')
    if test:
        parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and metrics')
    if test:
        parser.add_argument('--out', help='dump predictions to this .pkl file')
        parser.add_argument('--show-dir', help='save painted predictions under work_dir/.../DIR')
    else:
        parser.add_argument('--amp', action='store_true',
                            help='mixed precision: fp16 with dynamic loss scaling on CUDA, '
                                 'bfloat16 autocast on CPU')
        parser.add_argument('--auto-scale-lr', action='store_true',
                            help='scale lr by total batch size / auto_scale_lr.base_batch_size')
        parser.add_argument('--resume', nargs='?', type=str, const='auto',
                            help='resume from this checkpoint, or (no value) from the latest '
                                 'checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries: key=value, e.g. '
                             'train_dataloader.batch_size=4 model.backbone.depth=26')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """Config with --cfg-options, --launcher and the work dir (CLI > config > configs' name).

    URL checkpoints the config names (``load_from``, ``Pretrained`` ``init_cfg``) are downloaded
    here, so that mmengine loads them as local files with torch's safe unpickler.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    use_cpu_distributed(cfg)
    download_url_checkpoints(cfg)
    return cfg


def use_cpu_distributed(cfg: Config) -> None:
    """Make a distributed run work without CUDA: gloo, CPU DDP, BatchNorm in place of SyncBN.

    mmengine's launchers call torch.cuda.set_device and its DDP wrapper passes
    device_ids=[LOCAL_RANK]; neither works on CPU. So on a machine without CUDA we open the
    process group ourselves (Runner then skips its own init) and build DDP with device_ids=None.
    torch's SyncBatchNorm only runs on accelerators: SyncBN configs fall back to per-process BN.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise ValueError(f"launcher={cfg.launcher!r} without CUDA: CPU distributed runs "
                         f"support launcher='pytorch' (torchrun) only")
    cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')  # rank, world size, master from torchrun
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    replaced = _replace_sync_bn(cfg.model)  # SyncBN written in the model's norm_cfg
    if replaced or cfg.get('sync_bn') is not None:  # or Runner's BN -> SyncBN conversion
        warnings.warn('SyncBN needs CUDA; this CPU distributed run uses per-process BatchNorm')
        cfg.sync_bn = None


def _replace_sync_bn(node) -> bool:
    """Turn every norm_cfg type 'SyncBN' under ``node`` into 'BN'; True if any was found."""
    found = False
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'], found = 'BN', True
        for value in node.values():
            found |= _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= _replace_sync_bn(value)
    return found


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner (or cfg.runner_type); a bad value names its config key in the error."""
    with explain_config_errors(cfg):
        return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def main(argv=None) -> None:
    args = parse_args(argv)
    keep_freed_memory()  # freed activations stay mapped for the next step (sasa_det.utils)
    setup_cache_size_limit_of_dynamo()  # as mmdet's train.py: fewer torch.compile recompiles
    cfg = load_config(args)
    if args.amp and torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    elif args.amp:  # mmengine's AmpOptimWrapper needs an accelerator: bfloat16 autocast on CPU
        cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':  # the latest checkpoint (AtomicCheckpointHook: the latest intact)
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
        download_url_checkpoints(cfg)
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
