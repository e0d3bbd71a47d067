"""Stop (or skip the step) on a non-finite loss or gradient, before the model is changed.

mmengine's default is to step the optimizer with a NaN loss: the weights become NaN, training
goes on producing NaN, and the next ``CheckpointHook`` save writes the NaN model over the last
good one (and ``last_checkpoint`` points at it). :class:`NonFiniteLossHook` checks each
iteration *before* the optimizer step:

- the total loss (after ``parse_losses``): if it is NaN or Inf, backward is not run;
- the gradients, unless the optimizer wrapper has a loss scaler (fp16 ``AmpOptimWrapper``,
  ``CPUAmpOptimWrapper``), which already skips steps with overflowing gradients.

``mode='stop'`` (default) raises :class:`NonFiniteLossError` giving the iteration (1-based, as
in mmengine's log) and every loss term; the weights are those of the previous iteration and no
checkpoint is written, so the last checkpoint on disk is the last good one. ``mode='skip'`` logs
the same message, leaves the weights and optimizer state untouched for that iteration and goes
on; ``max_consecutive_skips`` non-finite iterations in a row still stop the run. In distributed
training the ranks agree (all-reduce) so that all of them skip or stop together.
"""
from typing import Dict, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

MODES = ('stop', 'skip')


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/Inf loss or gradient; the model was not updated with it."""


def _all_ranks_finite(finite: bool) -> bool:
    """True only if ``finite`` holds on every rank (a single process: ``finite`` itself)."""
    from mmengine import dist
    if dist.get_world_size() == 1:
        return finite
    flag = torch.tensor(float(finite), device=dist.get_comm_device())
    dist.all_reduce(flag, op='min')
    return bool(flag.item())


def _format_terms(log_vars: Optional[Dict]) -> str:
    if not log_vars:
        return '(loss terms unavailable)'
    return ', '.join(f'{name}={float(torch.as_tensor(value).detach()):.6g}'
                     for name, value in log_vars.items())


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop or skip an iteration whose loss or gradients are NaN/Inf, before the optimizer step.

    Args:
        mode: 'stop' raises :class:`NonFiniteLossError`; 'skip' drops the update and goes on.
        check_grads: also check gradients before each step (not with a loss scaler).
        max_consecutive_skips: in 'skip' mode, stop after this many non-finite iterations in a row.
    """

    priority = 'VERY_HIGH'

    def __init__(self, mode: str = 'stop', check_grads: bool = True,
                 max_consecutive_skips: int = 10) -> None:
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 1:
            raise ValueError(f'max_consecutive_skips must be a positive integer, '
                             f'got {max_consecutive_skips!r}')
        self.mode = mode
        self.check_grads = check_grads
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_iters = []  # 1-based iterations skipped in 'skip' mode
        self._consecutive = 0
        self._log_vars = None
        self._runner = None

    def before_train(self, runner) -> None:
        """Wrap the model's ``parse_losses`` and the optimizer wrapper's update (instance level)."""
        from mmengine.optim import OptimWrapper, OptimWrapperDict
        self._runner = runner
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        parse_losses = model.parse_losses

        def recording_parse_losses(losses):
            loss, log_vars = parse_losses(losses)
            self._log_vars = log_vars
            return loss, log_vars

        model.parse_losses = recording_parse_losses
        wrappers = (runner.optim_wrapper.values()
                    if isinstance(runner.optim_wrapper, OptimWrapperDict)
                    else [runner.optim_wrapper])
        for wrapper in wrappers:
            if isinstance(wrapper, OptimWrapper):
                # A loss scaler (fp16) expects overflowing gradients and skips those steps.
                self._guard(wrapper, check_grads=self.check_grads
                            and getattr(wrapper, 'loss_scaler', None) is None)

    def _guard(self, wrapper, check_grads: bool) -> None:
        update_params, step = wrapper.update_params, wrapper.step

        def guarded_update_params(loss, *args, **kwargs):
            finite = bool(torch.isfinite(loss.detach()).all())
            if _all_ranks_finite(finite):
                return update_params(loss, *args, **kwargs)
            self._non_finite('loss', wrapper)

        def guarded_step(*args, **kwargs):
            if check_grads:
                grads = [p.grad for group in wrapper.optimizer.param_groups
                         for p in group['params'] if p.grad is not None]
                # One flag per tensor, reduced on the device: a single host sync per step.
                finite = not grads or bool(torch.stack(
                    [torch.isfinite(g).all() for g in grads]).all())
                if not _all_ranks_finite(finite):
                    return self._non_finite('gradient', wrapper)
            self._consecutive = 0
            return step(*args, **kwargs)

        wrapper.update_params = guarded_update_params
        wrapper.step = guarded_step

    def _non_finite(self, what: str, wrapper) -> None:
        runner = self._runner
        iteration = runner.iter + 1
        message = (f'Non-finite {what} at iteration {iteration} (epoch {runner.epoch + 1}): '
                   f'{_format_terms(self._log_vars)}.')
        wrapper.zero_grad()
        if self.mode == 'stop':
            raise NonFiniteLossError(
                f'{message} Training stopped before the optimizer step: the model was not '
                'updated and no checkpoint was written, so the last checkpoint in '
                f'{runner.work_dir} is the last good one. Use '
                "NonFiniteLossHook(mode='skip') to skip such iterations instead.")
        self._consecutive += 1
        self.skipped_iters.append(iteration)
        if self._consecutive >= self.max_consecutive_skips:
            raise NonFiniteLossError(
                f'{message} {self._consecutive} non-finite iterations in a row '
                f'(max_consecutive_skips={self.max_consecutive_skips}); training stopped, the '
                'model holds the weights of the last finite iteration.')
        runner.logger.warning(f'{message} Optimizer step skipped (NonFiniteLossHook, '
                              "mode='skip').")

