# A short CPU schedule for the scenes (models from scratch): SGD 0.02, poly decay per iteration, 8 epochs;
# the OFD regressors at 10x.
max_epochs = 8
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='DistillerOptimWrapperConstructor',  # one log line for the frozen teacher, not one per parameter
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=5e-4),
    paramwise_cfg=dict(custom_keys={'regressors': dict(lr_mult=10)}),
)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
