# The paper's Pascal VOC recipe, ResNet101 -> MobileNetV2 (val mIoU 68.46 baseline -> 71.19 with OFD); see
# ofd_deeplabv3plus_r101-to-r18_voc.py. MobileNetV2's taps are the official ones: the expansion conv + BN of
# the first block of the next stage (before its ReLU6), and the last linear bottleneck's output.
_base_ = ['./ofd_deeplabv3plus_r101-to-r18_voc.py']

model = dict(student=dict(backbone='timm/mobilenetv2_100', decoder=True, output_stride=16, pretrained_backbone=True))
