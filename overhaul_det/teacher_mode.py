"""How the frozen teacher runs: its precision and memory format, by a fixed rule per device (never
timed at start-up, so runs stay deterministic).

Measured (torchvision resnet50 inference forward, batch 4, 224 px, 2 threads, medians of 7): on a
Xeon with AMX-BF16, bfloat16 autocast took 0.60x and bfloat16 + channels-last 0.37x the float32
time; on an AMD EPYC with AVX512-BF16, 0.54x and 0.45x (float32 channels-last alone 0.87x). So
'auto' means bfloat16, with channels-last for conv nets, on CPUs with AVX512-BF16 or AMX-BF16 and
on CUDA devices that support bfloat16; float32, as the model is, everywhere else.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, List, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .cpuinfo import cpu_has_native_bf16

__all__ = ["PRECISIONS", "CastWeights", "cpu_has_native_bf16", "describe_teacher_mode", "resolve_teacher_mode",
           "teacher_autocast"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def _auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_teacher_mode(precision: str, channels_last: Union[str, bool], device: torch.device,
                         teacher: nn.Module) -> Tuple[torch.dtype, bool]:
    """(dtype, channels_last) of the teacher's forward on ``device``: ``precision`` in PRECISIONS
    ('auto' leaves a teacher that is not float32, e.g. float64, as it is), ``channels_last`` 'auto'
    (conv nets in reduced precision) or a bool."""
    if precision not in PRECISIONS:
        raise ValueError(f"teacher_precision={precision!r}; choose one of {PRECISIONS}")
    if channels_last not in ("auto", True, False):
        raise ValueError(f"teacher_channels_last={channels_last!r}; choose 'auto', True or False")
    own = next((p.dtype for p in teacher.parameters()), torch.float32)
    dtype = (_auto_dtype(device) if own == torch.float32 else torch.float32) if precision == "auto" \
        else getattr(torch, precision)
    if channels_last == "auto":
        channels_last = dtype != torch.float32 and any(isinstance(m, nn.Conv2d) for m in teacher.modules())
    return dtype, bool(channels_last)


def describe_teacher_mode(dtype: torch.dtype, channels_last: bool) -> str:
    """How a teacher runs, as the log line and run records name it: 'bfloat16, channels-last', 'float32'."""
    return str(dtype).replace("torch.", "") + (", channels-last" if channels_last else "")


def teacher_autocast(precision: str, dtype: torch.dtype, device: torch.device) -> ContextManager:
    """Autocast to ``dtype`` when reduced; an explicit 'float32' also turns an outer autocast off for
    the teacher, while 'auto' resolved to float32 leaves any outer autocast (AMP) as it is."""
    if dtype != torch.float32:
        return torch.autocast(device.type, dtype=dtype)
    if precision == "float32":
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


# Modules whose parameters autocast casts at every call (their conv / linear op is in its reduced-precision list).
# Exact types: a subclass (timm's StdConv2d, Conv2dSame) may read its weight in other ops first.
CAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Bound(nn.Module):
    """``run(...)`` as the forward of a module over ``model``, so that ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, run: Callable) -> None:
        super().__init__()
        self.model = model
        self.__dict__["run"] = run  # not a submodule: ``run`` may be ``model`` itself

    def forward(self, *args, **kwargs):
        return self.run(*args, **kwargs)


class CastWeights:
    """A frozen model's conv and linear parameters, cast once to ``dtype`` and reused while they are unchanged.

    Autocast caches a cast parameter only if it takes a gradient, so a frozen teacher's weights are cast anew at
    each forward (a ResNet-50's 53 conv weights: 5 of 86 ms at batch 4, bfloat16, 2 threads). ``__call__`` runs
    ``run`` (which reads ``model``) with the cast copies swapped in by ``torch.func.functional_call``; the model
    itself is untouched. A parameter changed in place or moved is cast again. Autocast receives what it would
    have made itself, so the result is the same to the bit; ``agrees`` checks that on a batch.
    """

    def __init__(self, model: nn.Module, run: Callable, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._bound = _Bound(model, run)
        self._run = run
        self._names: List[Tuple[str, nn.Module, str]] = [
            (f"model.{prefix}{'.' if prefix else ''}{name}", module, name)
            for prefix, module in model.named_modules() if type(module) in CAST_MODULES
            for name, param in module.named_parameters(recurse=False) if param.is_floating_point()]
        self._cache: Dict[int, Tuple[Tuple, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def _cast(self, param: Tensor) -> Tensor:
        key = (param.data_ptr(), param._version, param.device, param.dtype, param.stride())
        cached = self._cache.get(id(param))
        if cached is None or cached[0] != key:
            cached = key, param.detach().to(self.dtype)
            self._cache[id(param)] = cached
        return cached[1]

    def __call__(self, *args, **kwargs):
        weights = {key: self._cast(getattr(module, name)) for key, module, name in self._names}
        return functional_call(self._bound, weights, args, kwargs, strict=False)

    def agrees(self, *args, **kwargs) -> bool:
        """Whether the cast copies give ``run``'s own outputs on this batch, to the bit."""
        cast, own = self(*args, **kwargs), self._run(*args, **kwargs)
        return list(cast) == list(own) and all(torch.equal(cast[k], own[k]) for k in own)
