# The teacher of ofd_frcnn_r101-to-r18_coco.py: Faster R-CNN R101-FPN trained alone (1x) from torchvision's
# ImageNet ResNet101 weights (ResNet101_Weights.IMAGENET1K_V1, read from $TORCH_HOME/hub/checkpoints), with
# frozen BatchNorm and 3 trainable stages (torchvision's defaults for loaded weights). 8 GPUs:
#   torchrun --nproc_per_node 8 tools/train.py configs/detection/frcnn_r101_coco.py --launcher pytorch
# then export it as the OFD config's teacher:
#   overhaul-det export work_dirs/frcnn_r101_coco/epoch_12.pth --out checkpoints/coco_frcnn_r101_teacher.safetensors
# Its body's FrozenBatchNorm2d keeps its statistics when it teaches, hence teacher_bn='eval' in the OFD config.
_base_ = ['./ofd_frcnn_r101-to-r18_coco.py']

model = dict(
    teacher=None,
    student=dict(name='resnet101', weights_backbone='IMAGENET1K_V1'),
    ofd=dict(alpha=0),
)
