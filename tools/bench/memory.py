"""Memory: the activation sizes of the ops a step runs, and a step's peak memory (a fresh process
per measurement on CPU, the allocator's peak on CUDA)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from overhaul_det.distiller import FeatureDistiller
from .config import BenchConfig
from .runtime import Runtime, Step, captured_features
from .workload import Workload, memory_step

__all__ = ["activation_sizes", "measure_memory", "measure_memory_subprocess", "child_main"]

# Large blocks are mmap'ed and unmapped on free, so peak RSS follows live tensors, not heap slack.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


class _OutputBytes(TorchDispatchMode):
    """Records the bytes of every activation an op allocates: outputs that alias no input and
    whose first axis is the batch (so weight casts under autocast are not counted)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.sizes: List[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.dim() >= 2 and t.shape[0] == self.batch_size and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.numel() * t.element_size())
        return out


def _tensors(tree: Any) -> Iterator[Tensor]:
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def activation_sizes(distiller: FeatureDistiller, student_x: Tensor, teacher_x: Tensor, rt: Runtime) -> Dict[str, int]:
    """Largest tensor of the teacher's forward, its tap tensors, and the regressors' outputs: the
    conv and BN outputs, and the BN output resized to the teacher's map where the sizes differ
    (``align='interpolate'``), which is the tensor the loss compares with the teacher."""
    student, _ = captured_features(distiller, student_x, teacher_x, rt)
    with torch.no_grad(), rt.autocast():
        with _OutputBytes(teacher_x.shape[0]) as teacher_ops:
            teacher = distiller.teacher_features(teacher_x)
        with _OutputBytes(student_x.shape[0]) as regressor_ops:
            for regressor, feature, target, pair in zip(distiller.regressors, distiller.student_features(student),
                                                        teacher, distiller.pairs):
                distiller.match_size(regressor(feature), target, pair)
    return {
        "teacher_largest_activation_bytes": max(teacher_ops.sizes),
        "teacher_tap_bytes": sum(t.numel() * t.element_size() for t in teacher),
        "regressor_activation_bytes": sum(regressor_ops.sizes),
    }


def measure_memory(cfg: BenchConfig, rt: Runtime, work: Workload) -> Dict[str, Any]:
    """Peak memory of (a), (d) and both loss forms where timed; a subprocess each on CPU, in process on CUDA."""
    kinds = [kind for kind in ("student_step", "ofd_step", "loss_naive", "loss_fast") if kind in work.steps]
    if rt.device.type == "cuda":
        memory = {kind: _cuda_peak(work.steps[kind], rt) for kind in kinds}
    else:
        memory = {kind: measure_memory_subprocess(kind, cfg) for kind in kinds}
    if "loss_fast" in memory:
        memory["loss_extra_bytes"] = memory["loss_fast"]["peak_bytes"] - memory["loss_naive"]["peak_bytes"]
    return memory


def _status_bytes(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _max_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _rss_peak(step: Step, steps: int) -> Dict[str, Any]:
    """Peak RSS of a fresh process running ``step`` once, then ``steps`` more times.

    ``peak_bytes``: the highest RSS over all calls minus the RSS after construction (the first
    call's allocations, e.g. optimizer state, included). ``step_peak_bytes``: the highest RSS of
    the later calls minus the RSS before them (a steady-state step; needs Linux's clear_refs).
    """
    built = _status_bytes("VmRSS")
    if built is None or not _reset_peak_rss():
        for _ in range(steps + 1):
            step()
        return {"peak_bytes": _max_rss_bytes() - (built or 0), "step_peak_bytes": None,
                "rss_after_build_bytes": built, "method": "ru_maxrss minus RSS after model construction"}
    step()
    first_peak = _status_bytes("VmHWM")
    before = _status_bytes("VmRSS")
    _reset_peak_rss()
    for _ in range(steps):
        step()
    later_peak = _status_bytes("VmHWM")
    return {"peak_bytes": max(first_peak, later_peak) - built, "step_peak_bytes": later_peak - before,
            "rss_after_build_bytes": built, "rss_before_steps_bytes": before,
            "method": "fresh process; VmHWM (reset through /proc/self/clear_refs) minus VmRSS after construction"}


def _cuda_peak(step: Step, rt: Runtime) -> Dict[str, Any]:
    rt.sync()
    torch.cuda.reset_peak_memory_stats(rt.device)
    before = torch.cuda.memory_allocated(rt.device)
    step()
    rt.sync()
    peak = torch.cuda.max_memory_allocated(rt.device) - before
    return {"peak_bytes": peak, "step_peak_bytes": peak, "memory_before_bytes": before,
            "method": "torch.cuda.max_memory_allocated minus memory_allocated before the step"}


def child_main() -> None:
    """Entry point of a memory-measuring subprocess: spec JSON path in argv[1], result to argv[2]."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = BenchConfig(**spec["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = Runtime(cfg)
    step = memory_step(spec["kind"], cfg, rt)
    result = _rss_peak(step, cfg.memory_steps)
    Path(sys.argv[2]).write_text(json.dumps(result))


def measure_memory_subprocess(kind: str, cfg: BenchConfig) -> Dict[str, Any]:
    """Peak RSS of one configuration, measured in a fresh Python process."""
    threads = cfg.threads or torch.get_num_threads()
    spec = {"kind": kind, "config": {**asdict(cfg), "threads": threads}}
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **CHILD_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(spec))
        code = "from tools.bench.memory import child_main; child_main()"
        proc = subprocess.run([sys.executable, "-c", code, str(spec_path), str(out_path)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement {kind!r} failed in its subprocess:\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())
