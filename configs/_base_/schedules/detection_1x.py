# The 1x detection schedule: SGD 0.02 for a total batch of 16 (e.g. 8 GPUs x 2 images), momentum 0.9,
# wd 1e-4, 12 epochs, lr /10 after epochs 8 and 11, linear warm-up over the first 500 iterations.
# With another total batch, scale lr linearly (auto_scale_lr.enable=True does it from base_batch_size).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=12, milestones=[8, 11], gamma=0.1),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
