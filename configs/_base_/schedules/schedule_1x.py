# mmdet's 1x schedule at the learning rate of mmdet's RetinaNet configs: 12 epochs, SGD lr 0.01
# for batch 16 (8 GPUs x 2), linear warm-up over 500 iterations, lr x 0.1 after epochs 8 and 11.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(optimizer=dict(lr=0.01))
