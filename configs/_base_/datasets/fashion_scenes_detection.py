# Fashion-MNIST scenes: 128x128 canvases with 1-6 items, 10 classes (labels 1..10, plus background).
# Make them first:
#   overhaul-det make-scenes data/fashion_scenes --split train --num-images 2000 --format coco
#   overhaul-det make-scenes data/fashion_scenes --split val --num-images 500 --format coco
# data_root reaches every dataset (load_config fills it in; set it with --data-root); the metric reads its dataset's
# ann_file.
data_root = 'data/fashion_scenes'
num_classes = 11

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDetection',
        ann_file='annotations/instances_train.json',
        img_prefix='images/train',
        train=True,
        flip_prob=0.5,
        filter_empty=True,
        num_classes=num_classes,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDetection',
        ann_file='annotations/instances_val.json',
        img_prefix='images/val',
        train=False,
        num_classes=num_classes,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoDetectionMetric')
test_evaluator = val_evaluator
