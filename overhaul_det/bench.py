"""Performance benchmark of OFD: what distillation adds to a student's training step.

Times, in one process and interleaved (each repeat runs every measurement once, in a fixed
order, so drifts hit all of them alike), after warm-up, as medians:
(a) the plain student's train step, (b) the teacher's forward to its last tap (no_grad),
(c) regressors + OFD loss forward/backward/step on captured features, (d) the full OFD step;
for classification also ``ofd_loss`` against ``ofd_loss_reference`` on the same tensors, and a
plain model's eval forward against the same model with taps attached. Detection and
segmentation pairs (``task``) run (a)-(d) through their task adapters (see ``bench_tasks``).
Peak memory of (a) and (d) comes from a fresh subprocess per configuration on CPU (peak RSS)
or ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .distiller import FeatureDistiller
from .ofd import ofd_loss, ofd_loss_reference
from .taps import attach_taps, capture_taps, find_taps

__all__ = ["BenchConfig", "build_model", "run_benchmark", "format_table", "main"]

Step = Callable[[], None]
# The classification run's timed steps, in the order they run; task runs time the first four.
TIMED = ("student_step", "teacher_forward", "regressor_step", "ofd_step",
         "loss_naive", "loss_fast", "plain_forward", "rewritten_forward")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TASK_DEFAULTS = {
    "classification": dict(teacher="resnet50", student="mobilenet_v3_large", batch_size=8, input_size=160,
                           alpha=1e-4),
    "detection": dict(teacher="fasterrcnn_resnet50_fpn", student="fasterrcnn_mobilenet_v3_large_fpn",
                      batch_size=2, input_size=320, alpha=5e-6),
    "segmentation": dict(teacher="deeplabv3_resnet50", student="deeplabv3_mobilenet_v3_large", batch_size=4,
                         input_size=256, alpha=1e-5),
}
TARGETS = {"overhead": 1.05, "loss_time_ratio": 0.6, "rewrite_added": 0.03, "teacher_activation_factor": 1.25}
# Large blocks are mmap'ed and unmapped on free, so peak RSS follows live tensors, not heap slack.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass
class BenchConfig:
    """What to benchmark; the defaults are the acceptance configuration.

    ``teacher``, ``student``, ``batch_size``, ``input_size`` and ``alpha`` left at None take the
    task's values (``TASK_DEFAULTS``); detection and segmentation names are their adapters' model specs.
    """

    task: str = "classification"
    teacher: Optional[str] = None
    student: Optional[str] = None
    batch_size: Optional[int] = None
    input_size: Optional[int] = None
    repeats: int = 7
    warmup: int = 2
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    loss_shape: Tuple[int, ...] = (8, 256, 56, 56)
    rewrite_model: str = "resnet50"
    measure_memory: bool = True
    memory_steps: int = 2
    threads: Optional[int] = None
    seed: int = 0
    alpha: Optional[float] = None
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"task={self.task!r}; choose one of {tuple(TASK_DEFAULTS)}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)


# --------------------------------------------------------------------------------------------
# Building


def build_model(name: str) -> nn.Module:
    """A randomly initialised model by name (``timm/x``, ``torchvision/x`` or bare: torchvision's if it has one)."""
    from .models.zoo import create_model

    return create_model(name)


def resolve_device(name: str, amp: str) -> torch.device:
    """The torch.device for ``name``; a clear error where the hardware lacks it or the AMP dtype."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r}; choose one of {tuple(AMP_DTYPES)}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available on this machine "
                               "(torch.cuda.is_available() is False); use --device cpu")
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"--amp bf16 was requested but {torch.cuda.get_device_name(device)} has no bfloat16")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported; use cpu or cuda")
    return device


class _Runtime:
    """Device, autocast and gradient scaling shared by every measured step."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.device = resolve_device(cfg.device, cfg.amp)
        self.dtype = AMP_DTYPES[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def place(self, module: nn.Module) -> nn.Module:
        return module.to(self.device, memory_format=self.memory_format)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward, optimizer step, then gradients freed (so memory between steps is the state)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _optimizer(params: Sequence[nn.Parameter], cfg: BenchConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)


def _batch(cfg: BenchConfig, rt: _Runtime, num_classes: int) -> Tuple[Tensor, Tensor]:
    x = torch.randn(cfg.batch_size, 3, cfg.input_size, cfg.input_size, device=rt.device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=rt.device)
    return x.contiguous(memory_format=rt.memory_format), y


@torch.no_grad()
def _num_classes(model: nn.Module, cfg: BenchConfig, rt: _Runtime) -> int:
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=rt.device)
    out = model(x.contiguous(memory_format=rt.memory_format))
    model.train(was_training)
    return out.shape[-1]


def _build_student(cfg: BenchConfig) -> nn.Module:
    """The student on the CPU (taps are found there), in train mode."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.student).train()


def _build_distiller(cfg: BenchConfig, rt: _Runtime, student: nn.Module) -> FeatureDistiller:
    """Teacher + ``student`` (a CPU model, given its taps here) as a distiller placed on the device."""
    torch.manual_seed(cfg.seed + 1)
    teacher = build_model(cfg.teacher)
    size = (cfg.input_size, cfg.input_size)
    distiller = FeatureDistiller(teacher, student, alpha=cfg.alpha, input_size=size)
    return rt.place(distiller).train()


def _loss_tensors(cfg: BenchConfig, rt: _Runtime) -> Tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    dtype = rt.dtype or torch.float32
    shape = tuple(cfg.loss_shape)

    def make(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator).to(rt.device, dtype)

    student = make(*shape).contiguous(memory_format=_format_for(shape, rt)).requires_grad_(True)
    teacher = make(*shape).contiguous(memory_format=_format_for(shape, rt))
    margin = -make(shape[1]).abs()
    return student, teacher, margin


def _format_for(shape: Sequence[int], rt: _Runtime) -> torch.memory_format:
    return rt.memory_format if len(shape) == 4 else torch.contiguous_format


# --------------------------------------------------------------------------------------------
# Steps


def _student_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, rt: _Runtime) -> Step:
    def step() -> None:
        with rt.autocast():
            loss = F.cross_entropy(model(x), y)
        rt.backward_step(loss, opt)

    return step


def _ofd_step(distiller: FeatureDistiller, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, rt: _Runtime) -> Step:
    def step() -> None:
        with rt.autocast():
            out, losses = distiller(x)
            loss = F.cross_entropy(out, y) + losses["loss_ofd"]
        rt.backward_step(loss, opt)

    return step


def _task_step(loss: Callable[[], Tensor], opt: torch.optim.Optimizer, rt: _Runtime) -> Step:
    def step() -> None:
        with rt.autocast():
            total = loss()
        rt.backward_step(total, opt)

    return step


def _teacher_step(distiller: FeatureDistiller, x: Tensor, rt: _Runtime) -> Step:
    def step() -> None:
        with rt.autocast():
            distiller.teacher_features(x)

    return step


def _captured_features(distiller: FeatureDistiller, student_x: Tensor, teacher_x: Tensor,
                       rt: _Runtime) -> Tuple[List[Tensor], List[Tensor]]:
    """Student tap tensors (of ``student_x``) as leaves that take a gradient, and the teacher's
    tap tensors (of ``teacher_x``)."""
    with torch.no_grad(), rt.autocast():
        with distiller.capture_student() as captured:
            distiller.student(student_x)
            student = [captured[s.name].detach().clone() for s in distiller.student_taps]
        teacher = distiller.teacher_features(teacher_x)
    return [s.requires_grad_(True) for s in student], teacher


def _regressor_step(distiller: FeatureDistiller, opt: torch.optim.Optimizer, student_x: Tensor, teacher_x: Tensor,
                    rt: _Runtime) -> Step:
    student, teacher = _captured_features(distiller, student_x, teacher_x, rt)

    def step() -> None:
        with rt.autocast():
            loss = distiller.distill_loss(student, teacher)
        rt.backward_step(loss, opt)
        for feature in student:
            feature.grad = None

    return step


def _loss_step(fn: Callable[..., Tensor], student: Tensor, teacher: Tensor, margin: Tensor) -> Step:
    def step() -> None:
        fn(student, teacher, margin).backward()
        student.grad = None

    return step


def _forward_step(model: nn.Module, x: Tensor, rt: _Runtime, capture: bool) -> Step:
    def step() -> None:
        with torch.no_grad(), rt.autocast(), (capture_taps(model) if capture else contextlib.nullcontext()):
            model(x)

    return step


def _rewrite_models(cfg: BenchConfig, rt: _Runtime) -> Tuple[nn.Module, nn.Module]:
    """The plain model and an identical copy with its taps attached, both in eval mode."""
    torch.manual_seed(cfg.seed + 3)
    plain = build_model(cfg.rewrite_model).eval()
    rewritten = copy.deepcopy(plain)
    attach_taps(rewritten, find_taps(rewritten, input_size=(cfg.input_size, cfg.input_size)))
    return rt.place(plain), rt.place(rewritten)


# --------------------------------------------------------------------------------------------
# Timing


def _time_once(step: Step, rt: _Runtime) -> float:
    rt.sync()
    start = time.perf_counter()
    step()
    rt.sync()
    return time.perf_counter() - start


def time_interleaved(steps: Dict[str, Step], repeats: int, warmup: int, rt: _Runtime) -> Dict[str, List[float]]:
    """Run every step once per round, in order; ``warmup`` rounds are discarded."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps.items():
            elapsed = _time_once(step, rt)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


# --------------------------------------------------------------------------------------------
# Activation sizes (from the ops actually run)


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


def activation_sizes(distiller: FeatureDistiller, student_x: Tensor, teacher_x: Tensor, rt: _Runtime) -> Dict[str, int]:
    """Largest tensor of the teacher's forward, its tap tensors, and the regressors' outputs: the
    conv and BN outputs, and the BN output resized to the teacher's map where the sizes differ
    (``align='interpolate'``), which is the tensor the loss compares with the teacher."""
    student, _ = _captured_features(distiller, student_x, teacher_x, rt)
    with torch.no_grad(), rt.autocast():
        with _OutputBytes(teacher_x.shape[0]) as teacher_ops:
            teacher = distiller.teacher_features(teacher_x)
        with _OutputBytes(student_x.shape[0]) as regressor_ops:
            for regressor, feature, target, pair in zip(distiller.regressors, student, teacher, distiller.pairs):
                distiller.match_size(regressor(feature), target, pair)
    return {
        "teacher_largest_activation_bytes": max(teacher_ops.sizes),
        "teacher_tap_bytes": sum(t.numel() * t.element_size() for t in teacher),
        "regressor_activation_bytes": sum(regressor_ops.sizes),
    }


# --------------------------------------------------------------------------------------------
# Peak memory


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


def _cuda_peak(step: Step, rt: _Runtime) -> Dict[str, Any]:
    rt.sync()
    torch.cuda.reset_peak_memory_stats(rt.device)
    before = torch.cuda.memory_allocated(rt.device)
    step()
    rt.sync()
    peak = torch.cuda.max_memory_allocated(rt.device) - before
    return {"peak_bytes": peak, "step_peak_bytes": peak, "memory_before_bytes": before,
            "method": "torch.cuda.max_memory_allocated minus memory_allocated before the step"}


def _child_step(kind: str, cfg: BenchConfig, rt: _Runtime) -> Step:
    """Build only what ``kind`` needs and return its step."""
    if cfg.task != "classification":
        if kind not in ("student_step", "ofd_step"):
            raise ValueError(f"unknown memory measurement {kind!r} for task {cfg.task!r}")
        from .bench_tasks import build_task_model

        task = build_task_model(cfg, rt, ofd=kind == "ofd_step")
        return _task_step(task.loss, _optimizer(task.params, cfg), rt)
    if kind in ("loss_naive", "loss_fast"):
        student, teacher, margin = _loss_tensors(cfg, rt)
        return _loss_step(ofd_loss_reference if kind == "loss_naive" else ofd_loss, student, teacher, margin)
    student = _build_student(cfg)
    if kind == "student_step":
        student = rt.place(student)
        x, y = _batch(cfg, rt, _num_classes(student, cfg, rt))
        return _student_step(student, _optimizer(list(student.parameters()), cfg), x, y, rt)
    if kind == "ofd_step":
        distiller = _build_distiller(cfg, rt, student)
        x, y = _batch(cfg, rt, _num_classes(distiller.student, cfg, rt))
        return _ofd_step(distiller, _optimizer(_ofd_params(distiller), cfg), x, y, rt)
    raise ValueError(f"unknown memory measurement {kind!r}")


def _child_main() -> None:
    """Entry point of a memory-measuring subprocess: spec JSON path in argv[1], result to argv[2]."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = BenchConfig(**spec["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = _Runtime(cfg)
    step = _child_step(spec["kind"], cfg, rt)
    result = _rss_peak(step, cfg.memory_steps)
    Path(sys.argv[2]).write_text(json.dumps(result))


def measure_memory_subprocess(kind: str, cfg: BenchConfig) -> Dict[str, Any]:
    """Peak RSS of one configuration, measured in a fresh Python process."""
    threads = cfg.threads or torch.get_num_threads()
    spec = {"kind": kind, "config": {**asdict(cfg), "threads": threads}}
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **CHILD_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(spec))
        code = "from overhaul_det.bench import _child_main; _child_main()"
        proc = subprocess.run([sys.executable, "-c", code, str(spec_path), str(out_path)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement {kind!r} failed in its subprocess:\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class _Workload:
    steps: Dict[str, Step] = field(default_factory=dict)
    distiller: Optional[FeatureDistiller] = None
    student_input: Optional[Tensor] = None
    teacher_input: Optional[Tensor] = None


def _ofd_params(distiller: FeatureDistiller) -> List[nn.Parameter]:
    return list(distiller.student.parameters()) + list(distiller.regressors.parameters())


def _workload(cfg: BenchConfig, rt: _Runtime) -> _Workload:
    """Models, data and the timed steps (eight for classification, else (a)-(d)), in the order they are run."""
    if cfg.task != "classification":
        return _task_workload(cfg, rt)
    student = _build_student(cfg)
    plain_student = rt.place(copy.deepcopy(student))
    distiller = _build_distiller(cfg, rt, student)
    x, y = _batch(cfg, rt, _num_classes(plain_student, cfg, rt))
    loss_tensors = _loss_tensors(cfg, rt)
    plain, rewritten = _rewrite_models(cfg, rt)
    steps = {
        "student_step": _student_step(plain_student, _optimizer(list(plain_student.parameters()), cfg), x, y, rt),
        "teacher_forward": _teacher_step(distiller, x, rt),
        "regressor_step": _regressor_step(distiller, _optimizer(list(distiller.regressors.parameters()), cfg), x, x,
                                          rt),
        "ofd_step": _ofd_step(distiller, _optimizer(_ofd_params(distiller), cfg), x, y, rt),
        "loss_naive": _loss_step(ofd_loss_reference, *loss_tensors),
        "loss_fast": _loss_step(ofd_loss, *loss_tensors),
        "plain_forward": _forward_step(plain, x, rt, capture=False),
        "rewritten_forward": _forward_step(rewritten, x, rt, capture=True),
    }
    return _Workload(steps=steps, distiller=distiller, student_input=x, teacher_input=x)


def _task_workload(cfg: BenchConfig, rt: _Runtime) -> _Workload:
    """(a)-(d) of a detection or segmentation pair: baseline and OFD adapters on the same batch."""
    from .bench_tasks import build_task_model

    plain, ofd = build_task_model(cfg, rt, ofd=False), build_task_model(cfg, rt, ofd=True)
    distiller, student_x, teacher_x = ofd.distiller, ofd.student_input, ofd.teacher_input
    regressor_opt = _optimizer(list(distiller.regressors.parameters()), cfg)
    steps = {
        "student_step": _task_step(plain.loss, _optimizer(plain.params, cfg), rt),
        "teacher_forward": _teacher_step(distiller, teacher_x, rt),
        "regressor_step": _regressor_step(distiller, regressor_opt, student_x, teacher_x, rt),
        "ofd_step": _task_step(ofd.loss, _optimizer(ofd.params, cfg), rt),
    }
    return _Workload(steps=steps, distiller=distiller, student_input=student_x, teacher_input=teacher_x)


def _check(value: Optional[float], limit: Optional[float]) -> Dict[str, Any]:
    ok = None if value is None or limit is None else bool(value <= limit)
    return {"value": value, "limit": limit, "pass": ok}


def _memory(cfg: BenchConfig, rt: _Runtime, work: _Workload) -> Dict[str, Any]:
    """Peak memory of (a), (d) and both loss forms where timed; a subprocess each on CPU, in process on CUDA."""
    kinds = [kind for kind in ("student_step", "ofd_step", "loss_naive", "loss_fast") if kind in work.steps]
    if rt.device.type == "cuda":
        memory = {kind: _cuda_peak(work.steps[kind], rt) for kind in kinds}
    else:
        memory = {kind: measure_memory_subprocess(kind, cfg) for kind in kinds}
    if "loss_fast" in memory:
        memory["loss_extra_bytes"] = memory["loss_fast"]["peak_bytes"] - memory["loss_naive"]["peak_bytes"]
    return memory


def _environment(rt: _Runtime) -> Dict[str, Any]:
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": str(rt.device)}
    with contextlib.suppress(ImportError):
        import timm

        env["timm"] = timm.__version__
    if rt.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(rt.device)
    return env


def _summary(times: Dict[str, List[float]]) -> Dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def _checks(median: Dict[str, float], memory: Optional[Dict[str, Any]], sizes: Dict[str, int]) -> Dict[str, Any]:
    """Every target whose measurements were taken."""
    separate = median["student_step"] + median["teacher_forward"] + median["regressor_step"]
    checks = {"overhead": _check(median["ofd_step"] / separate, TARGETS["overhead"])}
    if "loss_fast" in median:
        checks["loss_time_ratio"] = _check(median["loss_fast"] / median["loss_naive"], TARGETS["loss_time_ratio"])
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


def _known_model(name: str, task: str) -> bool:
    from .models.zoo import resolve_model_name

    if task == "detection":
        from .models.detection import TORCHVISION_DETECTORS as presets
    elif task == "segmentation":
        from .models.segmentation import TORCHVISION_SEGMENTERS as presets
    else:
        presets = ()
    if name.removeprefix("torchvision/") in presets:
        return True
    try:
        resolve_model_name(name)
    except ValueError:
        return False
    return True


def validate(cfg: BenchConfig) -> None:
    """Raise a clear error for a configuration that cannot run here (before building anything)."""
    resolve_device(cfg.device, cfg.amp)
    if cfg.repeats < 1 or cfg.warmup < 0 or cfg.memory_steps < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and memory_steps >= 1, got "
                         f"{cfg.repeats}, {cfg.warmup} and {cfg.memory_steps}")
    if cfg.batch_size < 2:
        raise ValueError("batch size must be >= 2: the teacher's BatchNorm runs on batch statistics")
    if len(cfg.loss_shape) < 2:
        raise ValueError(f"loss shape {tuple(cfg.loss_shape)} needs a batch and a channel axis")
    names = [cfg.teacher, cfg.student] + ([cfg.rewrite_model] if cfg.task == "classification" else [])
    unknown = [n for n in names if not _known_model(n, cfg.task)]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} for task {cfg.task}: neither torchvision nor timm knows them")


def run_benchmark(cfg: BenchConfig) -> Dict[str, Any]:
    """Run every measurement of ``cfg`` and return the result dict (times in seconds, sizes in bytes)."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = _Runtime(cfg)
    work = _workload(cfg, rt)
    times = time_interleaved(work.steps, cfg.repeats, cfg.warmup, rt)
    median = _summary(times)
    sizes = activation_sizes(work.distiller, work.student_input, work.teacher_input, rt)
    memory = _memory(cfg, rt, work) if cfg.measure_memory else None
    checks = _checks(median, memory, sizes)
    return {
        "config": asdict(cfg),
        "environment": _environment(rt),
        "order": list(work.steps),
        "times_s": times,
        "median_s": median,
        **{key: checks[key]["value"] for key in ("overhead", "loss_time_ratio", "rewrite_added") if key in checks},
        "activations": sizes,
        "memory": memory,
        "checks": checks,
    }


# --------------------------------------------------------------------------------------------
# Report


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.1f} MiB"


