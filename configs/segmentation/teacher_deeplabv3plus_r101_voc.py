# The VOC teacher: DeepLabV3+ (output stride 16) on an ImageNet-pretrained ResNet101 (timm's weights from the
# Hugging Face cache, HF_HOME), trained alone (the paper's teacher scores 77.89 mIoU; it trained on SBD trainaug,
# see _base_/datasets/voc_segmentation.py). 8 GPUs:
#   torchrun --nproc_per_node 8 tools/train.py configs/segmentation/teacher_deeplabv3plus_r101_voc.py --launcher pytorch
# Export it for the OFD configs:
#   overhaul-det export work_dirs/teacher_deeplabv3plus_r101_voc/epoch_50.pth \
#       --out checkpoints/voc_deeplabv3plus_resnet101_teacher.safetensors
_base_ = [
    '../_base_/datasets/voc_segmentation.py',
    '../_base_/schedules/segmentation_voc_50e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='SegmentationDistiller',
    teacher=None,
    student=dict(backbone='timm/resnet101', decoder=True, output_stride=16, pretrained_backbone=True),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=0),
    data_preprocessor={{_base_.data_preprocessor}},
)
