# ofd_deeplabv3_fashion_scenes.py with a student that starts from classification weights, as students elsewhere start
# from ImageNet's: timm mobilenetv2_050 trained on Fashion-MNIST
# (configs/classification/pretrain_mobilenetv2_050_fashionmnist.py), and the DeepLabV3+ resnet18 teacher
# (teacher_deeplabv3plus_resnet18_fashion_scenes.py). Both weight files are shipped; their configs make them:
#   overhaul-det train configs/classification/pretrain_mobilenetv2_050_fashionmnist.py  (then its export)
#   overhaul-det train configs/segmentation/teacher_deeplabv3plus_resnet18_fashion_scenes.py  (then its export)
#   overhaul-det train configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py
# Baseline: --cfg-options model.ofd.alpha=0
# Data: the 2000 train scenes the teacher's body was trained on (as the detector's 2000), so student and teacher
# see the same scenes.
# Recipe: the baseline sweep's best (docs/fair_baselines.md): SGD 0.05 after a 100-iteration warm-up, poly decay
# over 24 epochs; the new head ('classifier': ASPP and the convs after it) at 10x, as in the official OFD
# segmentation code and segmentation_voc_50e.py; the background class, 86% of the pixels, weighted 0.1 in the
# cross-entropy. Inputs are normalised as the classifiers saw them (Fashion-MNIST's mean and std).
_base_ = ['./ofd_deeplabv3_fashion_scenes.py']
max_epochs = 24
optim_wrapper = dict(optimizer=dict(lr=0.05), paramwise_cfg=dict(custom_keys={'classifier': dict(lr_mult=10)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
# VOCSegmentation normalises (model.data_preprocessor only stacks): Fashion-MNIST's mean and std, in [0, 1] units.
fashion_mnist_norm = dict(mean=[0.286, 0.286, 0.286], std=[0.353, 0.353, 0.353])
train_dataloader = dict(dataset=fashion_mnist_norm)
val_dataloader = dict(dataset=fashion_mnist_norm)
test_dataloader = dict(dataset=fashion_mnist_norm)
default_hooks = dict(checkpoint=dict(interval=max_epochs))

# The student's weights channels-last: its OFD step is 1.15-1.19x faster on a CPU (docs/benchmark.md), the same
# training up to rounding.
model = dict(
    student_channels_last=True,
    class_weight=[0.1] + [1.0] * 10,
    teacher=dict(decoder=True, checkpoint='checkpoints/fashion_scenes_deeplabv3plus_resnet18_teacher.safetensors'),
    student=dict(backbone_checkpoint='checkpoints/fashionmnist_mobilenetv2_050.safetensors'),
)
