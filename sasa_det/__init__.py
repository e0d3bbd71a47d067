"""sasa-det: Stand-Alone Self-Attention (Ramachandran et al., NeurIPS 2019) for MMDetection.

Importing the package registers its parts and changes nothing else: the conv types in mmcv's
registry, the backbones, necks and heads in mmdet's, the dataset ``CheckedCocoDataset``, the
hooks ``AtomicCheckpointHook`` and ``NonFiniteLossHook``, the optimizer wrapper
``CPUAmpOptimWrapper``, the optimizer constructor ``MergedGroupsOptimWrapperConstructor``, the
file backend ``'atomic_local'``, the globals of mmengine's checkpoints in torch's
``weights_only`` allowlist, and the ``sasa_resnet*`` models in timm's registry. A run uses a
part only where its config names it.

``sasa_det.ops``, ``sasa_det.layers`` and ``sasa_det.analysis`` need only PyTorch; the rest needs
OpenMMLab (mmengine, mmcv, mmdet) and timm, which every regular install has (install_requires).
"""
import importlib.util

__version__ = '0.1.0'

from . import analysis, layers, ops  # noqa: E402,F401

if importlib.util.find_spec('mmdet') is not None:
    from . import datasets, engine, models, utils  # noqa: F401
if importlib.util.find_spec('timm') is not None:
    from . import timm_models  # noqa: F401
