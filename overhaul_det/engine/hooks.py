"""mmengine hooks: data-margin calibration before training; a non-finite training batch, or one of another size than
``model.ofd.input_size``, stopped at the student."""
from __future__ import annotations

import logging
from typing import Optional

from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor
from torch.nn import Module

from ..distiller import FeatureDistiller
from ..finite import refuse_non_finite_input
from ..registry import HOOKS

__all__ = ["DataMarginHook", "FiniteInputHook", "InputSizeHook", "find_distiller"]

logger = logging.getLogger(__name__)


def find_distiller(model) -> Optional[FeatureDistiller]:
    """The FeatureDistiller inside a (possibly DDP-wrapped) task model, or None."""
    model = model.module if is_model_wrapper(model) else model
    return next((m for m in model.modules() if isinstance(m, FeatureDistiller)), None)


@HOOKS.register_module()
class DataMarginHook(Hook):
    """Before training, estimate data margins (taps with no BN) over ``num_batches`` train batches, each as the
    task model feeds the teacher (``teacher_batch``: a detector's transformed, teacher-normalised images).

    The margins are buffers, so they are saved in checkpoints; on resume they are not redone.
    """

    priority = "VERY_HIGH"

    def __init__(self, num_batches: int = 8) -> None:
        self.num_batches = num_batches

    def before_train(self, runner) -> None:
        distiller = find_distiller(runner.model)
        if distiller is None or bool(distiller.margins_calibrated):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        preprocess = model.data_preprocessor
        teacher_batch = getattr(model, "teacher_batch", lambda inputs: inputs)

        def batches():
            for data in runner.train_dataloader:
                yield teacher_batch(preprocess(data, False)["inputs"])

        distiller.calibrate_margins(batches(), max_batches=self.num_batches)
        if get_world_size() > 1:
            for margin in distiller.margins:
                all_reduce(margin, op="mean")
        runner.logger.info(f"OFD data margins estimated from {self.num_batches} training batches per rank")


@HOOKS.register_module()
class FiniteInputHook(Hook):
    """Stop training at a training batch with NaN/Inf, before the student (its BatchNorm statistics) takes it,
    with advice about the data: the loss check further on would blame the loss weights. That check (the task
    model's, naming every term and the iteration) replaces the distiller's own."""

    priority = "LOW"

    def before_train(self, runner) -> None:
        distiller = find_distiller(runner.model)
        if distiller is not None:
            distiller.stop_non_finite_loss = False
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        student = getattr(model, "student", None)
        if isinstance(student, Module):
            student.register_forward_pre_hook(_refuse_non_finite_batch)


def _refuse_non_finite_batch(module: Module, args: tuple) -> None:
    if module.training and args and isinstance(args[0], Tensor):
        refuse_non_finite_input(args[0], f"the student ({type(module).__name__})")


# Task models whose images vary in size: there ``ofd.input_size`` only sizes the graph trace.
_SIZE_FREE_MODELS = ("DetectionDistiller",)


@HOOKS.register_module()
class InputSizeHook(Hook):
    """Refuse a first training batch whose height and width differ from ``model.ofd.input_size``: the taps, the
    margins of the data and alpha were set at that size, and the OFD loss grows with the map's area."""

    priority = "LOW"

    def before_train(self, runner) -> None:
        model_cfg = runner.cfg.get("model") or {}
        size = (model_cfg.get("ofd") or {}).get("input_size")
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        student = getattr(model, "student", None)
        if size is None or model_cfg.get("type") in _SIZE_FREE_MODELS or not isinstance(student, Module):
            return
        expected = tuple(size)[-2:]
        handle = None

        def check_first_batch(module: Module, args: tuple) -> None:
            handle.remove()
            if args and isinstance(args[0], Tensor) and args[0].dim() == 4 and tuple(args[0].shape[-2:]) != expected:
                height, width = args[0].shape[-2:]
                raise ValueError(
                    f"model.ofd.input_size={tuple(size)} but the first training batch is {height}x{width} px "
                    f"(train_dataloader's pipeline): set model.ofd.input_size=({args[0].shape[1]}, {height}, {width}) "
                    "or resize the data to it")

        handle = student.register_forward_pre_hook(check_first_batch)
