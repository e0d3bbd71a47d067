"""sasa-det: Stand-Alone Self-Attention (Ramachandran et al., NeurIPS 2019) for MMDetection.

Importing the package registers its modules: the conv type 'SASA' in mmcv's registry, the
backbones, necks and heads in mmdet's, and the sasa_resnet* models in timm's.
"""
__version__ = '0.1.0'

from . import ops, layers  # noqa: E402,F401
from . import runtime  # noqa: E402,F401  (safe checkpoint loading for mmengine)
from . import models  # noqa: E402,F401
from . import timm_models  # noqa: E402,F401
from . import reliability  # noqa: E402,F401
