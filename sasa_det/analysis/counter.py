"""Parameters, multiply-adds and FLOPs of a model, counted from one forward pass.

How a forward is counted:

- Modules with a *module rule* (:func:`register_module_rule`; the attention layers of
  :mod:`sasa_det.analysis.attention_rules`) count the functions their own ``forward`` calls by
  that rule, from the shapes they see: the arithmetic of the method, so the count is the same
  whichever kernel runs (the fused C++ op, the sliced loop, the unfold reference). Their child
  modules (projections, norms, pools) are counted as any other module.
- Every other computation is seen at the level of PyTorch functions (a ``TorchFunctionMode``:
  ``F.conv2d``, ``F.linear``, ``F.batch_norm``, ``F.interpolate``, ...) and counted with
  mmengine's per-op rules (:mod:`sasa_det.analysis.standard_rules`), so a convolutional network
  counts exactly as mmengine's ``FlopAnalyzer`` counts it.
- Nothing learned goes uncounted: each parameter outside a module rule is followed through
  views; if it reaches a function without a rule (say ``x * self.gamma``), counting fails with a
  ``ValueError`` naming the parameter and the function (``strict=False`` warns instead).
"""
import warnings
from collections import defaultdict
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .standard_rules import FUNCTION_RULES, PASS_THROUGH

ModuleRule = Callable[[nn.Module, Tuple, object], int]
MODULE_RULES: Dict[Type[nn.Module], ModuleRule] = {}


def register_module_rule(module_type: Type[nn.Module]):
    """Decorator: ``rule(module, inputs, output) -> MACs`` counts what ``module_type.forward``
    computes itself (not its child modules, which are counted as usual)."""
    def register(rule: ModuleRule) -> ModuleRule:
        MODULE_RULES[module_type] = rule
        return rule
    return register


def _module_rule(module: nn.Module) -> Optional[ModuleRule]:
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


class _Counter(TorchFunctionMode):
    """Counts multiply-adds of PyTorch function calls, except those a module-rule unit makes."""

    def __init__(self, parameter_names: Dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.stack = []  # names of the modules now running, outermost first
        self.units = []  # whether each of them has a module rule
        self.own_macs = defaultdict(int)  # module name -> MACs of calls it made itself
        # id -> (tensor, parameter name) for parameters and their views; the tensor is kept
        # alive so ids are not reused during the pass.
        self.derived = {id(p): (p, name) for name, p in parameter_names.items()}
        self.uncounted = defaultdict(set)  # parameter name -> functions that used it uncounted

    def add(self, macs: int) -> None:
        self.own_macs[self.stack[-1] if self.stack else ''] += macs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.units and self.units[-1]:  # a unit's own arithmetic: its rule counts it
            return out
        rule = FUNCTION_RULES.get(func)
        if rule is not None:
            self.add(int(rule(*args, out=out, **kwargs)))
            return out
        touched = [self.derived[id(t)][1] for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, Tensor) and id(t) in self.derived]
        if touched:
            name = getattr(func, '__name__', repr(func))
            if name in PASS_THROUGH:
                for t in tree_flatten(out)[0]:
                    if isinstance(t, Tensor):
                        self.derived[id(t)] = (t, touched[0])
            else:
                for parameter in touched:
                    self.uncounted[parameter].add(name)
        return out


def _count(model: nn.Module, inputs: Tensor, strict: bool) -> Dict[str, int]:
    """Run ``model(inputs)`` in eval mode without grad; return MACs per module name ('' = all)."""
    rules = {module: _module_rule(module) for module in model.modules()}
    # A unit's own parameters are its rule's business; its children's are followed as usual.
    followed = {}
    for name, module in model.named_modules():
        if rules[module] is None:
            for p_name, p in module.named_parameters(recurse=False):
                followed[f'{name}.{p_name}' if name else p_name] = p
    counter = _Counter(followed)

    def counted_forward(name, module, forward):
        # Wrapping the instance's forward (not hooks) also catches direct module.forward(x)
        # calls, which mmdet makes (e.g. bbox_head.forward in a detector's 'tensor' mode).
        def wrapper(*args, **kwargs):
            counter.stack.append(name)
            counter.units.append(rules[module] is not None)
            try:
                output = forward(*args, **kwargs)
                if rules[module] is not None:
                    counter.add(int(rules[module](module, args, output)))
            finally:
                counter.stack.pop()
                counter.units.pop()
            return output
        return wrapper

    patched = {}
    for name, module in model.named_modules():
        patched[module] = module.__dict__.get('forward')
        module.forward = counted_forward(name, module, module.forward)
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()  # inference cost: eval-mode batch norm, as reported in papers
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        for module, forward in patched.items():
            del module.forward
            if forward is not None:
                module.forward = forward
        for module, mode in training.items():
            module.training = mode
    if counter.uncounted:
        message = ('these parameters reach functions that have no multiply-add rule, so their '
                   'compute would go uncounted: ' + '; '.join(
                       f'{name} -> {sorted(funcs)}' for name, funcs in counter.uncounted.items())
                   + '. Add a rule (sasa_det.analysis.register_module_rule) or pass strict=False.')
        if strict:
            raise ValueError(message)
        warnings.warn(message)
    macs = defaultdict(int)  # inclusive: a module's own calls and all its descendants'
    for name, own in counter.own_macs.items():
        macs[''] += own
        parts = name.split('.') if name else []
        for i in range(1, len(parts) + 1):
            macs['.'.join(parts[:i])] += own
    return dict(macs)


def _inputs(model: nn.Module, input_shape: Sequence[int]) -> Tensor:
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    if len(input_shape) != 4:
        raise ValueError(f'input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}')
    reference = next(model.parameters(), None)
    return torch.randn(*input_shape, device=None if reference is None else reference.device,
                       dtype=None if reference is None else reference.dtype)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def complexity(model: nn.Module, input_shape: Sequence[int], strict: bool = True
               ) -> Dict[str, int]:
    """Parameters, multiply-adds and FLOPs of ``model`` on one random input of ``input_shape``.

    ``flops = 2 * macs``, the paper's convention (ResNet-50 at 224: 4.1 GMACs = 8.2 GFLOPs).
    mmengine's ``FlopAnalyzer`` and fvcore report *multiply-adds* under the name "flops": our
    ``macs`` is the number to compare with theirs.

    Args:
        model: any module; called as ``model(x)`` (an mmdet detector runs its ``'tensor'`` mode:
            backbone, neck and head, no post-processing). Counted in eval mode under no_grad;
            the training flags of all submodules are restored afterwards.
        input_shape: (C, H, W) for batch 1, or (N, C, H, W); counts are for the whole batch.
        strict: raise (True) or warn (False) when a parameter reaches a function without a rule.

    Returns:
        dict(params=int, macs=int, flops=int); params counts every parameter once, frozen or not.
    """
    macs = _count(model, _inputs(model, input_shape), strict).get('', 0)
    return dict(params=_parameters(model), macs=macs, flops=2 * macs)


def complexity_breakdown(model: nn.Module, input_shape: Sequence[int], depth: int = 1,
                         strict: bool = True) -> Dict[str, Dict[str, int]]:
    """:func:`complexity` per submodule down to ``depth`` dotted levels ('' is the whole model).

    A module called several times (RetinaNet's shared head convs) sums all its calls.
    """
    macs = _count(model, _inputs(model, input_shape), strict)
    table = {}
    for name, module in model.named_modules():
        if (name.count('.') + 1 if name else 0) <= depth:
            m = macs.get(name, 0)
            table[name] = dict(params=_parameters(module), macs=m, flops=2 * m)
    return table
