# OFD on COCO: a Faster R-CNN R101-FPN teacher -> R18-FPN student (torchvision ResNets under torchvision's
# FPN), 1x schedule, 800x1333. Teacher: the detector trained by frcnn_r101_coco.py (only its backbone body
# is used; make it with frcnn_r101_coco.py); student backbone: torchvision's ImageNet ResNet18 weights
# (ResNet18_Weights.IMAGENET1K_V1 from $TORCH_HOME/hub/checkpoints). Baseline: --cfg-options model.ofd.alpha=0
# alpha: the loss sums over feature elements, so ImageNet's 1e-4 is scaled by the weighted teacher elements
# per image, ~0.4M for ResNet50 at 224 px against ~7.8M for ResNet50/101 at 800x1216: 5e-6. Not tuned:
# search on a log scale.
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
        name='resnet101',
        checkpoint='checkpoints/coco_frcnn_r101_teacher.safetensors',
    ),
    student=dict(name='resnet18', weights_backbone='IMAGENET1K_V1'),
    num_classes={{_base_.num_classes}},
    min_size=800,
    max_size=1333,
    ofd=dict(alpha=5e-6, margin='auto', teacher_bn='eval', input_size=(3, 224, 224)),
)
