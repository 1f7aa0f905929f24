# A stronger scenes teacher than teacher_deeplabv3_resnet18_fashion_scenes.py (0.126 mIoU after 5 epochs at SGD 0.02
# from the first iteration): the same DeepLabV3 on timm resnet18 (output stride 16, a 128-wide head), its backbone
# from the Fashion-MNIST classification teacher, trained 16 epochs at SGD 0.01 after a 100-iteration warm-up
# (configs/_base_/schedules/segmentation_scenes_pretrained_16e.py), about an hour on 2 CPU cores (~1.7 s/iteration).
# Inputs are normalised with Fashion-MNIST's mean and std, as the backbone's classifier saw them.
#   overhaul-det train configs/segmentation/teacher_deeplabv3_resnet18_fashion_scenes_long.py
#   overhaul-det export work_dirs/teacher_deeplabv3_resnet18_fashion_scenes_long/epoch_16.pth \
#       --out checkpoints/fashion_scenes_deeplabv3_resnet18_teacher_long.safetensors
# The teacher of configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py.
_base_ = [
    '../_base_/datasets/fashion_scenes_segmentation.py',
    '../_base_/schedules/segmentation_scenes_pretrained_16e.py',
    '../_base_/default_runtime.py',
]
# VOCSegmentation normalises (model.data_preprocessor only stacks): Fashion-MNIST's mean and std, in [0, 1] units.
fashion_mnist_norm = dict(mean=[0.286, 0.286, 0.286], std=[0.353, 0.353, 0.353])
train_dataloader = dict(dataset=fashion_mnist_norm)
val_dataloader = dict(dataset=fashion_mnist_norm)
test_dataloader = dict(dataset=fashion_mnist_norm)
default_hooks = dict(checkpoint=dict(interval={{_base_.max_epochs}}))

model = dict(
    type='SegmentationDistiller',
    teacher=None,
    student=dict(backbone='timm/resnet18', output_stride=16, channels=128, atrous_rates=(2, 4, 6),
                 backbone_checkpoint='checkpoints/fashionmnist_resnet18_teacher.safetensors'),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=0),
    data_preprocessor={{_base_.data_preprocessor}},
)
