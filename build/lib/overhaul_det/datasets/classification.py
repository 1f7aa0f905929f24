"""Image classification datasets: Fashion-MNIST (Debian files) and any ImageFolder tree.

Items are ``dict(inputs=uint8 Tensor[3, H, W], data_samples=dict(gt_label=int))``; the
model's ImgDataPreprocessor stacks and normalises them (collate with ``pseudo_collate``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2 as T

from ..registry import DATASETS
from .fashion_mnist import CLASSES as FASHION_CLASSES
from .fashion_mnist import fashion_mnist

__all__ = ["FashionMNISTDataset", "ImageFolderDataset", "share_train_classes", "FASHION_MNIST_MEAN",
           "FASHION_MNIST_STD"]

FASHION_MNIST_MEAN = (0.2860 * 255,) * 3
FASHION_MNIST_STD = (0.3530 * 255,) * 3
Size = Union[int, Tuple[int, int], None]
Classes = Union[None, str, os.PathLike, Sequence[str]]
_NAMES_SHOWN = 5


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


def _split_root(data_root: str, data_prefix: str) -> str:
    return os.path.join(data_root, data_prefix) if data_prefix else data_root


def _class_folders(root: str) -> List[str]:
    """The sorted class folder names under ``root`` (torchvision's ``find_classes``)."""
    try:
        return find_classes(root)[0]
    except FileNotFoundError as error:
        raise ValueError(f"ImageFolder {root}: {error}; expected {root}/<class>/<image>") from error


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > _NAMES_SHOWN else ''}]"


def _check_same_classes(root: str, found: Sequence[str], expected: Sequence[str], source: str) -> None:
    """A split must hold exactly the class folders the labels were numbered from, compared by name."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    problems, fixes = [], []
    if missing:
        problems.append(f"missing {_names(missing)}")
        fixes.append(f"add the missing folders to {root} (with their images)")
    if extra:
        problems.append(f"extra {_names(extra)}")
        fixes.append(f"remove or rename the extra folders in {root}")
    if not problems:
        return
    raise ValueError(
        f"ImageFolder {root} does not have the class folders of {source} ({', '.join(problems)}); labels are "
        f"numbered by class name from {source}, so every split needs the same <class> folders: {' and '.join(fixes)}"
    )


def _expected_classes(classes: Classes) -> Tuple[List[str], str]:
    """The class names labels index into, and where they came from (for errors)."""
    if isinstance(classes, (str, os.PathLike)):
        if not Path(classes).is_dir():
            raise ValueError(f"classes={str(classes)!r} (the train split, whose class folders number the labels) "
                             "is not a folder; give the train split's folder, or the class names in label order")
        return _class_folders(str(classes)), f"the train split {classes}"
    return list(classes), "classes=[...]"


def share_train_classes(cfg) -> None:
    """Let val/test ImageFolder splits without ``classes`` number their labels from the train split's folders.

    The Runner builds each split on its own; sorting each split's folders separately shifts every label
    after a class folder missing from one split.
    """
    train = (cfg.get("train_dataloader") or {}).get("dataset")
    if not _is_image_folder(train) or train.get("data_root") is None:
        return
    for key in ("val_dataloader", "test_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset")
        if _is_image_folder(dataset) and dataset.get("classes") is None:
            dataset["classes"] = _split_root(train["data_root"], train.get("data_prefix", ""))


def _is_image_folder(spec) -> bool:
    if not isinstance(spec, dict):
        return False
    kind = spec.get("type")
    return kind is ImageFolderDataset or (isinstance(kind, str) and DATASETS.get(kind) is ImageFolderDataset)


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """A folder laid out as ``data_root/data_prefix/<class>/<image>``; RGB, resized, (train) flipped/cropped.

    ``classes`` (the train split's folder, or the class names in label order) fixes which label each
    class folder gets; a split whose class folders differ from it by name is refused. Without it the
    split's own sorted folders number the labels (the train split).
    """

    def __init__(
        self,
        data_root: str,
        data_prefix: str = "",
        resize: Size = 256,
        crop: Size = 224,
        train: bool = True,
        num_classes: Optional[int] = None,
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".webp"),
        classes: Classes = None,
    ) -> None:
        root = _split_root(data_root, data_prefix)
        found = _class_folders(root)
        names = found
        if classes is not None:
            names, source = _expected_classes(classes)
            _check_same_classes(root, found, names, source)
        if num_classes is not None and len(names) > num_classes:
            raise ValueError(
                f"{root} has {len(names)} class folders but num_classes={num_classes}; "
                "raise num_classes or remove folders"
            )
        try:
            self.samples = make_dataset(root, {name: i for i, name in enumerate(names)}, tuple(extensions))
        except FileNotFoundError as error:
            raise ValueError(f"ImageFolder {root}: {error}; expected {root}/<class>/<image>") from error
        self.metainfo = dict(classes=tuple(names))
        if train:
            self.transform = T.Compose([T.RandomResizedCrop(crop, antialias=True), T.RandomHorizontalFlip()])
        else:
            self.transform = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        try:
            image = decode_image(path, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise ValueError(f"cannot decode image {path}: {error}; remove or replace the file") from error
        return dict(inputs=self.transform(image), data_samples=dict(gt_label=label))
