# The scenes segmentation teacher: DeepLabV3+ (the V3 head plus the stride-4 decoder) on timm resnet18 (output
# stride 16, a 128-wide head), its backbone from the body of the shipped scenes detector teacher
# (checkpoints/fashion_scenes_frcnn_resnet18_teacher.safetensors, a torchvision ResNet-18 trained on these scenes:
# its features already tell the garments apart on textured canvases, where the 32 px single-item classifier's do
# not), trained 16 epochs at SGD 0.01 after a 100-iteration warm-up
# (configs/_base_/schedules/segmentation_scenes_pretrained_16e.py). Inputs are normalised with Fashion-MNIST's mean
# and std, as that body saw them.
#   overhaul-det train configs/segmentation/teacher_deeplabv3plus_resnet18_fashion_scenes.py
#   overhaul-det export work_dirs/teacher_deeplabv3plus_resnet18_fashion_scenes/epoch_16.pth --dtype float16 \
#       --out checkpoints/fashion_scenes_deeplabv3plus_resnet18_teacher.safetensors
# The teacher of configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py.
_base_ = [
    '../_base_/datasets/fashion_scenes_segmentation.py',
    '../_base_/schedules/segmentation_scenes_pretrained_16e.py',
    '../_base_/default_runtime.py',
]
# VOCSegmentation normalises (model.data_preprocessor only stacks): Fashion-MNIST's mean and std, in [0, 1] units.
fashion_mnist_norm = dict(mean=[0.286, 0.286, 0.286], std=[0.353, 0.353, 0.353])
train_dataloader = dict(dataset=fashion_mnist_norm)
val_dataloader = dict(dataset=fashion_mnist_norm)
test_dataloader = dict(dataset=fashion_mnist_norm)
default_hooks = dict(checkpoint=dict(interval={{_base_.max_epochs}}))

model = dict(
    type='SegmentationDistiller',
    teacher=None,
    student=dict(backbone='timm/resnet18', output_stride=16, channels=128, atrous_rates=(2, 4, 6), decoder=True,
                 backbone_checkpoint='checkpoints/fashion_scenes_frcnn_resnet18_teacher.safetensors',
                 backbone_checkpoint_prefix='backbone.body.'),
    num_classes={{_base_.num_classes}},
    ofd=dict(alpha=0),
    data_preprocessor={{_base_.data_preprocessor}},
)
