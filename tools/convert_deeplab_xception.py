"""Convert a pytorch-deeplab-xception DeepLabV3+ checkpoint (the official OFD teacher) for this package:
`python tools/convert_deeplab_xception.py deeplab-resnet.pth.tar checkpoints/voc_deeplabv3plus_resnet101_teacher.safetensors`."""
import sys

from overhaul_det.models.deeplab_xception import main

if __name__ == "__main__":
    sys.exit(main())
