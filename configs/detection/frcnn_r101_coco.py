# The teacher of ofd_frcnn_r101-to-r18_coco.py: Faster R-CNN R101-FPN trained alone (1x) from torchvision's
# ImageNet ResNet101 file, with frozen BatchNorm and 3 trainable stages (torchvision's defaults for loaded weights).
# Its body's FrozenBatchNorm2d keeps its statistics when it teaches, hence teacher_bn='eval' in the OFD config.
_base_ = ['./ofd_frcnn_r101-to-r18_coco.py']

model = dict(
    teacher=None,
    student=dict(name='resnet101', backbone_checkpoint='checkpoints/resnet101-63fe2227.pth'),
    ofd=dict(alpha=0),
)
