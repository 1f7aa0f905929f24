"""Page faults per step, and the benchmark process's choice of what glibc does with freed memory.

By default glibc hands a large freed block back to the kernel (mmap'ed blocks at once, the heap's
top past its trim threshold), and the next allocation of that size is faulted in page by page
again. A step whose working set outgrows what glibc keeps pays those faults at every call: at
ResNet-50 -> MobileNetV3, 224 px, batch 4, the original OFD code's step took ~17k minor faults a
step while every other step took none. Keeping freed memory in the process (what jemalloc or
tcmalloc, preloaded as PyTorch's CPU tuning guide advises, would do) times every step on the same
footing. glibc's ``mallopt`` has no Python binding, hence ctypes.
"""
from __future__ import annotations

import ctypes
import resource
import sys

__all__ = ["FREED_MEMORY", "keep_freed_memory", "minor_faults"]

FREED_MEMORY = ("keep", "return")
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep every freed block for reuse (no mmap'ed blocks, no heap
    trimming) for the rest of the process's life. True where it took effect; False off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1


def minor_faults() -> int:
    """This process's minor page faults so far (pages the kernel mapped in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