def _verdict(check: Dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[check["pass"]]


def format_table(result: Dict[str, Any]) -> str:
    """The result as a plain-text table (median times, ratios, memory, pass/fail per target)."""
    cfg, median, checks = result["config"], result["median_s"], result["checks"]
    labels = {
        "student_step": "(a) student train step",
        "teacher_forward": "(b) teacher forward to last tap (no_grad)",
        "regressor_step": "(c) regressors + loss fwd/bwd/step",
        "ofd_step": "(d) full OFD step",
        "loss_naive": f"ofd_loss_reference fwd+bwd {tuple(cfg['loss_shape'])}",
        "loss_fast": "ofd_loss fwd+bwd (same tensors)",
        "plain_forward": f"{cfg['rewrite_model']} eval forward, plain",
        "rewritten_forward": f"{cfg['rewrite_model']} eval forward, taps attached",
    }
    task = "" if cfg["task"] == "classification" else f"{cfg['task']}: "
    lines = [f"{task}{cfg['teacher']} -> {cfg['student']}, batch {cfg['batch_size']}, {cfg['input_size']} px, "
             f"device {cfg['device']}, amp {cfg['amp']}, channels_last {cfg['channels_last']}, "
             f"median of {cfg['repeats']} (warm-up {cfg['warmup']}), {result['environment']['torch_threads']} threads",
             f"{'measurement':<56} {'median':>12}"]
    lines += [f"{labels[name]:<56} {median[name] * 1e3:>9.1f} ms" for name in result["order"]]
    lines.append(f"{'check':<56} {'value':>12} {'target':>12}  result")
    ratio_rows = [("overhead d/(a+b+c)", "overhead", "{:.3f}", "<= {:.2f}"),
                  ("ofd_loss time / reference time", "loss_time_ratio", "{:.3f}", "<= {:.2f}"),
                  ("taps-attached forward, added time", "rewrite_added", "{:+.1%}", "<= {:.0%}")]
    for label, key, fmt, target in ratio_rows:
        if key not in checks:
            continue
        check = checks[key]
        value, limit = fmt.format(check["value"]), target.format(check["limit"])
        lines.append(f"{label:<56} {value:>12} {limit:>12}  {_verdict(check)}")
    lines += _memory_lines(result)
    return "\n".join(lines)


def _memory_lines(result: Dict[str, Any]) -> List[str]:
    memory, sizes = result["memory"], result["activations"]
    lines = [f"{'teacher largest activation':<56} {_mib(sizes['teacher_largest_activation_bytes']):>12}",
             f"{'teacher tap tensors (all taps)':<56} {_mib(sizes['teacher_tap_bytes']):>12}",
             f"{'regressor activations (all taps)':<56} {_mib(sizes['regressor_activation_bytes']):>12}"]
    if memory is None:
        return lines + ["peak memory: not measured"]
    checks = result["checks"]
    for key, check_name, label in (("peak_bytes", "ofd_peak_memory_bytes", "above RSS after construction"),
                                   ("step_peak_bytes", "ofd_step_peak_memory_bytes", "steady-state step")):
        check = checks[check_name]
        limit = "-" if check["limit"] is None else "<= " + _mib(check["limit"])
        lines += [f"{'peak memory (a) student step, ' + label:<56} {_mib(memory['student_step'][key]):>12}",
                  f"{'peak memory (d) OFD step, ' + label:<56} {_mib(check['value']):>12} {limit:>12}  "
                  f"{_verdict(check)}"]
    if "loss_extra_bytes" in memory:
        lines += [f"{'peak memory ofd_loss_reference fwd+bwd':<56} {_mib(memory['loss_naive']['peak_bytes']):>12}",
                  f"{'peak memory ofd_loss fwd+bwd':<56} {_mib(memory['loss_fast']['peak_bytes']):>12}",
                  f"{'ofd_loss extra memory vs reference':<56} {_mib(memory['loss_extra_bytes']):>12}"]
    return lines + [f"memory method: {memory['ofd_step']['method']}"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overhaul-det bench", description=__doc__.split("\n")[0])
    defaults = BenchConfig()
    parser.add_argument("--task", choices=tuple(TASK_DEFAULTS), default=defaults.task,
                        help="which pair: classifiers (default), Faster R-CNNs or DeepLabV3s")
    task_default = "(default: the task's, see TASK_DEFAULTS in overhaul_det/bench.py)"
    parser.add_argument("--teacher", default=None, help=f"teacher model {task_default}")
    parser.add_argument("--student", default=None, help=f"student model {task_default}")
    parser.add_argument("--batch-size", type=int, default=None, help=task_default)
    parser.add_argument("--input-size", type=int, default=None, help=task_default)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default=defaults.amp)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--loss-shape", type=int, nargs="+", default=list(defaults.loss_shape),
                        help="shape of the tensors for the ofd_loss comparison (N C H W; classification only)")
    parser.add_argument("--rewrite-model", default=defaults.rewrite_model,
                        help="model whose plain and taps-attached eval forwards are compared (classification only)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    return parser


def _config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(task=args.task, teacher=args.teacher, student=args.student, batch_size=args.batch_size,
                       input_size=args.input_size, repeats=args.repeats, warmup=args.warmup, device=args.device,
                       amp=args.amp, channels_last=args.channels_last, loss_shape=tuple(args.loss_shape),
                       rewrite_model=args.rewrite_model, measure_memory=not args.no_memory,
                       threads=args.threads, seed=args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`overhaul-det bench`: run the benchmark, print the table, optionally write JSON."""
    parser = _parser()
    args = parser.parse_args(argv)
    cfg = _config(args)
    try:
        validate(cfg)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    result = run_benchmark(cfg)
    sys.stdout.write(format_table(result) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
