# The scenes teacher on CPU: DeepLabV3 (output stride 16, a 128-wide head) on timm resnet18 whose backbone
# starts from the Fashion-MNIST classification teacher (configs/classification/teacher_resnet18_fashionmnist.py).
# Export it for ofd_deeplabv3_fashion_scenes.py:
#   overhaul-det export work_dirs/teacher_deeplabv3_resnet18_fashion_scenes/epoch_5.pth \
#       --out checkpoints/fashion_scenes_deeplabv3_resnet18_teacher.safetensors
_base_ = [
    '../_base_/datasets/fashion_scenes_segmentation.py',
    '../_base_/schedules/segmentation_scenes_8e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 5
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))

model = dict(
    type='SegmentationDistiller',
    teacher=None,
    student=dict(
        backbone='timm/resnet18', output_stride=16, channels=128, atrous_rates=(2, 4, 6),
        pretrained_backbone=True,
        pretrained_cfg_overlay=dict(file='checkpoints/fashionmnist_resnet18_teacher.safetensors', num_classes=10),
    ),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=0),
    data_preprocessor={{_base_.data_preprocessor}},
)
