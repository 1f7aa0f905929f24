# The demo's teacher: torchvision resnet18 (a bare name both zoos have is torchvision's) trained alone on
# Fashion-MNIST (all 60k images, 32 px).
_base_ = [
    '../_base_/datasets/fashion_mnist.py',
    '../_base_/schedules/fashion_mnist_short.py',
    '../_base_/default_runtime.py',
]
image_size = 32
max_epochs = 5
train_dataloader = dict(batch_size=128, dataset=dict(resize=image_size, augment=True))
val_dataloader = dict(dataset=dict(resize=image_size))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, T_max=max_epochs, convert_to_iter_based=True),
]

model = dict(
    type='ClassificationDistiller',
    teacher=None,
    student=dict(name='resnet18'),
    num_classes=10,
    ofd=dict(alpha=0),
    data_preprocessor={{_base_.data_preprocessor}},
)
