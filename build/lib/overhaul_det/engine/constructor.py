"""The optimizer constructor for distillers: mmengine's default one, minus a warning per teacher parameter.

With ``paramwise_cfg`` set, mmengine's ``DefaultOptimWrapperConstructor`` logs one warning for
every parameter whose ``requires_grad`` is False: one line per parameter of the frozen teacher
(83 for a DeepLabV3-ResNet18 teacher). This constructor leaves wholly frozen modules out in
silence and logs one line that counts them; a frozen parameter inside a trainable module is
still reported as mmengine does.
"""
from __future__ import annotations

from typing import List, Optional, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ["DistillerOptimWrapperConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DistillerOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that skips frozen submodules (the teacher) without a warning each."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        self._frozen: List[str] = []
        self._frozen_count = 0
        wrapper = super().__call__(model)
        if self._frozen:
            print_log(f"optimizer: {len(self._frozen)} frozen module(s) left out ({', '.join(self._frozen)}; "
                      f"{self._frozen_count} parameters with requires_grad=False)", logger="current")
        return wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        own = list(module.parameters())
        if prefix and own and not any(p.requires_grad for p in own):
            self._frozen.append(prefix)
            self._frozen_count += sum(p.numel() for p in own)
            return
        super().add_params(params, module, prefix, is_dcn_module)
