"""Datasets: classification (ImageFolder, Fashion-MNIST), COCO detection, VOC segmentation, scenes."""
