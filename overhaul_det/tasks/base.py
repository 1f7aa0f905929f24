"""What every task adapter shares: model specs built with errors that name the config key, a warning
for a teacher without weights, and non-finite loss detection naming the term and iteration."""
from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
from typing import Callable, Dict, List, Tuple, Union

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch import nn

__all__ = ["DistillationModel", "build_from_spec", "warn_if_random_teacher"]

logger = logging.getLogger(__name__)

WEIGHT_KEYS = ("checkpoint", "backbone_checkpoint", "pretrained", "pretrained_backbone", "pretrained_cfg_overlay")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def _parameters(builder: Callable) -> List[str]:
    """The names ``builder`` itself takes (not those it passes on through ``**kwargs``)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [name for name, p in inspect.signature(builder).parameters.items() if p.kind not in kinds]


def _unknown_key(where: str, key: str, builder: Callable, error: TypeError) -> TypeError:
    """A TypeError naming ``where.key`` and the nearest key ``builder`` takes."""
    names = _parameters(builder)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {where}.{close[0]}?" if close else ""
    return TypeError(f"{where}.{key}: unknown key ({error}){hint} {builder.__name__} takes {', '.join(names)}; "
                     "other keys go to the model's own constructor")


def build_from_spec(spec: Union[dict, nn.Module], builder: Callable[..., nn.Module], where: str, required: str,
                    what: str, **defaults) -> nn.Module:
    """A module as it is, or ``builder(**spec)`` with ``defaults`` filled in; ``spec[required]`` must be set.

    ``where`` (e.g. ``model.teacher``) names the spec in errors: a misspelt key is reported as
    ``model.teacher.checkpiont`` with the nearest of ``builder``'s parameters.
    """
    if isinstance(spec, nn.Module):
        return spec
    given = dict(spec)
    if required not in given:
        raise ValueError(f"{where} {given} needs a '{required}' ({what})")
    try:
        return builder(**{**defaults, **given})
    except TypeError as error:
        match = _UNEXPECTED.search(str(error))
        if match is None or match.group(1) not in given:
            raise
        raise _unknown_key(where, match.group(1), builder, error) from error


def warn_if_random_teacher(spec: Union[str, dict, nn.Module, None], builder: Callable, required: str) -> None:
    """Warn when a teacher spec asks for no weights (none of ``WEIGHT_KEYS`` set): the teacher is then
    a randomly initialised network. A module (or None) is taken as it is."""
    if spec is None or isinstance(spec, nn.Module):
        return
    spec = {required: spec} if isinstance(spec, str) else spec
    if any(spec.get(key) for key in WEIGHT_KEYS):
        return
    options = [key for key in WEIGHT_KEYS if key in _parameters(builder)]
    logger.warning("model.teacher (%s=%r) has no weights (none of %s is set): it is RANDOMLY INITIALISED "
                   "and the student will learn from noise. Give its trained weights, e.g. model.teacher.%s=PATH",
                   required, spec.get(required), ", ".join(options), options[0])


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
    def ofd_active(self) -> bool:
        """Whether ``mode='loss'`` adds ``loss_ofd``: OFD on and the model in train mode. In eval mode the
        student's BatchNorm runs on running statistics and the teacher's on batch statistics, so the term
        compares unlike features (thousands where training gives units); mmengine's val loops call
        ``mode='predict'``, which runs the student alone."""
        return self.ofd_enabled and self.training

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
