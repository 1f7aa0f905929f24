# CPU demo: OFD on Fashion-MNIST scenes (128 px). The teacher is the Faster R-CNN + FPN detector trained on the scenes
# (teacher_frcnn_resnet18_fashion_scenes.py: ResNet18 body, 128-channel FPN, 0.498 bbox mAP; shipped in float16),
# its BatchNorm on the running statistics it learnt on the scenes (teacher_bn='eval'); the student is a timm
# mobilenetv3_small_050 Faster R-CNN trained from scratch. Baseline: --cfg-options model.ofd.alpha=0
# alpha: ImageNet's 1e-4 scaled by the weighted teacher elements per image (~0.4M there, ~33k for ResNet18 at
# 128 px) gives ~1e-3; Fashion-MNIST classification preferred about twice its scaled value.
# model.feature_levels (default 'body': the teacher's body stage ends) can also tap the FPN outputs ('fpn', or
# 'body+fpn' for both). No BatchNorm feeds the FPN outputs: their margins are estimated from the first training
# batch. The FPN terms (weight 1 per level) are ~15x the body's here, so pick alpha again, e.g.
#   --cfg-options model.feature_levels=body+fpn model.ofd.alpha=auto
_base_ = [
    '../_base_/datasets/fashion_scenes_detection.py',
    '../_base_/schedules/detection_scenes_cpu.py',
    '../_base_/default_runtime.py',
]
image_size = 128
# Margins come from the teacher's BatchNorm; a BN-free teacher estimates them from its first batch.
custom_hooks = []
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=2))

model = dict(
    type='DetectionDistiller',
    teacher=dict(
        name='resnet18',
        checkpoint='checkpoints/fashion_scenes_frcnn_resnet18_teacher.safetensors',
        fpn_channels=128,
        frozen_bn=False,
        image_mean=[0.286, 0.286, 0.286],
        image_std=[0.353, 0.353, 0.353],
    ),
    student=dict(
        name='timm/mobilenetv3_small_050',
        fpn_channels=64,
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
    ),
    num_classes={{_base_.num_classes}},
    min_size=image_size,
    max_size=image_size,
    ofd=dict(alpha=2e-3, margin='auto', teacher_bn='eval', input_size=(3, image_size, image_size)),
)
