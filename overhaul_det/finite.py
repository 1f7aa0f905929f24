"""Non-finite batches and losses stopped before they reach a model's weights or BatchNorm statistics.

A NaN or Inf in the input batch is a data or normalisation problem, not one of the loss weights, so the two get
different advice.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["refuse_non_finite_input", "refuse_non_finite_loss"]


def refuse_non_finite_input(x: Tensor, where: str) -> None:
    """Raise FloatingPointError when the batch ``x`` holds NaN or Inf, before any module sees it.

    Args:
        x: the input batch.
        where: what was about to take it, named in the error.
    """
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        count = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(
            f"{where}: the input batch holds {count} NaN/Inf value(s) of {x.numel()}; stopped before the model saw "
            "it. The data is the cause, not the loss weights: check the images and the normalisation (a std of 0 "
            "divides by zero)")


def refuse_non_finite_loss(name: str, loss: Tensor, advice: str) -> None:
    """Raise FloatingPointError naming ``name`` when the scalar ``loss`` is NaN or Inf, before a backward pass.

    Args:
        name: the loss term, named in the error.
        loss: its value.
        advice: what to change, appended to the error.
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(
            f"non-finite {name}={float(loss.detach())}; stopped before the optimizer step: {advice}")
