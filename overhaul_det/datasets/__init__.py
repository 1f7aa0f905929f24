"""Datasets: classification (ImageFolder, Fashion-MNIST), COCO detection, VOC segmentation, scenes."""
from .classification import FashionMNISTDataset, ImageFolderDataset
from .coco import CocoDetection
from .scenes import SCENE_CLASSES, make_scenes
from .voc import VOCSegmentation

__all__ = ["FashionMNISTDataset", "ImageFolderDataset", "CocoDetection", "VOCSegmentation", "SCENE_CLASSES",
           "make_scenes"]
