# PASCAL VOC 2012 segmentation: data/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}.
# The default trains on VOC 'train' (1,464 images). The paper (and the official OFD code, --use-sbd) trains on
# SBD trainaug (10,582 images: VOC train + SBD train and val, minus VOC val): with SBD's benchmark_RELEASE
# unpacked at data/SBD/benchmark_RELEASE (dataset/{img,cls,train.txt,val.txt}; its .mat labels converted to PNGs once by tools/sbd_to_png.py), set
#   --cfg-options train_dataloader.dataset.split=trainaug train_dataloader.dataset.sbd_root=data/SBD/benchmark_RELEASE
# (or, with SBD's labels already as index PNGs in SegmentationClassAug and ImageSets/Segmentation/trainaug.txt,
# split='trainaug', ann_dir='SegmentationClassAug'). Items arrive normalised (ImageNet mean/std); the
# preprocessor stacks them.
# data_root reaches every dataset (load_config fills it in; set it with --data-root).
data_root = 'data/VOCdevkit/VOC2012'
num_classes = 21
crop_size = (513, 513)
data_preprocessor = dict(type='ImgDataPreprocessor')

train_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,  # load_config drops it where num_workers=0
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='VOCSegmentation', split='train', train=True, crop_size=crop_size,
                 scale_range=(0.5, 2.0)),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='VOCSegmentation', split='val', train=False, crop_size=crop_size),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='SegmentationMetric', num_classes=num_classes)
test_evaluator = val_evaluator
