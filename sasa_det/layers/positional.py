"""Fixed positional embeddings."""
import math

import torch
from torch import Tensor


def sinusoidal_1d(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """(length, dim) Transformer sinusoids of positions 0..length-1 (sin on even, cos on odd)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    pair = torch.arange(dim, device=device) // 2
    inv_freq = torch.exp(-math.log(10000.0) * (2 * pair / dim))
    angle = position * inv_freq
    emb = torch.where(torch.arange(dim, device=device) % 2 == 0, angle.sin(), angle.cos())
    return emb.to(dtype or torch.float32)


def sinusoidal_2d(height: int, width: int, dim: int, device=None, dtype=None) -> Tensor:
    """(H, W, dim) embedding of absolute 2D position: row sinusoids (dim/2) ++ column (dim/2)."""
    half = dim // 2
    rows = sinusoidal_1d(height, half, device, dtype)[:, None, :].expand(height, width, half)
    cols = sinusoidal_1d(width, dim - half, device, dtype)[None, :, :].expand(height, width,
                                                                              dim - half)
    return torch.cat([rows, cols], dim=-1)
