# mmdet's 1x schedule as its RetinaNet configs use it: 12 epochs, SGD lr 0.01 for batch 16
# (8 GPUs x 2), linear warm-up over 500 iterations, lr x 0.1 after epochs 8 and 11.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
# --auto-scale-lr rescales lr from this batch size to the one actually used.
auto_scale_lr = dict(enable=False, base_batch_size=16)
