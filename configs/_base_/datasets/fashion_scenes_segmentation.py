# Fashion-MNIST scenes in VOC layout, 128 px, 11 classes (background + the 10 garments). Make them once:
#   overhaul-det make-scenes data/fashion_scenes_voc --split train --num-images 2000 --image-size 128 --format voc
#   overhaul-det make-scenes data/fashion_scenes_voc --split val --num-images 200 --image-size 128 --format voc
# data_root reaches every dataset (load_config fills it in; set it with --data-root).
data_root = 'data/fashion_scenes_voc'
classes = ('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
           'Ankle boot')
num_classes = 11
crop_size = (128, 128)
data_preprocessor = dict(type='ImgDataPreprocessor')

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='VOCSegmentation', split='train', train=True, classes=classes,
                 crop_size=crop_size, scale_range=(0.75, 1.5)),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='VOCSegmentation', split='val', train=False, classes=classes,
                 crop_size=crop_size),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='SegmentationMetric', num_classes=num_classes)
test_evaluator = val_evaluator
