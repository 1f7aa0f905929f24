# The paper's Pascal VOC schedule (the official OFD code's commands: --lr 0.007 --batch-size 16 --epochs 50
# --nesterov): SGD lr 0.007 with Nesterov momentum 0.9, wd 5e-4, poly decay (power 0.9) per iteration over 50
# epochs, for a total batch of 16 (e.g. 8 GPUs x 2 or 4 x 4; auto_scale_lr.enable=True scales lr linearly from
# base_batch_size for another). As in that code, the head (ASPP + decoder) and the OFD regressors learn at 10x the
# backbone's rate ('classifier' also matches the aux head).
max_epochs = 50
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='DistillerOptimWrapperConstructor',  # one log line for the frozen teacher, not one per parameter
    optimizer=dict(type='SGD', lr=0.007, momentum=0.9, weight_decay=5e-4, nesterov=True),
    paramwise_cfg=dict(custom_keys={'regressors': dict(lr_mult=10), 'classifier': dict(lr_mult=10)}),
)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
