# ImageNet (or any ImageFolder tree): data/imagenet/{train,val}/<class>/<image>; val/test labels follow train's class
# folders, by name. data_root reaches every dataset (load_config fills it in; set it with --data-root).
data_root = 'data/imagenet'
data_preprocessor = dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])

train_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,  # load_config drops it where num_workers=0
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='ImageFolderDataset', data_prefix='train', train=True, num_classes=1000),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='ImageFolderDataset', data_prefix='val', train=False, num_classes=1000),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
