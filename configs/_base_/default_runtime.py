# mmdet's runtime (hooks, logging, visualiser, env) plus the sasa_det registrations.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['sasa_det'], allow_failed_imports=False)

# One checkpoint per epoch adds up over 150 epochs: keep the latest three.
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
