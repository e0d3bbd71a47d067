"""Runtime fixes for mmengine 0.10.7 on torch >= 2.6: safe loading of mmengine's checkpoints.

Importing this package (``import sasa_det`` does) applies them; see :mod:`.safe_checkpoint`.
"""
from .safe_checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals

allow_mmengine_checkpoints()

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals']
