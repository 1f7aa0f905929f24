# ofd_deeplabv3_fashion_scenes.py with a student that starts from classification weights, as students elsewhere start
# from ImageNet's: timm mobilenetv2_050 trained on Fashion-MNIST
# (configs/classification/pretrain_mobilenetv2_050_fashionmnist.py), and the DeepLabV3+ resnet18 teacher
# (teacher_deeplabv3plus_resnet18_fashion_scenes.py). Both weight files are shipped; their configs make them:
#   overhaul-det train configs/classification/pretrain_mobilenetv2_050_fashionmnist.py  (then its export)
#   overhaul-det train configs/segmentation/teacher_deeplabv3plus_resnet18_fashion_scenes.py  (then its export)
#   overhaul-det train configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py
# Baseline: --cfg-options model.ofd.alpha=0
# Schedule: the teacher's (configs/_base_/schedules/segmentation_scenes_pretrained_16e.py: SGD 0.01, a
# 100-iteration warm-up, poly over 16 epochs) rather than 8 epochs at 0.02 from the first step: a pretrained backbone
# under a fresh head takes a smaller rate, and the head needs the iterations. The new head ('classifier': ASPP and
# the convs after it) learns at 10x, as in the official OFD segmentation code and segmentation_voc_50e.py.
# Inputs are normalised as the classifiers saw them (Fashion-MNIST's mean and std), for teacher and student alike.
_base_ = ['./ofd_deeplabv3_fashion_scenes.py']
max_epochs = 16
optim_wrapper = dict(optimizer=dict(lr=0.01), paramwise_cfg=dict(custom_keys={'classifier': dict(lr_mult=10)}))
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
    teacher=dict(decoder=True, checkpoint='checkpoints/fashion_scenes_deeplabv3plus_resnet18_teacher.safetensors'),
    student=dict(backbone_checkpoint='checkpoints/fashionmnist_mobilenetv2_050.safetensors'),
)
