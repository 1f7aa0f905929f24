"""Mixed precision on CPU: mmengine's AmpOptimWrapper needs an accelerator, so bf16 autocast
on CPU gets this small wrapper (no loss scaling is needed for bfloat16)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from ..registry import OPTIM_WRAPPERS

__all__ = ["CPUAutocastOptimWrapper"]


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under ``torch.autocast('cpu', dtype=bfloat16)``."""

    def __init__(self, *args, dtype: str = "bfloat16", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast("cpu", dtype=self.dtype):
            yield
