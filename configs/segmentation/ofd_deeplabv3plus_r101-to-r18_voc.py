# The paper's Pascal VOC recipe, ResNet101 -> ResNet18 (val mIoU 72.07 baseline -> 73.98 with OFD): DeepLabV3+
# at output stride 16, crop 513, batch 16, SGD 0.007 (Nesterov) with poly decay for 50 epochs, trained on VOC
# train by default; the paper used SBD trainaug (see _base_/datasets/voc_segmentation.py). Six taps: the four backbone
# stage ends, the ASPP projection and the decoder's last conv + BN (all before their ReLU), weighted
# 1/8, 1/4, 1/2, 1, 1, 1/16; alpha 1e-5. The first epoch trains only the regressors (the student frozen).
# Teacher: made by configs/segmentation/teacher_deeplabv3plus_r101_voc.py (then exported to the file below), or
# the official OFD teacher (pytorch-deeplab-xception's deeplab-resnet.pth.tar) converted by
# `python tools/convert_deeplab_xception.py deeplab-resnet.pth.tar checkpoints/voc_deeplabv3plus_resnet101_teacher.safetensors`.
# The students' ImageNet backbones are timm's pretrained weights, read from the Hugging Face cache (HF_HOME).
# Baseline: --cfg-options model.ofd.alpha=0
_base_ = [
    '../_base_/datasets/voc_segmentation.py',
    '../_base_/schedules/segmentation_voc_50e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='SegmentationDistiller',
    teacher=dict(backbone='timm/resnet101', decoder=True, output_stride=16,
                 checkpoint='checkpoints/voc_deeplabv3plus_resnet101_teacher.safetensors'),
    student=dict(backbone='timm/resnet18', decoder=True, output_stride=16, pretrained_backbone=True),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=1e-5, weights=[1 / 8, 1 / 4, 1 / 2, 1, 1, 1 / 16], margin='auto', teacher_bn='train'),
    data_preprocessor={{_base_.data_preprocessor}},
)
custom_hooks = [dict(type='DataMarginHook'), dict(type='RegressorWarmupHook', epochs=1)]
# The warm-up leaves the student without gradients, which DDP must be told about.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
