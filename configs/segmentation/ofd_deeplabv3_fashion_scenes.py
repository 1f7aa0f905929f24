# OFD on CPU: DeepLabV3 resnet18 teacher -> mobilenetv2_050 student on the 128 px Fashion-MNIST scenes.
# Six taps (four stage ends, ASPP projection, the head's last conv + BN), weighted 1/8 .. 1, 1, 1/16. The loss
# is a sum over feature elements, so alpha grows as feature maps shrink: these maps hold ~60x fewer elements
# than VOC's at 513 px, hence 1e-3 rather than 1e-5 (a starting point; pick it by measurement).
# The first 50 iterations train only the regressors. Baseline: --cfg-options model.ofd.alpha=0
# Teacher: configs/segmentation/teacher_deeplabv3_resnet18_fashion_scenes.py
_base_ = [
    '../_base_/datasets/fashion_scenes_segmentation.py',
    '../_base_/schedules/segmentation_scenes_8e.py',
    '../_base_/default_runtime.py',
]
image_size = 128

model = dict(
    type='SegmentationDistiller',
    teacher=dict(backbone='timm/resnet18', output_stride=16, channels=128, atrous_rates=(2, 4, 6),
                 checkpoint='checkpoints/fashion_scenes_deeplabv3_resnet18_teacher.safetensors'),
    student=dict(backbone='timm/mobilenetv2_050', output_stride=16, channels=64, atrous_rates=(2, 4, 6)),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=1e-3, margin='auto', teacher_bn='train', input_size=(3, image_size, image_size)),
    data_preprocessor={{_base_.data_preprocessor}},
)
custom_hooks = [dict(type='DataMarginHook'), dict(type='RegressorWarmupHook', iters=50)]
