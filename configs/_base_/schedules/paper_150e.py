# The paper's COCO schedule: 150 epochs at batch 64, linear warm-up then cosine decay, and
# SyncBN, since all five models train from scratch.
_base_ = './schedule_1x.py'  # mmdet's 1x with no decay on attention's positional parameters

max_epochs = 150
train_cfg = dict(max_epochs=max_epochs, val_interval=5)

# lr: mmdet's RetinaNet 0.01 per 16 images, scaled linearly to 64 (the paper gives no value).
optim_wrapper = dict(optimizer=dict(lr=0.04))
param_scheduler = [
    # Schedulers chain: the warm-up factor multiplies the cosine curve's first iterations.
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2000),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=64)

# mmengine's Runner turns every BatchNorm into torch SyncBatchNorm in distributed runs.
sync_bn = 'torch'
