# mmdet's runtime (hooks, logging, visualiser) with sasa_det's modules and two hooks of its own.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['sasa_det'], allow_failed_imports=False)

default_hooks = dict(
    # Writes each checkpoint atomically, deletes the old ones only after the new one is complete,
    # and --resume starts from the newest intact checkpoint. One checkpoint per epoch adds up
    # over 150 epochs: keep the latest three.
    checkpoint=dict(type='AtomicCheckpointHook', max_keep_ckpts=3))
# A NaN/Inf loss or gradient stops training before the optimizer step, naming the iteration and
# every loss term, so neither the weights nor the last checkpoint are touched
# (mode='skip' drops that update instead).
custom_hooks = [dict(type='NonFiniteLossHook', mode='stop')]
