"""Where and how steps run (device, autocast, gradient scaling), and the builders of the timed steps.

A step is a closure over its models, optimizer and batch; calling it runs one measured unit of work.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from overhaul_det.distiller import FeatureDistiller
from overhaul_det.taps import capture_taps
from .config import AMP_DTYPES, BenchConfig, resolve_device

__all__ = ["Step", "Runtime", "optimizer", "student_step", "ofd_step", "reference_loss", "reference_step", "task_step",
           "teacher_step", "captured_features", "regressor_step", "loss_step", "forward_step"]

Step = Callable[[], None]


class Runtime:
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
        """``module`` on the device; with ``channels_last`` every model channels-last, else formats stay as built
        (a task model's channels-last student stays so)."""
        if self.memory_format == torch.channels_last:
            return module.to(self.device, memory_format=torch.channels_last)
        return module.to(self.device)

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

    def time(self, step: Step) -> float:
        """Seconds of one call of ``step``, the device synchronised before and after."""
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return time.perf_counter() - start


def optimizer(params: Sequence[nn.Parameter], cfg: BenchConfig) -> torch.optim.Optimizer:
    """The SGD every step trains with (momentum 0.9, weight decay 1e-4, ``cfg.lr``)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)


def student_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, rt: Runtime) -> Step:
    """(a) for classification: the plain student's cross-entropy step."""

    def step() -> None:
        with rt.autocast():
            loss = F.cross_entropy(model(x), y)
        rt.backward_step(loss, opt)

    return step


def ofd_step(distiller: FeatureDistiller, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, rt: Runtime) -> Step:
    """(d) for classification: cross-entropy plus the distiller's OFD loss."""

    def step() -> None:
        with rt.autocast():
            out, losses = distiller(x)
            loss = F.cross_entropy(out, y) + losses["loss_ofd"]
        rt.backward_step(loss, opt)

    return step


def reference_loss(distiller: FeatureDistiller, teacher: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy plus OFD as the original OFD code computes it, on the same models and taps: the
    teacher's whole forward in train mode with autograd on (taps attached to ``teacher``, a copy),
    the connectors, and the loss through full-size temporaries (mse_loss(reduction='none') times a
    float mask)."""
    n = len(distiller.pairs)
    with capture_taps(distiller.student) as student_feats:
        out = distiller.student(x)
    with capture_taps(teacher) as teacher_feats:
        teacher(x)
    sources = distiller.student_features(student_feats)
    targets = distiller.teacher_tensors(teacher_feats)
    loss = 0.0
    for i, (pair, regressor) in enumerate(zip(distiller.pairs, distiller.regressors)):
        target = targets[i].detach()
        source = distiller.match_size(regressor(sources[i]), target, pair)
        shape = (1, -1, 1, 1) if distiller.layouts[i] == "nchw" else (1, 1, -1)
        target = torch.max(target, distiller.margins[i].view(shape))
        term = F.mse_loss(source, target, reduction="none") * ((source > target) | (target > 0)).float()
        loss = loss + term.sum() / 2 ** (n - i - 1)
    return F.cross_entropy(out, y) + distiller.alpha * loss / x.shape[0]


def reference_step(distiller: FeatureDistiller, teacher: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   rt: Runtime) -> Step:
    """(r): one step of ``reference_loss``, what the original OFD code runs per step."""

    def step() -> None:
        with rt.autocast():
            loss = reference_loss(distiller, teacher, x, y)
        rt.backward_step(loss, opt)

    return step


def task_step(loss: Callable[[], Tensor], opt: torch.optim.Optimizer, rt: Runtime) -> Step:
    """(a) or (d) for a task adapter: its summed losses on a fixed batch."""

    def step() -> None:
        with rt.autocast():
            total = loss()
        rt.backward_step(total, opt)

    return step


def teacher_step(distiller: FeatureDistiller, x: Tensor, rt: Runtime) -> Step:
    """(b): the teacher's forward to its last tap."""

    def step() -> None:
        with rt.autocast():
            distiller.teacher_features(x)

    return step


def captured_features(distiller: FeatureDistiller, student_x: Tensor, teacher_x: Tensor,
                      rt: Runtime) -> Tuple[List[Tensor], List[Tensor]]:
    """Student tap tensors (of ``student_x``) as leaves that take a gradient, and the teacher's
    tap tensors (of ``teacher_x``)."""
    with torch.no_grad(), rt.autocast():
        with distiller.capture_student() as captured:
            distiller.student(student_x)
            student = [captured[s.name].detach().clone() for s in distiller.student_taps]
        teacher = distiller.teacher_features(teacher_x)
    return [s.requires_grad_(True) for s in student], teacher


def regressor_step(distiller: FeatureDistiller, opt: torch.optim.Optimizer, student_x: Tensor, teacher_x: Tensor,
                   rt: Runtime) -> Step:
    """(c): regressors and OFD loss on captured features, backward, step on the regressors."""
    student, teacher = captured_features(distiller, student_x, teacher_x, rt)

    def step() -> None:
        with rt.autocast():
            loss = distiller.distill_loss(student, teacher)
        rt.backward_step(loss, opt)
        for feature in student:
            feature.grad = None

    return step


def loss_step(fn: Callable[..., Tensor], student: Tensor, teacher: Tensor, margin: Tensor) -> Step:
    """One OFD loss form, forward and backward, on fixed tensors."""

    def step() -> None:
        fn(student, teacher, margin).backward()
        student.grad = None

    return step


def forward_step(model: nn.Module, x: Tensor, rt: Runtime, capture: bool) -> Step:
    """An eval forward under no_grad, with the model's attached taps capturing if ``capture``."""

    def step() -> None:
        with torch.no_grad(), rt.autocast(), (capture_taps(model) if capture else contextlib.nullcontext()):
            model(x)

    return step
