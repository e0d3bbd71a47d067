"""Multiply-add counts of standard PyTorch functions, with mmengine's ``FlopAnalyzer`` rules.

Each rule maps one call ``func(*args, **kwargs) -> out`` to a number of multiply-adds (MACs), the
unit mmengine (like fvcore) reports under the name "flops". The rules are mmengine's per-op
handles (``mmengine/analysis/jit_handles.py``) restated on the Python-level call, so a
convolutional model counts exactly as ``FlopAnalyzer`` counts it:

- convolution: one MAC per output element per ``C_in / groups * kh * kw`` weight; bias not counted.
- linear / matmul / mm / bmm / addmm: one MAC per output element per contracted element; bias
  not counted.
- batch norm: 2 per element in inference (scale and shift), 1 without affine; 5 (4) in training,
  as mmengine. group/layer/instance norm: 5 per element with affine, 4 without.
- nearest upsampling 1 per output element, bilinear 4 (mmengine's rules; other modes uncounted).
- average pooling, adaptive or not: 1 per input element (mmengine counts ``adaptive_avg_pool2d``
  so; it skips ``avg_pool2d``, which we count the same way so that strided attention's 2x2
  pool is not free).
- Everything else is free by this convention: activations, max pooling, residual additions,
  softmax, reshapes. :mod:`sasa_det.analysis.counter` refuses models whose *parameters* reach an
  uncounted function, so no learned layer goes uncounted.
"""
import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor


def _conv(input: Tensor, weight: Tensor, *args, out: Tensor, **kwargs) -> int:
    # weight (C_out, C_in / groups, *kernel): every output element reads one such slice.
    return out.numel() * math.prod(weight.shape[1:])


def _linear(input: Tensor, weight: Tensor, *args, out: Tensor, **kwargs) -> int:
    return input.numel() * weight.shape[0]


def _matmul(a: Tensor, b: Tensor, *args, out: Tensor, **kwargs) -> int:
    return out.numel() * a.shape[-1]


def _addmm(bias: Tensor, a: Tensor, b: Tensor, *args, out: Tensor, **kwargs) -> int:
    return out.numel() * a.shape[-1]


def _batch_norm(input: Tensor, running_mean=None, running_var=None, weight=None, bias=None,
                training: bool = False, *args, out: Tensor, **kwargs) -> int:
    if training or running_mean is None:
        return input.numel() * (5 if weight is not None else 4)
    return input.numel() * (2 if weight is not None else 1)


def _group_norm(input: Tensor, num_groups: int, weight=None, *args, out: Tensor, **kwargs) -> int:
    return input.numel() * (5 if weight is not None else 4)


def _layer_norm(input: Tensor, normalized_shape, weight=None, *args, out: Tensor,
                **kwargs) -> int:
    return input.numel() * (5 if weight is not None else 4)


def _instance_norm(input: Tensor, running_mean=None, running_var=None, weight=None, *args,
                   out: Tensor, **kwargs) -> int:
    return input.numel() * (5 if weight is not None else 4)


UPSAMPLE_COST = {'nearest': 1, 'bilinear': 4}


def _interpolate(input: Tensor, *args, out: Tensor, mode: str = 'nearest', **kwargs) -> int:
    if len(args) >= 3:  # interpolate(input, size, scale_factor, mode, ...)
        mode = args[2]
    if mode not in UPSAMPLE_COST:
        raise NotImplementedError(f'no multiply-add rule for interpolate mode={mode!r}; '
                                  f'counted modes: {tuple(UPSAMPLE_COST)}')
    return out.numel() * UPSAMPLE_COST[mode]


def _average_pool(input: Tensor, *args, out: Tensor, **kwargs) -> int:
    return input.numel()


FUNCTION_RULES: Dict[Callable, Callable[..., int]] = {
    torch.conv1d: _conv, torch.conv2d: _conv, torch.conv3d: _conv,
    F.linear: _linear,
    torch.matmul: _matmul, Tensor.matmul: _matmul, Tensor.__matmul__: _matmul,
    torch.mm: _matmul, Tensor.mm: _matmul, torch.bmm: _matmul, Tensor.bmm: _matmul,
    torch.addmm: _addmm,
    F.batch_norm: _batch_norm, F.group_norm: _group_norm, F.layer_norm: _layer_norm,
    F.instance_norm: _instance_norm,
    F.interpolate: _interpolate,
    F.adaptive_avg_pool1d: _average_pool, F.adaptive_avg_pool2d: _average_pool,
    F.adaptive_avg_pool3d: _average_pool, F.avg_pool1d: _average_pool,
    F.avg_pool2d: _average_pool, F.avg_pool3d: _average_pool,
}
"""Python-level function -> rule(*args, out=output, **kwargs) returning multiply-adds."""

# Functions that may take a parameter without computing with it: shape queries and views.
# Their tensor outputs stay "parameter-derived", so a later uncounted use is still caught.
PASS_THROUGH = frozenset({
    '__get__', '__getitem__', 'size', 'dim', 'numel', 'view', 'view_as', 'reshape', 'reshape_as',
    't', 'transpose', 'permute', 'flatten', 'unflatten', 'contiguous', 'to', 'type', 'expand',
    'expand_as', 'unsqueeze', 'squeeze', 'detach', 'chunk', 'split', 'narrow', 'unbind',
    'select', 'float', 'half', 'double', 'bfloat16', 'is_floating_point', 'is_contiguous',
    '__len__', '__hash__', '__eq__', '__repr__', '__format__', 'requires_grad_', 'data_ptr',
    'stride', 'element_size', 'get_device', '__bool__', 'is_complex', 'dtype', 'device',
})
