"""nn.Modules built on :mod:`sasa_det.ops`."""
from .local_self_attention import LocalSelfAttention2d
from .positional import sinusoidal_2d
from .spatially_aware_stem import SpatiallyAwareStem
from .attention_augmented import AAConv2d

__all__ = ['LocalSelfAttention2d', 'sinusoidal_2d', 'SpatiallyAwareStem', 'AAConv2d']
