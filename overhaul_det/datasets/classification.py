"""Image classification datasets: Fashion-MNIST (Debian files) and any ImageFolder tree.

Items are ``dict(inputs=uint8 Tensor[3, H, W], data_samples=dict(gt_label=int))``; the
model's ImgDataPreprocessor stacks and normalises them (collate with ``pseudo_collate``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2 as T

from ..registry import DATASETS
from .fashion_mnist import CLASSES as FASHION_CLASSES
from .fashion_mnist import fashion_mnist

__all__ = ["FashionMNISTDataset", "ImageFolderDataset", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

FASHION_MNIST_MEAN = (0.2860 * 255,) * 3
FASHION_MNIST_STD = (0.3530 * 255,) * 3
Size = Union[int, Tuple[int, int], None]


def _train_transform(size: Size, pad: int) -> T.Compose:
    ops = [T.Resize(size, antialias=True)] if size else []
    ops += [T.RandomCrop(size or 28, padding=pad) if pad else T.Identity(), T.RandomHorizontalFlip()]
    return T.Compose(ops)


@DATASETS.register_module()
class FashionMNISTDataset(Dataset):
    """Fashion-MNIST, grayscale replicated to 3 channels, resized to ``resize``.

    ``num_samples`` takes a fixed random subset (drawn with ``subset_seed``), for the
    small-data regime where distillation helps most.
    """

    METAINFO = dict(classes=FASHION_CLASSES)

    def __init__(
        self,
        train: bool = True,
        data_root: Optional[str] = None,
        resize: Size = None,
        augment: bool = False,
        crop_padding: int = 2,
        num_samples: Optional[int] = None,
        subset_seed: int = 0,
    ) -> None:
        source = fashion_mnist(train, data_root)
        images, labels = source.data, source.targets
        if num_samples is not None:
            if not 0 < num_samples <= len(labels):
                raise ValueError(f"num_samples={num_samples}; Fashion-MNIST has {len(labels)} images in this split")
            index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(subset_seed))[:num_samples]
            images, labels = images[index], labels[index]
        self.images, self.labels = images, labels
        self.metainfo = dict(self.METAINFO)
        if augment:
            self.transform = _train_transform(resize, crop_padding)
        else:
            self.transform = T.Resize(resize, antialias=True) if resize else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index].unsqueeze(0).expand(3, -1, -1)
        if self.transform is not None:
            image = self.transform(image)
        return dict(inputs=image.contiguous(), data_samples=dict(gt_label=int(self.labels[index])))


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """Any folder laid out as ``root/<class>/<image>``; RGB, resized and (train) flipped/cropped."""

    def __init__(
        self,
        data_root: str,
        resize: Size = 256,
        crop: Size = 224,
        train: bool = True,
        num_classes: Optional[int] = None,
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".webp"),
    ) -> None:
        try:
            self.folder = DatasetFolder(data_root, loader=str, extensions=tuple(extensions))
        except (FileNotFoundError, RuntimeError) as error:
            raise ValueError(f"ImageFolder {data_root}: {error}; expected {data_root}/<class>/<image>") from error
        if num_classes is not None and len(self.folder.classes) > num_classes:
            raise ValueError(
                f"{data_root} has {len(self.folder.classes)} class folders but num_classes={num_classes}; "
                "raise num_classes or remove folders"
            )
        self.metainfo = dict(classes=tuple(self.folder.classes))
        if train:
            self.transform = T.Compose([T.RandomResizedCrop(crop, antialias=True), T.RandomHorizontalFlip()])
        else:
            self.transform = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop)])

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.folder.samples[index]
        try:
            image = decode_image(path, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise ValueError(f"cannot decode image {path}: {error}; remove or replace the file") from error
        return dict(inputs=self.transform(image), data_samples=dict(gt_label=label))
