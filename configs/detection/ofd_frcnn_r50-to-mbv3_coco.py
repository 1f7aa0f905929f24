# OFD on COCO: torchvision's fasterrcnn_resnet50_fpn (its COCO weights, 91 classes; only the backbone body is
# used) -> torchvision's fasterrcnn_mobilenet_v3_large_fpn from the ImageNet MobileNetV3-Large weights; both read
# by their torchvision names from $TORCH_HOME/hub/checkpoints (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth,
# mobilenet_v3_large-8738ca79.pth),
# 1x schedule, 800x1333. Baseline: --cfg-options model.ofd.alpha=0
# alpha: ImageNet's 1e-4 scaled by the weighted teacher elements per image (~0.4M at 224 px, ~7.8M at 800x1216),
# as for the R101 -> R18 pair. Not tuned: search on a log scale.
_base_ = [
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/detection_1x.py',
    '../_base_/default_runtime.py',
]
# Margins come from the teacher's frozen BatchNorm; a BN-free teacher estimates them from its first batch.
# A teacher built from weights has FrozenBatchNorm2d in its body (build_detector's frozen_bn default), which
# always normalises with its stored statistics: teacher_bn='train' could not act there, so 'eval' says
# what runs (the same computation). teacher_bn='train' needs model.teacher.frozen_bn=False.
custom_hooks = []

model = dict(
    type='DetectionDistiller',
    teacher=dict(
        name='fasterrcnn_resnet50_fpn',
        num_classes=91,
        weights='COCO_V1',
    ),
    student=dict(
        name='fasterrcnn_mobilenet_v3_large_fpn',
        weights_backbone='IMAGENET1K_V1',
    ),
    num_classes={{_base_.num_classes}},
    min_size=800,
    max_size=1333,
    ofd=dict(alpha=5e-6, margin='auto', teacher_bn='eval', input_size=(3, 224, 224)),
)
