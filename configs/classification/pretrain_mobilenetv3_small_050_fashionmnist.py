# timm mobilenetv3_small_050 trained alone as a Fashion-MNIST classifier (all 60k images, 32 px, the teacher's data
# pipeline): the classification weights the scenes detection student starts from, as detectors elsewhere start
# from ImageNet weights (configs/detection/ofd_frcnn_fashion_scenes.py).
#   overhaul-det train configs/classification/pretrain_mobilenetv3_small_050_fashionmnist.py
#   overhaul-det export work_dirs/pretrain_mobilenetv3_small_050_fashionmnist/epoch_10.pth \
#       --out checkpoints/fashionmnist_mobilenetv3_small_050.safetensors
_base_ = ['./pretrain_mobilenetv2_050_fashionmnist.py']

model = dict(student=dict(name='timm/mobilenetv3_small_050'))
