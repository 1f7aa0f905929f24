"""The options of a FeatureDistiller as one typed, checked value: what ``model.ofd=dict(...)`` in a config
holds, with a misspelt key named together with the nearest one."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from .alpha_schedule import AUTO_ALPHA_RATIO, AUTO_ALPHA_SERIES
from .pairing import TapSpec
from .teacher_mode import PRECISIONS

__all__ = ["ALIGNS", "DISTANCES", "MARGIN_MODES", "OFDConfig"]

MARGIN_MODES = ("auto", "bn", "data", "none")
DISTANCES = ("partial_l2", "l2")
ALIGNS = ("interpolate", "raise")


@dataclasses.dataclass
class OFDConfig:
    """What a FeatureDistiller distils where, and how; checked when made.

    Args:
        teacher_taps: the teacher's taps: None (found by ``find_taps``), Taps, or node names.
        student_taps: the student's taps, as ``teacher_taps``.
        pairs: (student node, teacher node) names that choose the pairs; None pairs by stride or depth.
        weights: one weight per pair; None for the official 2^-(n-1-i).
        alpha: the OFD term's weight, or 'auto' (``alpha_ratio`` x the task loss at the first iteration).
        alpha_ratio: with 'auto', the OFD term's multiple of the task loss at the first iteration.
        alpha_series: with 'auto', the mantissas alpha is rounded to, e.g. (1, 3); None: unrounded.
        margin: 'auto' (BN margin where a BN feeds the tap, else from data), 'bn', 'data' or 'none'.
        align: 'interpolate' a student map to its teacher's size, or 'raise'.
        teacher_bn: 'train' (the teacher's BatchNorm on batch statistics) or 'eval'.
        input_size: the (C, H, W) sample the taps are found at.
        teacher_input_size: the teacher's, where it differs from ``input_size``.
        min_stride: the smallest stride ``find_taps`` keeps.
        position: 'pre' (before the activation closing a stage, as the paper) or 'post'.
        distance: 'partial_l2' (the paper's) or 'l2' (every element counts).
        alpha_warmup: training forwards over which the weight ramps from alpha/N to alpha (0: none).
        memory_saving: False computes the loss on the plain autograd graph (``ofd_loss_reference``).
        teacher_precision: 'auto', 'float32', 'bfloat16' or 'float16' (see ``teacher_mode``).
        teacher_channels_last: 'auto', True or False (see ``teacher_mode``).
        tracer_kwargs: passed to the FX tracer of both models (``leaf_modules``, ``autowrap_functions``, ...).
    """

    teacher_taps: TapSpec = None
    student_taps: TapSpec = None
    pairs: Optional[Sequence[Tuple[str, str]]] = None
    weights: Optional[Sequence[float]] = None
    alpha: Union[float, str] = 1.0
    alpha_ratio: float = AUTO_ALPHA_RATIO
    alpha_series: Optional[Sequence[float]] = AUTO_ALPHA_SERIES
    margin: str = "auto"
    align: str = "interpolate"
    teacher_bn: str = "train"
    input_size: Optional[Sequence[int]] = None
    teacher_input_size: Optional[Sequence[int]] = None
    min_stride: int = 4
    position: str = "pre"
    distance: str = "partial_l2"
    alpha_warmup: int = 0
    memory_saving: bool = True
    teacher_precision: str = "auto"
    teacher_channels_last: Union[str, bool] = "auto"
    tracer_kwargs: Optional[dict] = None

    def __post_init__(self) -> None:
        _choose("margin", self.margin, MARGIN_MODES)
        _choose("distance", self.distance, DISTANCES)
        _choose("align", self.align, ALIGNS)
        _choose("teacher_bn", self.teacher_bn, ("train", "eval"), " ('train': batch statistics)")
        _choose("teacher_precision", self.teacher_precision, PRECISIONS)
        if self.teacher_channels_last not in ("auto", True, False):
            raise ValueError(f"teacher_channels_last={self.teacher_channels_last!r}; choose 'auto', True or False")
        if not isinstance(self.alpha_warmup, int) or self.alpha_warmup < 0:
            raise ValueError(f"alpha_warmup={self.alpha_warmup!r}; give a number of training iterations (0 for none)")
        if self.alpha != "auto" and (isinstance(self.alpha, (str, bool)) or not self.alpha >= 0):
            raise ValueError(f"alpha={self.alpha!r}; give a number >= 0 or 'auto'")
        series = self.alpha_series
        if series is not None and (not series or not all(1 <= m < 10 for m in series)):
            raise ValueError(f"alpha_series={series!r}; give mantissas in [1, 10), e.g. (1, 3), or None")

    @classmethod
    def keys(cls) -> List[str]:
        """The option names, in declaration order."""
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], where: str = "ofd") -> "OFDConfig":
        """The config of ``options`` (as a config's ``model.ofd``), refusing a key it does not have.

        Args:
            options: option names and values; those left out keep their defaults.
            where: where the options come from, as errors name them (``model.ofd``).
        """
        names = cls.keys()
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {where}.{close[0]}? " if close else "; "
                raise TypeError(f"{where}.{key}: unknown key{hint}FeatureDistiller takes {', '.join(names)}")
        return cls(**options)

    def updated(self, **options: Any) -> "OFDConfig":
        """A copy with ``options`` changed, checked as ``from_dict`` checks them."""
        current = {name: getattr(self, name) for name in self.keys()}
        return self.from_dict({**current, **options})


def _choose(name: str, value: Any, choices: Sequence[Any], note: str = "") -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {choices}{note}")
