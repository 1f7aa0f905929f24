# COCO 2017 boxes: data/coco/{train2017,val2017}/ and data/coco/annotations/instances_{train,val}2017.json.
# The 80 categories become labels 1..80 (sorted ids); num_classes counts the background. Images keep
# their size here: the detector's own transform resizes them (min_size/max_size of the model). data_root reaches
# every dataset (load_config fills it in; set it with --data-root), and the metric reads its dataset's ann_file.
data_root = 'data/coco'
num_classes = 81

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,  # load_config drops it where num_workers=0
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDetection',
        ann_file='annotations/instances_train2017.json',
        img_prefix='train2017',
        train=True,
        flip_prob=0.5,
        filter_empty=True,
        num_classes=num_classes,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDetection',
        ann_file='annotations/instances_val2017.json',
        img_prefix='val2017',
        train=False,
        num_classes=num_classes,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoDetectionMetric')
test_evaluator = val_evaluator
