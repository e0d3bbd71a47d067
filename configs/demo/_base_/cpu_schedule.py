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
# One recipe for every demo model, conv and attention alike: the best measured for the conv model
# (docs/ablations.md). Attention's positional parameters (relative tables, position biases,
# cosine temperatures) take no weight decay; the conv model has none of them. Norms keep theirs,
# as in the conv model's measured recipe. The optimizer step is written for speed on small
# models: one parameter group per set of options (mmengine's constructor makes one per parameter),
# torch's fused AdamW and the clip's norms in one foreach call: 4 ms a step for either demo model
# against 12-20 ms with one group per parameter and the per-tensor loops (docs/performance.md).
no_decay = dict(decay_mult=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='MergedGroupsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.003, weight_decay=0.05, fused=True),
    clip_grad=dict(max_norm=35, norm_type=2, foreach=True),
    paramwise_cfg=dict(custom_keys={
        '.rel_row': no_decay, '.rel_col': no_decay, '.position_bias': no_decay,
        '.logit_scale': no_decay}))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)

# A fixed seed, so that the demo repeats its numbers on the same machine (docs/ablations.md has
# the spread over unseeded runs).
randomness = dict(seed=0)
