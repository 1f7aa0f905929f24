# A CPU schedule for the scenes with a backbone from classification weights and a head from scratch: SGD 0.01,
# a 100-iteration linear warm-up (the fresh head's BN statistics settle before the pretrained backbone takes
# large steps), then poly decay per iteration over 16 epochs (2000 iterations of 8 of the 1000 train scenes);
# the OFD regressors at 10x.
max_epochs = 16
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='DistillerOptimWrapperConstructor',  # one log line for the frozen teacher, not one per parameter
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4),
    paramwise_cfg=dict(custom_keys={'regressors': dict(lr_mult=10)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
