"""What the benchmark measures: its configuration, the task defaults and the targets, and their validation."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from .allocator import FREED_MEMORY

__all__ = ["TIMED", "AMP_DTYPES", "REDUCED_PRECISIONS", "TASK_DEFAULTS", "TARGETS", "BenchConfig", "build_model",
           "resolve_device", "check_teacher_precision", "validate"]

# The default classification run's timed steps, in the order they run; task runs time the first four.
# Each of ``teacher_precisions`` adds teacher_forward_<P> and ofd_step_<P> before reference_step;
# ``student_channels_last`` and ``compile`` add their student and OFD steps at the end.
TIMED = ("student_step", "teacher_forward", "regressor_step", "ofd_step",
         "loss_naive", "loss_fast", "plain_forward", "rewritten_forward",
         "teacher_forward_bfloat16", "ofd_step_bfloat16", "reference_step")
REDUCED_PRECISIONS = ("bfloat16", "float16")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TASK_DEFAULTS = {
    "classification": dict(teacher="resnet50", student="mobilenet_v3_large", batch_size=8, input_size=160,
                           alpha=1e-4),
    "detection": dict(teacher="fasterrcnn_resnet50_fpn", student="fasterrcnn_mobilenet_v3_large_fpn",
                      batch_size=2, input_size=320, alpha=5e-6),
    "segmentation": dict(teacher="deeplabv3_resnet50", student="deeplabv3_mobilenet_v3_large", batch_size=4,
                         input_size=256, alpha=1e-5),
}
TARGETS = {"overhead": 1.05, "loss_time_ratio": 0.6, "rewrite_added": 0.03, "teacher_activation_factor": 1.25,
           "reference_ratio": 0.70, "student_ratio": 2.3}


@dataclass
class BenchConfig:
    """What to benchmark; the defaults are the acceptance configuration.

    ``teacher``, ``student``, ``batch_size``, ``input_size`` and ``alpha`` left at None take the
    task's values (``TASK_DEFAULTS``); detection and segmentation names are their adapters' model specs.
    ``student_channels_last`` also times the student channels-last, alone and in the OFD step (classification:
    with each teacher precision). Classification only: ``teacher_precisions`` (the reduced teacher precisions
    timed besides float32) and ``compile`` (also time both with ``torch.compile``). ``freed_memory='keep'`` makes the process
    keep freed memory (``allocator.py``) so that no step is timed with page faults that another is spared.
    ``profile`` names timed steps to run ``profile_calls`` more times each under ``torch.profiler``.
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
    teacher_precisions: Tuple[str, ...] = ("bfloat16",)
    student_channels_last: bool = False
    compile: bool = False
    loss_shape: Tuple[int, ...] = (8, 256, 56, 56)
    rewrite_model: str = "resnet50"
    measure_memory: bool = True
    memory_steps: int = 2
    threads: Optional[int] = None
    seed: int = 0
    alpha: Optional[float] = None
    lr: float = 1e-3
    freed_memory: str = "keep"
    profile: Tuple[str, ...] = ()
    profile_calls: int = 5

    def __post_init__(self) -> None:
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"task={self.task!r}; choose one of {tuple(TASK_DEFAULTS)}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.teacher_precisions = tuple(self.teacher_precisions)
        self.profile = tuple(self.profile)


def build_model(name: str) -> nn.Module:
    """A randomly initialised model by name (``timm/x``, ``torchvision/x`` or bare: torchvision's if it has one)."""
    from overhaul_det.models.zoo import create_model

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


def _unknown_model(name: str, task: str) -> Optional[str]:
    """None when ``task`` can build ``name``; else the resolver's error, with its close names."""
    from overhaul_det.models.zoo import resolve_model_name

    if task == "detection":
        from overhaul_det.models.detection import TORCHVISION_DETECTORS as presets
    elif task == "segmentation":
        from overhaul_det.models.segmentation import TORCHVISION_SEGMENTERS as presets
    else:
        presets = ()
    if name.removeprefix("torchvision/") in presets:
        return None
    try:
        resolve_model_name(name)
    except ValueError as error:
        return str(error)
    return None


def check_teacher_precision(precision: str, device: torch.device) -> None:
    """A clear error unless the distiller runs a teacher in ``precision`` on ``device``: it accepts the
    name, and its autocast really computes in that dtype there (a probe convolution)."""
    from overhaul_det.teacher_mode import resolve_teacher_mode, teacher_autocast

    probe = nn.Conv2d(1, 1, 1).to(device)
    try:
        dtype, _ = resolve_teacher_mode(precision, False, device, probe)
        with torch.no_grad(), warnings.catch_warnings(), teacher_autocast(precision, dtype, device):
            warnings.simplefilter("ignore")  # an unsupported autocast dtype warns and computes in float32
            out_dtype = probe(torch.zeros(1, 1, 1, 1, device=device)).dtype
    except (RuntimeError, ValueError) as error:
        raise RuntimeError(f"a {precision} teacher cannot run on {device}: {error}") from error
    if out_dtype != dtype:
        raise RuntimeError(f"a {precision} teacher cannot run on {device} with torch {torch.__version__}: autocast "
                           f"to {precision} computes in {str(out_dtype).replace('torch.', '')} there; drop "
                           f"{precision} from --teacher-precisions")


def validate(cfg: BenchConfig) -> None:
    """Raise a clear error for a configuration that cannot run here (before building anything)."""
    device = resolve_device(cfg.device, cfg.amp)
    if cfg.repeats < 1 or cfg.warmup < 0 or cfg.memory_steps < 1 or cfg.profile_calls < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, memory_steps >= 1 and profile_calls >= 1, got "
                         f"{cfg.repeats}, {cfg.warmup}, {cfg.memory_steps} and {cfg.profile_calls}")
    if cfg.freed_memory not in FREED_MEMORY:
        raise ValueError(f"freed_memory={cfg.freed_memory!r}; choose one of {FREED_MEMORY}")
    if cfg.batch_size < 2:
        raise ValueError("batch size must be >= 2: the teacher's BatchNorm runs on batch statistics")
    if len(cfg.loss_shape) < 2:
        raise ValueError(f"loss shape {tuple(cfg.loss_shape)} needs a batch and a channel axis")
    wrong = [p for p in cfg.teacher_precisions if p not in REDUCED_PRECISIONS]
    if wrong or not cfg.teacher_precisions or len(set(cfg.teacher_precisions)) < len(cfg.teacher_precisions):
        raise ValueError(f"teacher_precisions={cfg.teacher_precisions}: need one or more of {REDUCED_PRECISIONS}, "
                         "each once")
    if cfg.task != "classification" and cfg.compile:
        raise ValueError("--compile times classification pairs only")
    if cfg.student_channels_last and cfg.channels_last:
        raise ValueError("--student-channels-last adds channels-last student steps; with --channels-last every "
                         "step already is: use one of them")
    if cfg.task == "classification":
        for precision in cfg.teacher_precisions:
            check_teacher_precision(precision, device)
    names = [cfg.teacher, cfg.student] + ([cfg.rewrite_model] if cfg.task == "classification" else [])
    unknown = [reason for reason in (_unknown_model(name, cfg.task) for name in names) if reason]
    if unknown:
        raise ValueError(f"task {cfg.task}: " + "; ".join(unknown))
