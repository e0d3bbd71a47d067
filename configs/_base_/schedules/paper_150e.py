# The paper's COCO schedule: 150 epochs at batch 64, linear warm-up then cosine decay, and
# SyncBN, since all five models train from scratch.
max_epochs = 150
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# lr: mmdet's RetinaNet 0.01 per 16 images, scaled linearly to 64 (the paper gives no value).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.04, momentum=0.9, weight_decay=0.0001))
param_scheduler = [
    # Schedulers chain: the warm-up factor multiplies the cosine curve's first iterations.
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2000),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
auto_scale_lr = dict(enable=False, base_batch_size=64)

# mmengine's Runner turns every BatchNorm into torch SyncBatchNorm in distributed runs.
sync_bn = 'torch'
