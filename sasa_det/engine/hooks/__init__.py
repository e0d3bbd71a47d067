from .checkpoint_hook import AtomicCheckpointHook, AtomicLocalBackend
from .nonfinite_loss_hook import NonFiniteLossError, NonFiniteLossHook

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'NonFiniteLossError',
           'NonFiniteLossHook']
