"""What every task adapter shares: non-finite loss detection naming the term and iteration."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch import nn

__all__ = ["DistillationModel", "build_from_spec"]


def build_from_spec(spec, num_classes: int, builder, key: str, what: str) -> nn.Module:
    """A module as it is, or ``builder(**spec)`` with ``num_classes`` defaulted; ``key`` must be set."""
    if isinstance(spec, nn.Module):
        return spec
    spec = dict(spec)
    if key not in spec:
        raise ValueError(f"model spec {spec} needs a '{key}' ({what})")
    spec.setdefault("num_classes", num_classes)
    return builder(**spec)


class DistillationModel(BaseModel):
    """mmengine BaseModel holding a student (in ``distiller`` with OFD on, else ``student_model``)
    whose loss parsing stops on the first NaN/Inf loss term.

    The error names the term and the iteration, before the optimizer can step, so the last
    checkpoint written stays the last good one.
    """

    ofd_enabled: bool = False

    def init_weights(self) -> None:
        """Keep every weight as built. The zoo builders initialise their models and checkpoints load
        at build time; mmengine's default, which the Runner calls at start, would call the
        ``init_weights`` of timm models (ResNet, ViT, ...) again and wipe a loaded teacher or a
        pretrained student."""

    @property
    def student(self) -> nn.Module:
        return self.distiller.student if self.ofd_enabled else self.student_model

    @property
    def student_prefix(self) -> str:
        """Prefix of the student's keys in this model's state_dict."""
        return "distiller.student." if self.ofd_enabled else "student_model."

    def parse_losses(self, losses: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        loss, log_vars = super().parse_losses(losses)
        bad = [name for name, value in log_vars.items()
               if name != "loss" and not math.isfinite(float(value.detach()))]
        if bad:
            iteration = MessageHub.get_current_instance().get_info("iter", default=-1)
            values = ", ".join(f"{name}={float(log_vars[name])}" for name in bad)
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration + 1}: {values}. Training stopped before the optimizer "
                "step; start again from the last checkpoint's weights (load_from=CHECKPOINT, not --resume, which "
                "restores the old learning rate) with a lower learning rate or loss weight (e.g. model.ofd.alpha)."
            )
        return loss, log_vars
