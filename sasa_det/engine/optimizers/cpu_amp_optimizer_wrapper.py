"""Mixed precision training on CPU: mmengine's ``AmpOptimWrapper`` asserts an accelerator.

:class:`CPUAmpOptimWrapper` runs the forward pass under ``torch.autocast('cpu', dtype)``:
bfloat16 (default; fp32's exponent range, so no loss scaling) or float16 (with torch's dynamic
``GradScaler('cpu')``, as ``AmpOptimWrapper`` does on CUDA). ``tools/train.py --amp`` picks
it when CUDA is not available::

    optim_wrapper = dict(type='CPUAmpOptimWrapper', dtype='bfloat16', optimizer=...)
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

DTYPES = ('bfloat16', 'float16')


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """OptimWrapper with CPU autocast (and loss scaling for float16).

    Args:
        dtype: 'bfloat16' or 'float16', the autocast dtype.
        loss_scale: for float16: 'dynamic', a float (static scale) or GradScaler kwargs.
        **kwargs: OptimWrapper's (optimizer, accumulative_counts, clip_grad).
    """

    def __init__(self, dtype: str = 'bfloat16', loss_scale='dynamic', **kwargs) -> None:
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)
        self.loss_scaler = None
        if dtype == 'float16':
            if loss_scale == 'dynamic':
                scaler_kwargs = {}
            elif isinstance(loss_scale, (int, float)):
                scaler_kwargs = dict(init_scale=float(loss_scale), growth_interval=2**31 - 1)
            elif isinstance(loss_scale, dict):
                scaler_kwargs = dict(loss_scale)
            else:
                raise ValueError(f"loss_scale must be 'dynamic', a float or a dict, "
                                 f'got {loss_scale!r}')
            self.loss_scaler = torch.amp.GradScaler('cpu', **scaler_kwargs)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.loss_scaler is not None:
            loss = self.loss_scaler.scale(loss)
        loss.backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs) -> None:
        if self.loss_scaler is None:
            return super().step(**kwargs)
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)  # clip the true gradients
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)  # skipped if any gradient is inf/nan
        self.loss_scaler.update()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state['loss_scaler'] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop('loss_scaler', None)
        if scaler_state is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_state)
        super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
