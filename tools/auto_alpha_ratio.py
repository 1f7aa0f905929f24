"""How large the paper's own alphas make the OFD term at the first iteration, relative to the
cross-entropy: the basis of alpha='auto' (``distiller.AUTO_ALPHA_RATIO``).

Random-init teacher and student at the paper's input sizes (no pretrained weights here), BN in
train mode, one random batch; the paper's alpha and per-tap weights. Prints one line per setting.

    python tools/auto_alpha_ratio.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import overhaul_det as od

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cifar_models import WideResNet  # noqa: E402  (the CIFAR WideResNet the tests define; no zoo ships one)


def first_iteration_ratio(teacher, student, size: int, batch: int, classes: int, alpha: float) -> tuple:
    """(alpha * L_distill / batch, cross-entropy) of a random batch."""
    distiller = od.FeatureDistiller(teacher, student, input_size=(3, size, size), alpha=alpha,
                                    min_stride=1 if size == 32 else 4).train()
    logits, losses = distiller(torch.randn(batch, 3, size, size))
    cross_entropy = F.cross_entropy(logits, torch.randint(0, classes, (batch,)))
    return float(losses["loss_ofd"].detach()), float(cross_entropy.detach())


def main() -> None:
    torch.manual_seed(0)
    settings = {
        "CIFAR-100 WRN28-4 -> WRN16-4, alpha 1e-3, 32 px": (WideResNet(28, 4, num_classes=100),
                                                            WideResNet(16, 4, num_classes=100), 32, 16, 100, 1e-3),
        "ImageNet ResNet50 -> MobileNetV2, alpha 1e-4, 224 px": (torchvision.models.resnet50(),
                                                                 torchvision.models.mobilenet_v2(), 224, 4, 1000, 1e-4),
        "ImageNet ResNet152 -> ResNet50, alpha 1e-4, 224 px": (torchvision.models.resnet152(),
                                                               torchvision.models.resnet50(), 224, 4, 1000, 1e-4),
    }
    for name, args in settings.items():
        ofd, ce = first_iteration_ratio(*args)
        sys.stdout.write(f"{name}: loss_ofd {ofd:.3g}, cross-entropy {ce:.3g}, ratio {ofd / ce:.3g}\n")


if __name__ == "__main__":
    main()
