# mmdet's 1x schedule at the learning rate of mmdet's RetinaNet configs: 12 epochs, SGD lr 0.01
# for batch 16 (8 GPUs x 2), linear warm-up over 500 iterations, lr x 0.1 after epochs 8 and 11.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

# Attention's positional parameters (relative tables, position biases, cosine temperatures) take
# no weight decay; convolutional models have none of them. The constructor hands the optimizer
# one group per set of options rather than mmengine's one group per parameter (same updates,
# far fewer groups to step through: sasa_det/engine/optimizers/merged_groups_constructor.py).
no_decay = dict(decay_mult=0.0)
positional_no_decay = dict(custom_keys={
    '.rel_row': no_decay, '.rel_col': no_decay, '.position_bias': no_decay,
    '.logit_scale': no_decay, '.rel_height': no_decay, '.rel_width': no_decay})

optim_wrapper = dict(constructor='MergedGroupsOptimWrapperConstructor',
                     optimizer=dict(lr=0.01), paramwise_cfg=positional_no_decay)
