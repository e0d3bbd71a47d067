"""sasa-det: Stand-Alone Self-Attention (Ramachandran et al., NeurIPS 2019) for MMDetection.

Importing the package registers its modules: the conv type 'SASA' in mmcv's registry, the
backbones, necks and heads in mmdet's, and the sasa_resnet* models in timm's. ``sasa_det.ops``,
``sasa_det.layers`` and ``sasa_det.analysis`` need only PyTorch; the registrations need OpenMMLab, which every
regular install has (it is in install_requires).
"""
import importlib.util

__version__ = '0.1.0'

from . import analysis, layers, ops  # noqa: E402,F401

if importlib.util.find_spec('mmengine') is not None:
    from . import runtime  # noqa: F401  (safe checkpoint loading for mmengine)
    from . import reliability  # noqa: F401
    from . import models  # noqa: F401
if importlib.util.find_spec('timm') is not None:
    from . import timm_models  # noqa: F401
