"""The benchmark run: the steps timed interleaved, their medians, activation sizes, memory, and the target checks."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import torch

from overhaul_det.cpuinfo import cpu_model
from .allocator import keep_freed_memory, minor_faults
from .config import REDUCED_PRECISIONS, TARGETS, BenchConfig, validate
from .memory import activation_sizes, measure_memory
from .profile import check_profiled, profile_steps
from .runtime import Runtime, Step
from .workload import build_workload

__all__ = ["time_interleaved", "run_benchmark"]


def time_interleaved(steps: Dict[str, Step], repeats: int, warmup: int, rt: Runtime
                     ) -> Tuple[Dict[str, List[float]], Dict[str, List[int]]]:
    """Run every step once per round, in order; ``warmup`` rounds are discarded. The seconds of each
    call, and the minor page faults the process took during it."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    faults: Dict[str, List[int]] = {name: [] for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            before = minor_faults()
            elapsed = rt.time(step)
            if round_index >= warmup:
                times[name].append(elapsed)
                faults[name].append(minor_faults() - before)
    return times, faults


def run_benchmark(cfg: BenchConfig) -> Dict[str, Any]:
    """Run every measurement of ``cfg`` and return the result dict (times in seconds, sizes in bytes;
    ``compile_s`` and ``compile_errors`` per compiled step, empty unless ``cfg.compile``; ``profiles`` per
    step named in ``cfg.profile``, after the timed rounds). With
    ``cfg.freed_memory='keep'`` this process keeps freed memory from here on."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kept = cfg.freed_memory == "keep" and keep_freed_memory()
    rt = Runtime(cfg)
    work = build_workload(cfg, rt)
    check_profiled(cfg.profile, work.steps)
    times, faults = time_interleaved(work.steps, cfg.repeats, cfg.warmup, rt)
    profiles = profile_steps(work.steps, cfg.profile, cfg.profile_calls, rt)
    median = {name: statistics.median(values) for name, values in times.items()}
    sizes = activation_sizes(work.distiller, work.student_input, work.teacher_input, rt)
    memory = measure_memory(cfg, rt, work) if cfg.measure_memory else None
    checks = _checks(median, memory, sizes)
    return {
        "config": asdict(cfg),
        "environment": {**_environment(rt), "freed_memory": "keep" if kept else "return"},
        "order": list(work.steps),
        "teacher_runs_in": work.distiller.teacher_runs_in,
        "times_s": times,
        "median_s": median,
        "page_faults": faults,
        "median_page_faults": {name: statistics.median(values) for name, values in faults.items()},
        **{key: checks[key]["value"] for key in ("overhead", "loss_time_ratio", "rewrite_added", "reference_ratio",
                                                 "student_ratio") if key in checks},
        "activations": sizes,
        "memory": memory,
        "checks": checks,
        "compile_s": work.compile_s,
        "compile_errors": work.compile_errors,
        "profiles": profiles,
    }


def _check(value: Optional[float], limit: Optional[float], **extra: Any) -> Dict[str, Any]:
    ok = None if value is None or limit is None else bool(value <= limit)
    return {"value": value, "limit": limit, "pass": ok, **extra}


def _checks(median: Dict[str, float], memory: Optional[Dict[str, Any]], sizes: Dict[str, int]) -> Dict[str, Any]:
    """Every target whose measurements were taken."""
    separate = median["student_step"] + median["teacher_forward"] + median["regressor_step"]
    checks = {"overhead": _check(median["ofd_step"] / separate, TARGETS["overhead"])}
    if "loss_fast" in median:
        checks["loss_time_ratio"] = _check(median["loss_fast"] / median["loss_naive"], TARGETS["loss_time_ratio"])
    if "reference_step" in median:
        checks.update(_precision_checks(median))
    pairs = [("student_step", "student_step_channels_last"), ("ofd_step", "ofd_step_channels_last"),
             *((f"ofd_step_{p}", f"ofd_step_{p}_channels_last") for p in REDUCED_PRECISIONS),
             ("student_step", "student_step_compiled"), ("ofd_step", "ofd_step_compiled")]
    for kind, variant in pairs:
        if variant in median:  # a speed-up: > 1 is faster
            checks[f"{variant}_speedup"] = _check(median[kind] / median[variant], None)
    if "reference_step" in median:
        checks.update(_channels_last_precision_checks(median))
    if "rewritten_forward" in median:
        checks["rewrite_added"] = _check(median["rewritten_forward"] / median["plain_forward"] - 1,
                                         TARGETS["rewrite_added"])
    if memory is not None:
        allowance = (TARGETS["teacher_activation_factor"] * sizes["teacher_largest_activation_bytes"]
                     + sizes["regressor_activation_bytes"])
        for key, name in (("peak_bytes", "ofd_peak_memory_bytes"), ("step_peak_bytes", "ofd_step_peak_memory_bytes")):
            student, ofd = memory["student_step"][key], memory["ofd_step"][key]
            checks[name] = _check(ofd, None if student is None else student + allowance)
    return checks


def _precision_checks(median: Dict[str, float]) -> Dict[str, Any]:
    """The targets reference_ratio and student_ratio on the bfloat16 teacher's OFD step, or where bfloat16
    was not measured the fastest reduced precision's (named in ``precision``); the same ratios, no
    target, for each other reduced precision; each teacher forward's speed-up over float32."""
    measured = [p for p in REDUCED_PRECISIONS if f"ofd_step_{p}" in median]
    chosen = "bfloat16" if "bfloat16" in measured else min(measured, key=lambda p: median[f"ofd_step_{p}"])
    checks = {}
    for p in measured:
        target = p == chosen
        prefix = "" if target else f"{p}_"
        checks[prefix + "reference_ratio"] = _check(median[f"ofd_step_{p}"] / median["reference_step"],
                                                    TARGETS["reference_ratio"] if target else None, precision=p)
        checks[prefix + "student_ratio"] = _check(median[f"ofd_step_{p}"] / median["student_step"],
                                                  TARGETS["student_ratio"] if target else None, precision=p)
        checks[f"{p}_teacher_speedup"] = _check(median["teacher_forward"] / median[f"teacher_forward_{p}"], None)
    checks["float32_reference_ratio"] = _check(median["ofd_step"] / median["reference_step"], None)
    return checks


def _channels_last_precision_checks(median: Dict[str, float]) -> Dict[str, Any]:
    """d'/r and d'/a with a channels-last student (its own student step as a), for each reduced precision
    timed so: the same ratios as the targets', no target (the option is off by default)."""
    checks = {}
    for p in REDUCED_PRECISIONS:
        step = median.get(f"ofd_step_{p}_channels_last")
        if step is not None:
            checks[f"{p}_channels_last_reference_ratio"] = _check(step / median["reference_step"], None)
            checks[f"{p}_channels_last_student_ratio"] = _check(step / median["student_step_channels_last"], None)
    return checks


def _environment(rt: Runtime) -> Dict[str, Any]:
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu": cpu_model(), "device": str(rt.device)}
    with contextlib.suppress(ImportError):
        import timm

        env["timm"] = timm.__version__
    if rt.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(rt.device)
    return env
