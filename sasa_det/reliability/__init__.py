"""Reliability: atomic checkpoints, corrupt-checkpoint fallback, non-finite loss and data checks.

Importing it (``import sasa_det`` does) makes mmengine's local checkpoint writes atomic and its
auto-resume skip damaged checkpoints (:mod:`.checkpoints`), and registers the hooks
``NonFiniteLossHook`` (:mod:`.nonfinite`), ``MemoryMonitorHook`` (:mod:`.memory`, used by
``tools/soak.py``), the optimizer wrapper ``CPUAmpOptimWrapper`` (:mod:`.cpu_amp`, mixed
precision on CPU) and, with mmdet, the dataset ``CheckedCocoDataset``
(:mod:`.checked_coco`). :mod:`.config_errors` names the config key behind a bad value.
"""
import importlib.util

from . import checkpoints
from .checkpoints import atomic_write_bytes, checkpoint_problem, find_latest_good_checkpoint
from .coco_checks import CocoAnnotationError, check_coco_annotations
from .cpu_amp import CPUAmpOptimWrapper
from .config_errors import ConfigValueError, build_model_checked, explain_config_errors
from .memory import MemoryMonitorHook
from .nonfinite import NonFiniteLossError, NonFiniteLossHook

checkpoints.install()

__all__ = ['atomic_write_bytes', 'checkpoint_problem', 'find_latest_good_checkpoint',
           'CocoAnnotationError', 'check_coco_annotations', 'ConfigValueError',
           'build_model_checked', 'explain_config_errors', 'NonFiniteLossError',
           'NonFiniteLossHook', 'MemoryMonitorHook', 'CPUAmpOptimWrapper']

if importlib.util.find_spec('mmdet') is not None:
    from .checked_coco import CheckedCocoDataset, SampleLoadError  # noqa: F401
    __all__ += ['CheckedCocoDataset', 'SampleLoadError']
