"""How the frozen teacher runs: its precision and memory format, by a fixed rule per device.

The rule is never timed at start-up, so runs stay deterministic: 'auto' is bfloat16 (channels-last for
conv nets) where the device computes bfloat16 natively, float32, as the model is, everywhere else.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Tuple, Union

import torch
from torch import nn

from .cpuinfo import cpu_has_native_bf16

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "cuda_has_native_bf16", "describe_teacher_mode", "resolve_teacher_mode", "teacher_autocast"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes bfloat16 in hardware (compute capability 8.0, Ampere, or later).

    ``torch.cuda.is_bf16_supported()`` is not the question: it is true through emulation on older GPUs,
    and it asks about the current device rather than the one the teacher runs on.

    Args:
        device: a CUDA device; without an index, the current one.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float32
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
