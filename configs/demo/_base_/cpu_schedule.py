# The project's runtime with a short iteration-based schedule for a 2-core CPU in place of
# mmdet's 1x: linear warm-up, then cosine decay. AdamW rather than SGD: from scratch and with a
# few hundred steps, it moves the small-initialised head weights (N(0, 0.01)) far faster.
# No validation while training: tools/test.py evaluates the final checkpoint.
_base_ = '../../_base_/default_runtime.py'

max_iters = 1500

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_begin=max_iters + 1, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min_ratio=0.01),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.001, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)

# A fixed seed, so that the demo repeats its numbers on the same machine (docs/ablations.md has
# the spread over unseeded runs).
randomness = dict(seed=0)
