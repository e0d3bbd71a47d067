# Runtime shared by all configs: mmdet's hooks, logging and visualiser, and the sasa_det modules.
default_scope = 'mmdet'
custom_imports = dict(imports=['sasa_det'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # One checkpoint per epoch adds up over 150 epochs: keep the latest three.
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
# A NaN/Inf loss or gradient stops training before the optimizer step, naming the iteration and
# every loss term, so neither the weights nor the last checkpoint are touched
# (mode='skip' drops that update instead).
custom_hooks = [dict(type='NonFiniteLossHook', mode='stop')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo when there is no CUDA.
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
