"""Detection and segmentation pairs for the benchmark: a task adapter, a fixed random batch, its loss.

The baseline is the adapter with ``ofd=dict(alpha=0)`` (no teacher is built), the OFD model the
same adapter with its teacher; both are built from the same seed, so their students are identical.
Weights are random; detection targets are valid boxes, segmentation labels random classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from overhaul_det.distiller import FeatureDistiller
from overhaul_det.tasks.detection import DetectionDistiller
from overhaul_det.tasks.segmentation import SegmentationDistiller
from .config import BenchConfig
from .runtime import Runtime

__all__ = ["TaskModel", "build_task_model"]

NUM_CLASSES = {"detection": 91, "segmentation": 21}  # detection counts the background
BOXES_PER_IMAGE = 3


@dataclass
class TaskModel:
    """A task adapter in train mode, the sum of its losses on a fixed batch, and what a step trains.

    With OFD, also its distiller and the tensors a step feeds the distiller's student and teacher.
    """

    model: nn.Module
    loss: Callable[[], Tensor]
    params: List[nn.Parameter]
    distiller: Optional[FeatureDistiller] = None
    student_input: Optional[Tensor] = None
    teacher_input: Optional[Tensor] = None


def build_task_model(cfg: BenchConfig, rt: Runtime, ofd: bool, student_channels_last: bool = False) -> TaskModel:
    """The baseline (``ofd=False``) or OFD model of ``cfg.task`` on ``rt``'s device, with its batch; its student
    channels-last as ``model.student_channels_last`` makes it."""
    builders = {"detection": _detection, "segmentation": _segmentation}
    if cfg.task not in builders:
        raise ValueError(f"task {cfg.task!r} has no adapter here; choose one of {tuple(builders)}")
    return builders[cfg.task](cfg, rt, dict(ofd=_ofd_options(cfg, ofd), student_channels_last=student_channels_last))


def _ofd_options(cfg: BenchConfig, ofd: bool) -> dict:
    return dict(alpha=cfg.alpha if ofd else 0, input_size=(3, cfg.input_size, cfg.input_size))


def _trainable(model: nn.Module) -> List[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _detection(cfg: BenchConfig, rt: Runtime, options: dict) -> TaskModel:
    torch.manual_seed(cfg.seed)
    model = DetectionDistiller(teacher=dict(name=cfg.teacher), student=dict(name=cfg.student),
                               num_classes=NUM_CLASSES["detection"], min_size=cfg.input_size,
                               max_size=cfg.input_size, **options)
    model = rt.place(model).train()
    images, samples = _detection_batch(cfg, rt.device)
    task = TaskModel(model, lambda: sum(model.loss(images, samples).values()), _trainable(model))
    if model.ofd_enabled:
        with torch.no_grad():
            batch, _ = model.student_model.transform(images)
        task.distiller, task.student_input = model.distiller, batch.tensors
        task.teacher_input = model.teacher_input(batch.tensors)
    return task


def _detection_batch(cfg: BenchConfig, device: torch.device) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """Images in [0, 1] and per image a few boxes (xyxy, sides 10-50 % of the image) with labels 1..90."""
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    size = cfg.input_size
    images, samples = [], []
    for _ in range(cfg.batch_size):
        images.append(torch.rand(3, size, size, generator=generator).to(device))
        corner = torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * size / 2
        extent = (0.1 + 0.4 * torch.rand(BOXES_PER_IMAGE, 2, generator=generator)) * size
        labels = torch.randint(1, NUM_CLASSES["detection"], (BOXES_PER_IMAGE,), generator=generator)
        samples.append(dict(boxes=torch.cat([corner, corner + extent], dim=1).to(device), labels=labels.to(device)))
    return images, samples


def _segmentation(cfg: BenchConfig, rt: Runtime, options: dict) -> TaskModel:
    torch.manual_seed(cfg.seed)
    model = SegmentationDistiller(teacher=dict(backbone=cfg.teacher), student=dict(backbone=cfg.student),
                                  num_classes=NUM_CLASSES["segmentation"], **options)
    model = rt.place(model).train()
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    shape = (cfg.batch_size, 3, cfg.input_size, cfg.input_size)
    x = torch.randn(*shape, generator=generator).to(rt.device).contiguous(memory_format=rt.memory_format)
    labels = torch.randint(0, NUM_CLASSES["segmentation"], (cfg.batch_size, *shape[2:]), generator=generator)
    samples = [dict(gt_seg=label) for label in labels.to(rt.device)]
    task = TaskModel(model, lambda: sum(model.loss(x, samples).values()), _trainable(model))
    if model.ofd_enabled:
        task.distiller, task.student_input, task.teacher_input = model.distiller, x, x
    return task
