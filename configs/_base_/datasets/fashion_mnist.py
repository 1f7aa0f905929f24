# Fashion-MNIST from Debian's dataset-fashion-mnist (or torchvision's download), 3 channels.
data_preprocessor = dict(type='ImgDataPreprocessor', mean=[72.93, 72.93, 72.93], std=[90.02, 90.02, 90.02])

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='FashionMNISTDataset', train=True, augment=True),
)
val_dataloader = dict(
    batch_size=250,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='FashionMNISTDataset', train=False),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
