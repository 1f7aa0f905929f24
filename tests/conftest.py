"""Shared fixtures: seeded RNG, cached model builders and BN randomisation.

Fresh timm/torchvision models zero-init the last BN of residual blocks, so the pre-activation of
a stage end equals its (non-negative) skip input and sign bugs stay hidden; tests that check
signs or exact values randomise every BatchNorm's affine parameters and running statistics first.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn

# Small inputs gain nothing from intra-op threads, and spinning threads stall on a shared CPU.
torch.set_num_threads(1)

_PRISTINE: Dict[Tuple[str, str, tuple], nn.Module] = {}


def _build(source: str, name: str, **kwargs) -> nn.Module:
    if source == "tv":
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    raise ValueError(source)


def build_model(source: str, name: str, **kwargs) -> nn.Module:
    """A random-init model, built once per process and deep-copied for each caller."""
    key = (source, name, tuple(sorted(kwargs.items())))
    if key not in _PRISTINE:
        torch.manual_seed(0)
        _PRISTINE[key] = _build(source, name, **kwargs).eval()
    return copy.deepcopy(_PRISTINE[key])


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine params (both signs of gamma) and running statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            c = module.num_features if hasattr(module, "num_features") else module.weight.numel()
            if getattr(module, "weight", None) is not None:
                sign = torch.where(torch.rand(c, generator=generator) < 0.2, -1.0, 1.0)
                module.weight.copy_(sign * (0.5 + torch.rand(c, generator=generator)))
                module.bias.copy_(0.5 * torch.randn(c, generator=generator))
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
    return model


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return build_model


@pytest.fixture
def randomized() -> Callable[..., nn.Module]:
    return randomize_bn
