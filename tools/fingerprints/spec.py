"""What a fingerprint trains: per task, the shipped config and the overrides that make it a short run on the
synthetic data (a few iterations that cross the regressor warm-up and end in one validation), per method the
config switches. Changing any value here changes every fingerprint it touches; record new ones after."""
from __future__ import annotations

from typing import Dict, Mapping

__all__ = ["FASHION_PER_CLASS", "SCENES", "TASKS", "METHODS", "FORMAT", "fingerprint_method"]

# The format of the fingerprint files; a file of another format is refused rather than misread.
FORMAT = 1
# The synthetic Fashion-MNIST: images per class of each split.
FASHION_PER_CLASS = {"train": 10, "t10k": 5}
# The scenes ``overhaul-det make-scenes`` writes from it (COCO and VOC in one folder): images per split.
SCENES = {"train": 16, "val": 4}

TASKS: Dict[str, Dict] = {
    "classification": dict(
        config="configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py", data="fashion",
        options={"train_dataloader.dataset.num_samples": 48, "train_dataloader.batch_size": 16,
                 "val_dataloader.batch_size": 25, "train_cfg.max_epochs": 2, "train_cfg.val_interval": 2}),
    "detection": dict(
        config="configs/detection/ofd_frcnn_fashion_scenes.py", data="scenes",
        options={"train_dataloader.batch_size": 4, "val_dataloader.batch_size": 4, "train_cfg.max_epochs": 2,
                 "train_cfg.val_interval": 2}),
    "segmentation": dict(
        config="configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py", data="scenes",
        options={"train_dataloader.batch_size": 4, "val_dataloader.batch_size": 4, "train_cfg.max_epochs": 2,
                 "train_cfg.val_interval": 2, "custom_hooks.1.iters": 2}),
}

METHODS: Dict[str, Dict] = {
    "baseline": {"model.ofd.alpha": 0},
    "ofd": {},
}


def fingerprint_method(overrides: Mapping[str, object]) -> str:
    """The fingerprinted method whose code path a run with these config ``overrides`` trains: 'baseline' where it
    distils no features (``model.ofd.alpha=0``), else 'ofd'.

    Args:
        overrides: the run's config overrides (``--cfg-options`` keys and values).
    """
    return "baseline" if overrides.get("model.ofd.alpha") == 0 else "ofd"
