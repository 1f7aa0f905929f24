# timm mobilenetv2_050 trained alone as a Fashion-MNIST classifier (all 60k images, 32 px, the teacher's data
# pipeline): the classification weights the scenes segmentation student starts from, as students elsewhere
# start from ImageNet weights (configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py).
#   overhaul-det train configs/classification/pretrain_mobilenetv2_050_fashionmnist.py
#   overhaul-det export work_dirs/pretrain_mobilenetv2_050_fashionmnist/epoch_10.pth \
#       --out checkpoints/fashionmnist_mobilenetv2_050.safetensors
# 10 epochs rather than the ResNet18 teacher's 5: a 0.5x MobileNetV2 costs a fraction of its step.
_base_ = ['./teacher_resnet18_fashionmnist.py']
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, T_max=max_epochs, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))

model = dict(student=dict(name='timm/mobilenetv2_050'))
