"""Regressor warm-up: train only the OFD regressors first, with the student frozen (the paper's
segmentation recipe: one epoch). Regressors get their own learning rate through the optim
wrapper's ``paramwise_cfg=dict(custom_keys={'regressors': dict(lr_mult=10)})``."""
from __future__ import annotations

from typing import List, Optional

from mmengine.hooks import Hook
from torch import nn

from ..distiller import FeatureDistiller
from ..registry import HOOKS
from .hooks import find_distiller

__all__ = ["RegressorWarmupHook"]


@HOOKS.register_module()
class RegressorWarmupHook(Hook):
    """For the first ``iters`` iterations (or ``epochs`` epochs) only the regressors learn.

    The student meanwhile has ``requires_grad=False`` (no gradient, so SGD applies neither step nor
    weight decay to it) and runs in eval mode (BatchNorm running statistics and dropout untouched).
    Under DDP, build the wrapper with ``find_unused_parameters=True``.
    """

    priority = "NORMAL"

    def __init__(self, iters: Optional[int] = None, epochs: Optional[int] = None) -> None:
        if (iters is None) == (epochs is None):
            raise ValueError(
                f"RegressorWarmupHook(iters={iters}, epochs={epochs}): give exactly one of iters=N or epochs=N")
        length = iters if iters is not None else epochs
        if length < 0:
            raise ValueError(f"RegressorWarmupHook: iters/epochs={length}; give a count >= 0")
        self.iters = iters
        self.epochs = epochs
        self._end = 0
        self._distiller: Optional[FeatureDistiller] = None
        self._frozen: List[nn.Parameter] = []

    def before_train(self, runner) -> None:
        self._end = self.iters if self.iters is not None else self.epochs * len(runner.train_dataloader)
        self._distiller = find_distiller(runner.model)
        if self._distiller is None and self._end > 0:
            runner.logger.warning("RegressorWarmupHook: the model has no FeatureDistiller (ofd.alpha=0?); no warm-up")
        max_iters = getattr(runner, "max_iters", None)
        if self._distiller is not None and max_iters is not None and self._end >= max_iters > 0:
            runner.logger.warning(f"RegressorWarmupHook: the warm-up ({self._end} iterations) lasts the whole "
                                  f"training ({max_iters} iterations), so the student will not train; "
                                  "give fewer iters/epochs")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._distiller is None:
            return
        if runner.iter < self._end:
            self._freeze(runner)
        elif self._frozen:
            self._thaw()
            runner.logger.info(f"regressor warm-up done at iteration {runner.iter}: the student trains")

    def after_train(self, runner) -> None:
        if self._frozen:
            self._thaw()
            runner.logger.warning(f"regressor warm-up cut short: training ended at iteration {runner.iter} of the "
                                  f"{self._end} warm-up iterations, so the student never trained (only the "
                                  "regressors did)")

    def _freeze(self, runner) -> None:
        student = self._distiller.student
        student.eval()
        if not self._frozen:
            self._frozen = [p for p in student.parameters() if p.requires_grad]
            for parameter in self._frozen:
                parameter.requires_grad_(False)
            runner.logger.info(f"regressor warm-up: student frozen until iteration {self._end}")

    def _thaw(self) -> None:
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        self._frozen = []
        self._distiller.student.train(self._distiller.training)
