"""The weight of the OFD term over training: a fixed alpha, or 'auto' (set against the task loss at the
first training iteration), scaled by an optional linear warm-up over the first training forwards."""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["AUTO_ALPHA_RATIO", "AUTO_ALPHA_SERIES", "AlphaSchedule", "round_to_series"]

logger = logging.getLogger("overhaul_det.distiller")

# alpha='auto' sets the OFD term to this many times the task loss at the first iteration (the low end
# of where the paper's own alphas start it; tools/auto_alpha_ratio.py).
AUTO_ALPHA_RATIO = 16.0
# ... then rounded to the nearest value of the 1-3-10 series (nearest in log), so that the first
# batch's noise does not move alpha from seed to seed.
AUTO_ALPHA_SERIES = (1.0, 3.0)


def round_to_series(value: float, series: Sequence[float] = AUTO_ALPHA_SERIES) -> float:
    """The value of ``series`` x 10^k nearest to ``value`` in log scale (1-3-10: 0.0108 -> 0.01).

    Args:
        value: a positive number.
        series: the mantissas, each in [1, 10).
    """
    exponent = math.floor(math.log10(value))
    candidates = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in series]
    return min(candidates, key=lambda c: abs(math.log(c / value)))


class AlphaSchedule:
    """alpha for each training forward: ``alpha`` (or 1 with 'auto') times the warm-up ramp, and the
    'auto' value chosen from the first iteration's losses, averaged over DDP ranks.

    The state (the chosen 'auto' alpha, the forward counter) lives in the distiller's buffers, so it is
    checkpointed and resumed with it; this class holds the rule.

    Args:
        alpha: the weight, or 'auto'.
        ratio: with 'auto', the OFD term's multiple of the task loss at the first iteration.
        series: with 'auto', the mantissas alpha is rounded to (None: unrounded).
        warmup: the number of training forwards over which the weight ramps from alpha/warmup to alpha.
    """

    def __init__(self, alpha: Union[float, str], ratio: float, series: Optional[Sequence[float]],
                 warmup: int) -> None:
        self.alpha = alpha
        self.ratio = ratio
        self.series = tuple(series) if series is not None else None
        self.warmup = warmup

    def ramp(self, forward: int) -> float:
        """The warm-up factor of the ``forward``-th training forward (1-based)."""
        if self.warmup <= 0:
            return 1.0
        return min(1.0, forward / self.warmup)

    def weight(self, forward: int) -> float:
        """alpha times the ramp of the ``forward``-th training forward; with 'auto', the ramp alone (the
        auto value is applied against the task loss)."""
        alpha = 1.0 if self.alpha == "auto" else self.alpha
        return alpha * self.ramp(forward)

    def auto_alpha(self, ofd: Tensor, task: Tensor) -> float:
        """The 'auto' alpha from the first iteration's unweighted OFD term and task loss (summed over DDP
        ranks): ``ratio`` x task / ofd, rounded to ``series`` x 10^k.

        Args:
            ofd: the OFD term before alpha, on this rank.
            task: the task loss, on this rank.
        """
        both = torch.stack([ofd.double(), task.double()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(both)
        ofd_sum, task_sum = (float(v) for v in both)
        if not (ofd_sum > 0 and math.isfinite(ofd_sum) and math.isfinite(task_sum)):
            raise FloatingPointError(f"alpha='auto' cannot be set: OFD loss {ofd_sum}, task loss {task_sum} at the "
                                     "first iteration; give alpha a number")
        raw = self.ratio * task_sum / ofd_sum
        alpha = round_to_series(raw, self.series) if self.series else raw
        logger.info("alpha='auto': alpha = %.4g (%.4g makes the OFD term, %.4g before weighting, %g x the task loss, "
                    "%.4g, at the first iteration; rounded to the series %s x 10^k); held fixed from here",
                    alpha, raw, ofd_sum, self.ratio, task_sum, self.series)
        return alpha

    def restore_missing_counter(self, counter: Tensor, key: str, missing_keys: List[str]) -> None:
        """A checkpoint written before the warm-up counter existed loads as past its warm-up: ``counter``
        is set to ``warmup`` and ``key`` no longer counts as missing."""
        if key in missing_keys:
            missing_keys.remove(key)
            counter.fill_(self.warmup)
