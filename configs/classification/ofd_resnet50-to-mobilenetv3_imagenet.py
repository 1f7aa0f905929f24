# The paper's ImageNet recipe (ResNet50 -> MobileNet): alpha = 1e-4, taps weighted 1/8..1,
# SGD 0.1, total batch 256, 100 epochs. Set data_root (an ImageFolder tree). The teacher is torchvision's
# ResNet50_Weights.IMAGENET1K_V1 (the paper's 76.15% top-1 teacher), read from $TORCH_HOME/hub/checkpoints.
_base_ = [
    '../_base_/datasets/imagenet.py',
    '../_base_/schedules/imagenet_100e.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='ClassificationDistiller',
    teacher=dict(name='resnet50', weights='IMAGENET1K_V1'),
    student=dict(name='mobilenet_v3_large'),
    num_classes=1000,
    ofd=dict(alpha=1e-4, weights=[1 / 8, 1 / 4, 1 / 2, 1], margin='auto', teacher_bn='train', input_size=(3, 224, 224)),
    kd_weight=0.0,
    data_preprocessor={{_base_.data_preprocessor}},
)
