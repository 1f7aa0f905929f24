# The paper's ImageNet schedule: SGD 0.1 for a total batch of 256 (e.g. 8 GPUs x 32; auto_scale_lr.enable=True
# scales lr linearly from base_batch_size for another), Nesterov momentum 0.9, wd 1e-4, 100 epochs, lr /10 at 30/60/90.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
)
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[30, 60, 90], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=256)
