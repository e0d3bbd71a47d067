"""nn.Modules built on :mod:`sasa_det.ops`."""
from .local_self_attention import LocalSelfAttention2d
from .positional import sinusoidal_2d

__all__ = ['LocalSelfAttention2d', 'sinusoidal_2d']
