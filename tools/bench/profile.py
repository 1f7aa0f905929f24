"""Where a timed step's time goes: ``torch.profiler`` over a few calls of it, its ops by self time."""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity

from .runtime import Runtime, Step

__all__ = ["UnknownStepError", "check_profiled", "profile_steps"]


class UnknownStepError(ValueError):
    """A step to profile that the run does not time (known only once its steps are built)."""


def check_profiled(names: Sequence[str], steps: Mapping[str, Step]) -> None:
    """Raise a clear error naming the steps this run times when ``names`` asks for another."""
    unknown = [name for name in names if name not in steps]
    if unknown:
        guesses = [match for name in unknown for match in difflib.get_close_matches(name, steps, n=1)]
        hint = f" (did you mean {' '.join(guesses)}?)" if guesses else ""
        raise UnknownStepError(f"--profile {' '.join(unknown)}: this run times no such step{hint}; its steps are "
                               f"{', '.join(steps)}")


def profile_steps(steps: Mapping[str, Step], names: Sequence[str], calls: int, rt: Runtime, top: int = 12
                  ) -> Dict[str, Dict[str, Any]]:
    """For each of ``names``: ``calls`` calls of its step under the profiler (after the timed rounds, so
    warm), the self CPU time of one call and its ``top`` ops by self CPU time, each with its share of the
    call's self time and its calls per step; on CUDA the ops' self device time too."""
    check_profiled(names, steps)
    return {name: _profile(steps[name], calls, rt, top) for name in names}


def _profile(step: Step, calls: int, rt: Runtime, top: int) -> Dict[str, Any]:
    cuda = rt.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if not cuda:  # else kineto logs "gpuGetDeviceCount failed" as an ERROR on a machine without a GPU
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(calls):
            step()
        rt.sync()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = []
    for event in events[:top]:
        op = {"name": event.key, "self_cpu_ms": event.self_cpu_time_total / 1e3 / calls,
              "share": event.self_cpu_time_total / total_us if total_us else 0.0,
              "count": event.count / calls}
        if cuda:
            op["self_device_ms"] = event.self_device_time_total / 1e3 / calls
        ops.append(op)
    return {"calls": calls, "self_cpu_ms": total_us / 1e3 / calls, "ops": ops}
