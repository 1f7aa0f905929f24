# The detection teacher of the Fashion-MNIST scenes: Faster R-CNN + FPN on torchvision's ResNet18, trained
# alone (ofd.alpha=0). Its body starts from the shipped Fashion-MNIST classifier (the items are the same
# 28 px garments, here at 0.8-2x scale), with ordinary BatchNorm learning the scenes' statistics (a
# FrozenBatchNorm2d body would leave teacher_bn='train' nothing to do), every stage trainable, and a
# 128-channel FPN (half torchvision's: the scenes are 128 px and the run is on a CPU).
# Train: overhaul-det train configs/detection/teacher_frcnn_resnet18_fashion_scenes.py
# Ship:  overhaul-det export work_dirs/teacher_frcnn_resnet18_fashion_scenes/epoch_8.pth \
#            --out checkpoints/fashion_scenes_frcnn_resnet18_teacher.safetensors
_base_ = ['./ofd_frcnn_fashion_scenes.py']

max_epochs = 8
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[6], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs)

model = dict(
    _delete_=True,
    type='DetectionDistiller',
    teacher=None,
    student=dict(
        name='resnet18',
        backbone_checkpoint='checkpoints/fashionmnist_resnet18_teacher.safetensors',
        frozen_bn=False,
        trainable_layers=5,
        fpn_channels=128,
        image_mean=[0.286, 0.286, 0.286],
        image_std=[0.353, 0.353, 0.353],
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        box_batch_size_per_image=128,
    ),
    num_classes={{_base_.num_classes}},
    min_size={{_base_.image_size}},
    max_size={{_base_.image_size}},
    ofd=dict(alpha=0),
)
