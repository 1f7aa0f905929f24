"""What one configuration runs: its models, data and timed steps, and the single step a memory measurement runs."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from overhaul_det.distiller import FeatureDistiller
from overhaul_det.ofd import ofd_loss, ofd_loss_reference
from overhaul_det.taps import attach_taps, find_taps
from .config import BenchConfig, build_model
from .runtime import (Runtime, Step, forward_step, loss_step, ofd_step, optimizer, reference_step, regressor_step,
                      student_step, task_step, teacher_step)

__all__ = ["Workload", "build_workload", "memory_step"]


@dataclass
class Workload:
    """The timed steps in the order they run, the distiller and inputs the activation sizes are taken from,
    and for compiled steps the seconds of their first (compiling) call or why compiling failed."""

    steps: Dict[str, Step]
    distiller: FeatureDistiller
    student_input: Tensor
    teacher_input: Tensor
    compile_s: Dict[str, float] = field(default_factory=dict)
    compile_errors: Dict[str, str] = field(default_factory=dict)


def build_workload(cfg: BenchConfig, rt: Runtime) -> Workload:
    """Models, data and the timed steps (those of ``TIMED`` and the options' for classification, else (a)-(d)),
    in the order they are run."""
    if cfg.task != "classification":
        return _task_workload(cfg, rt)
    student = _build_student(cfg)
    plain_student = rt.place(copy.deepcopy(student))
    distiller = _build_distiller(cfg, rt, student, teacher_precision="float32")
    x, y = _batch(cfg, rt, _num_classes(plain_student, cfg, rt))
    loss_tensors = _loss_tensors(cfg, rt)
    plain, rewritten = _rewrite_models(cfg, rt)
    steps = {
        "student_step": student_step(plain_student, optimizer(list(plain_student.parameters()), cfg), x, y, rt),
        "teacher_forward": teacher_step(distiller, x, rt),
        "regressor_step": regressor_step(distiller, optimizer(list(distiller.regressors.parameters()), cfg), x, x,
                                         rt),
        "ofd_step": ofd_step(distiller, optimizer(_ofd_params(distiller), cfg), x, y, rt),
        "loss_naive": loss_step(ofd_loss_reference, *loss_tensors),
        "loss_fast": loss_step(ofd_loss, *loss_tensors),
        "plain_forward": forward_step(plain, x, rt, capture=False),
        "rewritten_forward": forward_step(rewritten, x, rt, capture=True),
        **_precision_and_reference_steps(cfg, rt, x, y),
    }
    work = Workload(steps=steps, distiller=distiller, student_input=x, teacher_input=x)
    if cfg.student_channels_last:
        steps.update(_channels_last_steps(cfg, rt, x, y))
    if cfg.compile:
        _add_compiled_steps(work, cfg, rt, x, y)
    return work


def _precision_and_reference_steps(cfg: BenchConfig, rt: Runtime, x: Tensor, y: Tensor) -> Dict[str, Step]:
    """The teacher forward and OFD step with a teacher in each of ``cfg.teacher_precisions``, and the
    original OFD code's step, each on its own copy of the models (a reduced-precision teacher may be
    made channels-last)."""
    steps = {}
    for precision in cfg.teacher_precisions:
        reduced = _build_distiller(cfg, rt, _build_student(cfg), teacher_precision=precision)
        steps[f"teacher_forward_{precision}"] = teacher_step(reduced, x, rt)
        steps[f"ofd_step_{precision}"] = ofd_step(reduced, optimizer(_ofd_params(reduced), cfg), x, y, rt)
    reference = _build_distiller(cfg, rt, _build_student(cfg), teacher_precision="float32")
    full_teacher = attach_taps(copy.deepcopy(reference.teacher), reference.teacher_taps).train().requires_grad_(True)
    steps["reference_step"] = reference_step(reference, full_teacher, optimizer(_ofd_params(reference), cfg), x, y,
                                             rt)
    return steps


def _channels_last_steps(cfg: BenchConfig, rt: Runtime, x: Tensor, y: Tensor) -> Dict[str, Step]:
    """The student channels-last as ``model.student_channels_last`` makes it (its weights; the batch as it is):
    alone, and in the OFD step with a float32 teacher and with each of ``cfg.teacher_precisions``."""
    student = _channels_last(rt.place(_build_student(cfg)))
    steps = {"student_step_channels_last": student_step(student, optimizer(list(student.parameters()), cfg), x, y,
                                                        rt)}
    for precision in ("float32", *cfg.teacher_precisions):
        distiller = _build_distiller(cfg, rt, _build_student(cfg), teacher_precision=precision)
        _channels_last(distiller.student)  # after placing, which sets every model's format to the run's
        name = "ofd_step_channels_last" if precision == "float32" else f"ofd_step_{precision}_channels_last"
        steps[name] = ofd_step(distiller, optimizer(_ofd_params(distiller), cfg), x, y, rt)
    return steps


def _channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def _add_compiled_steps(work: Workload, cfg: BenchConfig, rt: Runtime, x: Tensor, y: Tensor) -> None:
    """The plain student and the distiller's (tap-capturing) student under ``torch.compile`` (in place, so
    parameter names stay), each step called once here: that call compiles, its seconds go to ``compile_s``;
    a step whose compiling fails is left out, its one-line reason in ``compile_errors``."""
    student = rt.place(_build_student(cfg))
    distiller = _build_distiller(cfg, rt, _build_student(cfg), teacher_precision="float32")
    student.compile()
    distiller.student.compile()
    candidates = {
        "student_step_compiled": student_step(student, optimizer(list(student.parameters()), cfg), x, y, rt),
        "ofd_step_compiled": ofd_step(distiller, optimizer(_ofd_params(distiller), cfg), x, y, rt),
    }
    for name, step in candidates.items():
        try:
            work.compile_s[name] = rt.time(step)
        except Exception as error:  # noqa: BLE001 - a compiler failure is a result of the run, not a crash
            work.compile_errors[name] = _one_line(error)
        else:
            work.steps[name] = step


def memory_step(kind: str, cfg: BenchConfig, rt: Runtime) -> Step:
    """Build only what the timed step ``kind`` needs and return that step."""
    if cfg.task != "classification":
        if kind not in ("student_step", "ofd_step"):
            raise ValueError(f"unknown memory measurement {kind!r} for task {cfg.task!r}")
        from .tasks import build_task_model  # here: only task pairs need the adapters (and mmengine)

        task = build_task_model(cfg, rt, ofd=kind == "ofd_step")
        return task_step(task.loss, optimizer(task.params, cfg), rt)
    if kind in ("loss_naive", "loss_fast"):
        student, teacher, margin = _loss_tensors(cfg, rt)
        return loss_step(ofd_loss_reference if kind == "loss_naive" else ofd_loss, student, teacher, margin)
    student = _build_student(cfg)
    if kind == "student_step":
        student = rt.place(student)
        x, y = _batch(cfg, rt, _num_classes(student, cfg, rt))
        return student_step(student, optimizer(list(student.parameters()), cfg), x, y, rt)
    if kind == "ofd_step":
        distiller = _build_distiller(cfg, rt, student, teacher_precision="float32")
        x, y = _batch(cfg, rt, _num_classes(distiller.student, cfg, rt))
        return ofd_step(distiller, optimizer(_ofd_params(distiller), cfg), x, y, rt)
    raise ValueError(f"unknown memory measurement {kind!r}")


def _one_line(error: BaseException) -> str:
    """``error``'s type and its innermost cause's type and first line (dynamo wraps a compiler's error
    as ``inner_exception``)."""
    root = error
    while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = getattr(root, "inner_exception", None) or root.__cause__
    lines = str(root).strip().splitlines()
    names = type(error).__name__ + ("" if root is error else f": {type(root).__name__}")
    return f"{names}: {lines[0] if lines else ''}".strip()


def _task_workload(cfg: BenchConfig, rt: Runtime) -> Workload:
    """(a)-(d) of a detection or segmentation pair: baseline and OFD adapters on the same batch."""
    from .tasks import build_task_model  # here: only task pairs need the adapters (and mmengine)

    plain, ofd = build_task_model(cfg, rt, ofd=False), build_task_model(cfg, rt, ofd=True)
    distiller, student_x, teacher_x = ofd.distiller, ofd.student_input, ofd.teacher_input
    regressor_opt = optimizer(list(distiller.regressors.parameters()), cfg)
    steps = {
        "student_step": task_step(plain.loss, optimizer(plain.params, cfg), rt),
        "teacher_forward": teacher_step(distiller, teacher_x, rt),
        "regressor_step": regressor_step(distiller, regressor_opt, student_x, teacher_x, rt),
        "ofd_step": task_step(ofd.loss, optimizer(ofd.params, cfg), rt),
    }
    if cfg.student_channels_last:
        for name, with_ofd in (("student_step_channels_last", False), ("ofd_step_channels_last", True)):
            model = build_task_model(cfg, rt, ofd=with_ofd, student_channels_last=True)
            steps[name] = task_step(model.loss, optimizer(model.params, cfg), rt)
    return Workload(steps=steps, distiller=distiller, student_input=student_x, teacher_input=teacher_x)


def _ofd_params(distiller: FeatureDistiller) -> List[nn.Parameter]:
    return list(distiller.student.parameters()) + list(distiller.regressors.parameters())


def _batch(cfg: BenchConfig, rt: Runtime, num_classes: int) -> Tuple[Tensor, Tensor]:
    x = torch.randn(cfg.batch_size, 3, cfg.input_size, cfg.input_size, device=rt.device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=rt.device)
    return x.contiguous(memory_format=rt.memory_format), y


@torch.no_grad()
def _num_classes(model: nn.Module, cfg: BenchConfig, rt: Runtime) -> int:
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


def _build_distiller(cfg: BenchConfig, rt: Runtime, student: nn.Module, teacher_precision: str
                     ) -> FeatureDistiller:
    """Teacher + ``student`` (a CPU model, given its taps here) as a distiller placed on the device."""
    torch.manual_seed(cfg.seed + 1)
    teacher = build_model(cfg.teacher)
    size = (cfg.input_size, cfg.input_size)
    distiller = FeatureDistiller(teacher, student, alpha=cfg.alpha, input_size=size,
                                 teacher_precision=teacher_precision)
    return rt.place(distiller).train()


def _loss_tensors(cfg: BenchConfig, rt: Runtime) -> Tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    dtype = rt.dtype or torch.float32
    shape = tuple(cfg.loss_shape)

    def make(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator).to(rt.device, dtype)

    student = make(*shape).contiguous(memory_format=_format_for(shape, rt)).requires_grad_(True)
    teacher = make(*shape).contiguous(memory_format=_format_for(shape, rt))
    margin = -make(shape[1]).abs()
    return student, teacher, margin


def _format_for(shape: Sequence[int], rt: Runtime) -> torch.memory_format:
    return rt.memory_format if len(shape) == 4 else torch.contiguous_format


def _rewrite_models(cfg: BenchConfig, rt: Runtime) -> Tuple[nn.Module, nn.Module]:
    """The plain model and an identical copy with its taps attached, both in eval mode."""
    torch.manual_seed(cfg.seed + 3)
    plain = build_model(cfg.rewrite_model).eval()
    rewritten = copy.deepcopy(plain)
    attach_taps(rewritten, find_taps(rewritten, input_size=(cfg.input_size, cfg.input_size)))
    return rt.place(plain), rt.place(rewritten)
