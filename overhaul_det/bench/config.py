"""What the benchmark measures: its configuration, the task defaults and the targets, and their validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["TIMED", "AMP_DTYPES", "TASK_DEFAULTS", "TARGETS", "BenchConfig", "build_model", "resolve_device",
           "validate"]

# The classification run's timed steps, in the order they run; task runs time the first four.
TIMED = ("student_step", "teacher_forward", "regressor_step", "ofd_step",
         "loss_naive", "loss_fast", "plain_forward", "rewritten_forward",
         "teacher_forward_bfloat16", "ofd_step_bfloat16", "reference_step")
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


def build_model(name: str) -> nn.Module:
    """A randomly initialised model by name (``timm/x``, ``torchvision/x`` or bare: torchvision's if it has one)."""
    from ..models.zoo import create_model

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


def _known_model(name: str, task: str) -> bool:
    from ..models.zoo import resolve_model_name

    if task == "detection":
        from ..models.detection import TORCHVISION_DETECTORS as presets
    elif task == "segmentation":
        from ..models.segmentation import TORCHVISION_SEGMENTERS as presets
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
