"""What the CPU is and what it computes natively, from Linux's /proc/cpuinfo (nothing elsewhere).

One reader for both questions: which CPU a number came from (``provenance``) and whether the teacher
may run in bfloat16 (``teacher_mode``).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Dict

__all__ = ["CPUINFO", "cpu_fields", "cpu_model", "cpu_has_native_bf16"]

CPUINFO = Path("/proc/cpuinfo")


def cpu_fields() -> Dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: Dict[str, str] = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU: model name, family and model (one name covers generations apart, e.g. "AMD EPYC") and
    the instruction set torch's kernels dispatch to (AVX2 and AVX512 round differently), e.g.
    "AMD EPYC (family 25, model 1; torch AVX2)"."""
    import torch

    info = cpu_fields()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    has_generation = "cpu family" in info and "model" in info
    generation = f"family {info['cpu family']}, model {info['model']}; " if has_generation else ""
    return f"{name} ({generation}torch {torch.backends.cpu.get_cpu_capability()})"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively: AVX512-BF16 or AMX-BF16 among its flags."""
    flags = cpu_fields().get("flags", "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags
