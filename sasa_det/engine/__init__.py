"""Training-engine parts a config selects: hooks, an optimizer wrapper, checkpoint files.

Importing registers ``AtomicCheckpointHook`` and ``NonFiniteLossHook`` in mmengine's ``HOOKS``,
``CPUAmpOptimWrapper`` in its ``OPTIM_WRAPPERS``, ``MergedGroupsOptimWrapperConstructor`` in its
``OPTIM_WRAPPER_CONSTRUCTORS``, the file backend ``'atomic_local'``, and the globals of
mmengine's checkpoints in torch's ``weights_only`` allowlist
(:func:`~.checkpoint.allow_mmengine_checkpoints`). It replaces nothing of mmengine's: a run uses
these parts only where its config names them.
"""
from .checkpoint import (allow_mmengine_checkpoints, atomic_write_bytes, checkpoint_problem,
                         download_url_checkpoints, find_latest_intact_checkpoint)
from .hooks import AtomicCheckpointHook, NonFiniteLossError, NonFiniteLossHook
from .optimizers import CPUAmpOptimWrapper, MergedGroupsOptimWrapperConstructor

allow_mmengine_checkpoints()

__all__ = ['AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'MergedGroupsOptimWrapperConstructor',
           'NonFiniteLossError', 'NonFiniteLossHook', 'allow_mmengine_checkpoints',
           'atomic_write_bytes', 'checkpoint_problem', 'download_url_checkpoints',
           'find_latest_intact_checkpoint']
