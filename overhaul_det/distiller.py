"""FeatureDistiller: teacher + student + matched taps + regressors + margins -> OFD loss.

Knows nothing of tasks: classification uses ``out, losses = distiller(x)``; detection and
segmentation adapters call ``capture_student``, ``teacher_features`` and ``distill_loss``.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eager_grad import eager_term
from .finite import refuse_non_finite_input, refuse_non_finite_loss
from .ofd import (DataMarginEstimator, Regressor, TokenRegressor, bn_margin, margin_relu, ofd_loss,
                  ofd_loss_reference)
from .taps import Tap, TapExtractor, attach_taps, capture_taps, find_taps
from .taps.trace import sample_input
from .teacher_mode import describe_teacher_mode, resolve_teacher_mode, teacher_autocast

__all__ = ["FeatureDistiller", "pair_taps", "default_tap_weights", "loss_layout", "to_loss_layout", "round_to_series"]

logger = logging.getLogger(__name__)

TapSpec = Union[None, Sequence[Tap], Sequence[str]]
# alpha='auto' sets the OFD term to this many times the task loss at the first iteration: at the
# paper's own alphas it starts 17-68x the cross-entropy (tools/auto_alpha_ratio.py); the low end.
AUTO_ALPHA_RATIO = 16.0
# ... then rounded to the nearest value of the 1-3-10 series (1e-3, 3e-3, 1e-2, ...; nearest in log):
# the first batch's noise moves the raw value by a few percent from seed to seed, and on the
# classification demo that alone moved the final top-1 by up to 4 points (docs/results_classification_notes.md).
AUTO_ALPHA_SERIES = (1.0, 3.0)
MARGIN_MODES = ("auto", "bn", "data", "none")
DISTANCES = ("partial_l2", "l2")


def default_tap_weights(n: int) -> List[float]:
    """The official per-tap weights 2^-(n-1-i): ..., 1/4, 1/2, 1 for the deepest tap."""
    return [2.0 ** -(n - 1 - i) for i in range(n)]


def _describe(taps: Sequence[Tap]) -> str:
    return ", ".join(f"{t.name}(C={t.channels}, stride={t.stride})" for t in taps)


def pair_taps(
    student_taps: Sequence[Tap],
    teacher_taps: Sequence[Tap],
    pairs: Optional[Sequence[Tuple[str, str]]] = None,
) -> List[Tuple[Tap, Tap]]:
    """Match student taps to teacher taps: by explicit (student, teacher) names, by equal stride,
    or, where the stride sets differ, the deepest min(n_student, n_teacher) of each by depth order."""
    if pairs is not None:
        s_by_name = {t.name: t for t in student_taps}
        t_by_name = {t.name: t for t in teacher_taps}
        bad = [s for s, _ in pairs if s not in s_by_name] + [t for _, t in pairs if t not in t_by_name]
        if bad:
            raise ValueError(
                f"pairs name unknown taps {bad}; student taps: {_describe(student_taps)}; "
                f"teacher taps: {_describe(teacher_taps)}"
            )
        return [(s_by_name[s], t_by_name[t]) for s, t in pairs]
    s_strides = [t.stride for t in student_taps]
    t_strides = [t.stride for t in teacher_taps]
    if s_strides == t_strides:
        return list(zip(student_taps, teacher_taps))
    if sorted(s_strides) == sorted(t_strides) and len(set(s_strides)) == len(s_strides):
        by_stride = {t.stride: t for t in teacher_taps}
        return [(s, by_stride[s.stride]) for s in student_taps]
    return _pair_by_depth(student_taps, teacher_taps)


def _pair_by_depth(student_taps: Sequence[Tap], teacher_taps: Sequence[Tap]) -> List[Tuple[Tap, Tap]]:
    """The deepest k = min(n_student, n_teacher) taps of each, in the order given (shallowest first,
    as ``find_taps`` returns them), deepest with deepest."""
    k = min(len(student_taps), len(teacher_taps))
    if k == 0:
        raise ValueError(
            f"no taps to pair: student taps are [{_describe(student_taps)}], teacher taps are "
            f"[{_describe(teacher_taps)}]; pass taps for both models or pairs=[(student_node, teacher_node), ...]"
        )
    matched = list(zip(student_taps[len(student_taps) - k:], teacher_taps[len(teacher_taps) - k:]))
    logger.info("student and teacher taps differ in strides (student %s, teacher %s): pairing the deepest %d by "
                "depth: %s; pass pairs=[(student_node, teacher_node), ...] to choose", [t.stride for t in student_taps],
                [t.stride for t in teacher_taps], k,
                ", ".join(f"{s.name}(stride {s.stride}) -> {t.name}(stride {t.stride})" for s, t in matched))
    return matched


def loss_layout(student_tap: Tap, teacher_tap: Tap) -> str:
    """The layout a pair's loss works in: the taps' own where they agree (tokens: also in count),
    else channel-first maps ('nchw'), to which nhwc maps and square grids of tokens convert."""
    same = student_tap.layout == teacher_tap.layout
    if same and (student_tap.layout != "tokens" or student_tap.shape[1:2] == teacher_tap.shape[1:2]):
        return student_tap.layout
    return "nchw"


def _token_prefix(tap: Tap, other: Tap, layout: str, model: nn.Module, input_size) -> int:
    """How many class / distillation / register tokens lead the tokens of a tap that becomes a map
    (L minus the sample input's patches at the tap's stride; 0 for any other tap). Refuses a grid
    that is not square."""
    if tap.layout != "tokens" or layout == "tokens":
        return 0
    if len(tap.shape) != 3:
        raise ValueError(f"tap {tap.name} is tokens with no recorded (N, L, C) shape; make it with find_taps so its "
                         f"tokens can become a map to pair with {other.name}")
    height, width = sample_input(model, input_size).shape[-2:]
    rows, cols = height // tap.stride, width // tap.stride
    prefix = tap.shape[1] - rows * cols
    if rows != cols or not 0 <= prefix <= 8:
        raise ValueError(
            f"tap {tap.name} {tap.shape} holds tokens that do not form a square grid ({rows}x{cols} patches at "
            f"stride {tap.stride}, {prefix} other tokens), so they cannot become a map to pair with {other.name} "
            f"({other.layout}); use a square input_size, or pairs=[(student_node, teacher_node), ...] with taps "
            "of one layout"
        )
    return prefix


def to_loss_layout(x: Tensor, tap: Tap, layout: str, prefix: int = 0) -> Tensor:
    """``x`` captured at ``tap``, as a view in the pair's loss ``layout``: an nhwc map permuted to nchw,
    tokens without their ``prefix`` leading tokens reshaped to an (N, C, H, W) square grid."""
    if tap.layout == layout:
        return x
    if tap.layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    patches = x.shape[1] - prefix
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(
            f"tap {tap.name} gave {x.shape[1]} tokens: {patches} after dropping {prefix} leading token(s), not a "
            "square grid; feed square inputs at the size the distiller was built for, or pair it with a tokens tap "
            "via pairs=[(student_node, teacher_node), ...]"
        )
    return x[:, prefix:].reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)


class _ChannelsLastCopy(torch.autograd.Function):
    """``x`` copied channels-last, its gradient handed back channels-first, as the layers before it
    received it without the copy (so their backward computes what it did)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def resize_to(s: Tensor, t: Tensor) -> Tensor:
    """An (N, C, H, W) student map ``s`` bilinearly resized to teacher map ``t``'s spatial size. A
    channels-first ``s`` is resized channels-last where ``t`` is channels-last on the CPU: the values
    and gradients are the same to the bit, but there the channels-last kernel is 10-20x faster for wide
    maps and the loss then reads ``t`` without a transposing copy."""
    if (t.device.type == "cpu" and s.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous()):
        s = _ChannelsLastCopy.apply(s)
    return F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)


def _resolve_taps(model: nn.Module, spec: TapSpec, input_size, min_stride: int,
                  position: str = "pre", tracer_kwargs: Optional[dict] = None) -> List[Tap]:
    if spec is None:
        return find_taps(model, input_size=input_size, min_stride=min_stride, position=position,
                         tracer_kwargs=tracer_kwargs)
    if all(isinstance(t, Tap) for t in spec):
        return list(spec)
    return find_taps(model, input_size=input_size, nodes=list(spec), tracer_kwargs=tracer_kwargs)


def round_to_series(value: float, series: Sequence[float] = AUTO_ALPHA_SERIES) -> float:
    """The value of ``series`` x 10^k nearest to ``value`` > 0 in log scale (1-3-10: 0.0108 -> 0.01)."""
    exponent = math.floor(math.log10(value))
    candidates = [m * 10.0 ** e for e in (exponent - 1, exponent, exponent + 1) for m in series]
    return min(candidates, key=lambda c: abs(math.log(c / value)))


def _check_batch(x: Tensor, taps: Sequence[Tap], model: nn.Module, role: str) -> None:
    """Refuse a batch smaller than the deepest tap's stride: that tap would see a collapsed map."""
    deepest = max((t.stride for t in taps if not t.channel_last), default=1)
    if x.dim() == 4 and min(x.shape[-2:]) < deepest:
        raise ValueError(
            f"the {role} ({type(model).__name__}) got a batch of {x.shape[-2]}x{x.shape[-1]} px, smaller than the "
            f"stride of its deepest tap ({deepest}): resize the data to at least {deepest}x{deepest} px, and build the "
            "distiller at the data's size (input_size / ofd.input_size)")


class FeatureDistiller(nn.Module):
    """OFD between a teacher and a student taken as they are (any FX-traceable backbone).

    The teacher is frozen, runs without autograd and only as far as its last tap, with
    BatchNorm on batch statistics (``teacher_bn='train'``) and its running statistics untouched.
    The student keeps its own forward; the tensors at its taps are captured on the way.
    ``loss_ofd = alpha * sum_i w_i * partial_L2(r_i(student_i), max(teacher_i, m_i)) / batch``.
    Taps pair by stride, or by depth where the stride sets differ (``pair_taps``), or as ``pairs``
    names them; a student map is resized to its teacher's (``align``). A pair whose layouts differ
    works on channel-first maps (``loss_layout``): nhwc maps are permuted, ViT tokens on a square
    grid lose their leading class/distillation tokens and become (N, C, H, W); its regressor is the
    map one (1x1 conv + BN). Pairs of one layout keep it.
    The paper's ablations are switches: ``teacher_bn='eval'``, ``position='post'`` (after the
    activation), ``distance='l2'`` (every element counts) and ``margin='none'`` (teacher as it is).

    ``alpha_warmup=N`` ramps the weight linearly from ``alpha/N`` to ``alpha`` over the first N
    training forwards (counted in a buffer, so a resumed run continues the ramp): at the start
    the OFD term of a random student is tens of times the task loss and can drive it to chance.
    ``alpha='auto'`` sets alpha at the first training iteration so that the OFD term is
    ``alpha_ratio`` times the task loss, rounded to ``alpha_series`` x 10^k (None: unrounded).
    ``tracer_kwargs`` reaches the FX tracer of both models (``leaf_modules``, ``autowrap_functions``,
    ``autowrap_modules``, as in torchvision's feature extraction) for code FX cannot trace through.
    ``teacher_precision`` ('float32', 'auto', 'bfloat16', 'float16') and ``teacher_channels_last``
    ('auto', True, False) set how the frozen teacher runs: 'auto' is bfloat16 (channels-last for conv
    nets) where the device runs it natively (CPUs with AVX512-BF16 or AMX-BF16, CUDA with bfloat16),
    float32 elsewhere; its tap tensors reach the loss in the student's dtype, margins stay float32.
    'auto' is the default: over 24 seeds the classification demo's OFD with a bfloat16 teacher ends
    +0.08 ± 1.52 points from the float32 teacher's, seed by seed (README, "Teacher precision"), and the
    loss on a fixed batch moves by 0.26%; 'float32' keeps the teacher as trained.
    ``memory_saving=False`` computes the loss on the plain autograd graph (``ofd_loss_reference``,
    no eager differentiation, no memory reuse): the same training, for ruling the optimisations out.
    """

    # ``forward`` stops a non-finite loss_ofd; a caller that checks every loss term itself turns this off.
    stop_non_finite_loss = True

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        teacher_taps: TapSpec = None,
        student_taps: TapSpec = None,
        pairs: Optional[Sequence[Tuple[str, str]]] = None,
        weights: Optional[Sequence[float]] = None,
        alpha: Union[float, str] = 1.0,
        alpha_ratio: float = AUTO_ALPHA_RATIO,
        alpha_series: Optional[Sequence[float]] = AUTO_ALPHA_SERIES,
        margin: str = "auto",
        align: str = "interpolate",
        teacher_bn: str = "train",
        input_size: Optional[Sequence[int]] = None,
        teacher_input_size: Optional[Sequence[int]] = None,
        min_stride: int = 4,
        position: str = "pre",
        distance: str = "partial_l2",
        alpha_warmup: int = 0,
        memory_saving: bool = True,
        teacher_precision: str = "auto",
        teacher_channels_last: Union[str, bool] = "auto",
        tracer_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__()
        if margin not in MARGIN_MODES:
            raise ValueError(f"margin={margin!r}; choose one of {MARGIN_MODES}")
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}; choose one of {DISTANCES}")
        if align not in ("interpolate", "raise"):
            raise ValueError(f"align={align!r}; choose 'interpolate' or 'raise'")
        if not isinstance(alpha_warmup, int) or alpha_warmup < 0:
            raise ValueError(f"alpha_warmup={alpha_warmup!r}; give a number of training iterations (0 for none)")
        if teacher_bn not in ("train", "eval"):
            raise ValueError(f"teacher_bn={teacher_bn!r}; choose 'train' (batch statistics) or 'eval'")
        if alpha != "auto" and (isinstance(alpha, (str, bool)) or not alpha >= 0):
            raise ValueError(f"alpha={alpha!r}; give a number >= 0 or 'auto'")
        resolve_teacher_mode(teacher_precision, teacher_channels_last, torch.device("cpu"), teacher)
        t_taps = _resolve_taps(teacher, teacher_taps, teacher_input_size or input_size, min_stride, position,
                               tracer_kwargs)
        s_taps = _resolve_taps(student, student_taps, input_size, min_stride, position, tracer_kwargs)
        self.pairs = pair_taps(s_taps, t_taps, pairs)
        self.layouts = [loss_layout(s, t) for s, t in self.pairs]
        self._prefixes = [
            (_token_prefix(s, t, layout, student, input_size),
             _token_prefix(t, s, layout, teacher, teacher_input_size or input_size))
            for (s, t), layout in zip(self.pairs, self.layouts)
        ]
        n = len(self.pairs)
        if weights is not None and len(weights) != n:
            raise ValueError(f"weights has {len(weights)} entries for {n} tap pairs")
        self.weights = list(weights) if weights is not None else default_tap_weights(n)
        self.alpha = alpha
        self.alpha_ratio = alpha_ratio
        if alpha_series is not None and (not alpha_series or not all(1 <= m < 10 for m in alpha_series)):
            raise ValueError(f"alpha_series={alpha_series!r}; give mantissas in [1, 10), e.g. (1, 3), or None")
        self.alpha_series = tuple(alpha_series) if alpha_series is not None else None
        if alpha == "auto":
            self.register_buffer("alpha_auto", torch.tensor(0.0, dtype=torch.float64))
        self.align = align
        self.margin_mode = margin
        self.distance = distance
        self.alpha_warmup = alpha_warmup
        self.memory_saving = memory_saving
        self.teacher_precision = teacher_precision
        self.teacher_channels_last = teacher_channels_last
        self._teacher_mode: Dict[torch.device, Tuple[torch.dtype, bool]] = {}
        self.register_buffer("warmup_step", torch.tensor(0, dtype=torch.long))

        teacher.requires_grad_(False)
        teacher.eval()
        self.teacher = teacher
        self.student = attach_taps(student, [s for s, _ in self.pairs], tracer_kwargs)
        self._teacher_extractor = TapExtractor(teacher, [t for _, t in self.pairs], batch_stats=teacher_bn == "train",
                                               tracer_kwargs=tracer_kwargs)
        self.regressors = nn.ModuleList(
            (Regressor if layout == "nchw" else TokenRegressor)(s.channels, t.channels)
            for (s, t), layout in zip(self.pairs, self.layouts)
        )
        self._data_margin_taps = self._init_margins(margin)

    # ----------------------------------------------------------------------------------------
    def _init_margins(self, mode: str) -> List[int]:
        needs_data = []
        for i, (_, t) in enumerate(self.pairs):
            if mode == "bn" and t.norm is None:
                raise ValueError(
                    f"teacher tap {t.name} has no BatchNorm feeding it, so margin='bn' cannot apply; "
                    "use margin='auto' or margin='data'"
                )
            if mode == "none":
                value = torch.full((t.channels,), float("-inf"))
            elif mode != "data" and t.norm is not None:
                value = bn_margin(self.teacher.get_submodule(t.norm)).float()
            else:
                value = torch.zeros(t.channels)
                needs_data.append(i)
            self.register_buffer(f"margin_{i}", value)
        self.register_buffer("margins_calibrated", torch.tensor(not needs_data))
        return needs_data

    @property
    def margins(self) -> List[Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(len(self.pairs))]

    @property
    def effective_alpha(self) -> float:
        """alpha, scaled by the warm-up ramp while it lasts; with alpha='auto' the ramp alone (the
        weight is applied by ``scale_to_task``, which knows the task loss)."""
        alpha = 1.0 if self.alpha == "auto" else self.alpha
        return alpha * self._ramp(int(self.warmup_step) + 1)

    def scale_to_task(self, loss_ofd: Tensor, task_loss: Tensor) -> Tensor:
        """``loss_ofd`` weighted by alpha='auto': at the first training iteration alpha is set so that
        the OFD term is ``alpha_ratio`` times the task loss (averaged over DDP ranks), then held fixed
        (a buffer: checkpointed and resumed). Other alphas are already applied: returned as is."""
        if self.alpha != "auto":
            return loss_ofd
        if float(self.alpha_auto) == 0.0:
            if not self.training:
                raise RuntimeError("alpha='auto' is set by the first training iteration; train before evaluating")
            self._set_auto_alpha(loss_ofd.detach() / self._ramp(int(self.warmup_step)), task_loss.detach())
        return loss_ofd * float(self.alpha_auto)

    def _ramp(self, forward: int) -> float:
        """The warm-up factor of the ``forward``-th training forward (1-based): ``effective_alpha`` asks
        for the next one, ``scale_to_task`` for the last one (the counter has advanced since)."""
        if self.alpha_warmup <= 0:
            return 1.0
        return min(1.0, forward / self.alpha_warmup)

    def _set_auto_alpha(self, ofd: Tensor, task: Tensor) -> None:
        both = torch.stack([ofd.double(), task.double()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(both)
        ofd_sum, task_sum = (float(v) for v in both)
        if not (ofd_sum > 0 and math.isfinite(ofd_sum) and math.isfinite(task_sum)):
            raise FloatingPointError(f"alpha='auto' cannot be set: OFD loss {ofd_sum}, task loss {task_sum} at the "
                                     "first iteration; give alpha a number")
        raw = self.alpha_ratio * task_sum / ofd_sum
        self.alpha_auto.fill_(round_to_series(raw, self.alpha_series) if self.alpha_series else raw)
        logger.info("alpha='auto': alpha = %.4g (%.4g makes the OFD term, %.4g before weighting, %g x the task loss, "
                    "%.4g, at the first iteration; rounded to the series %s x 10^k); held fixed from here",
                    float(self.alpha_auto), raw, ofd_sum, self.alpha_ratio, task_sum, self.alpha_series)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A checkpoint written before the warm-up counter existed loads as past its warm-up."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "warmup_step"
        if key in missing_keys:
            missing_keys.remove(key)
            self.warmup_step.fill_(self.alpha_warmup)

    @property
    def teacher_taps(self) -> List[Tap]:
        return [t for _, t in self.pairs]

    @property
    def student_taps(self) -> List[Tap]:
        return [s for s, _ in self.pairs]

    def train(self, mode: bool = True) -> "FeatureDistiller":
        super().train(mode)
        self.teacher.eval()
        return self

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_features(self, *args, **kwargs) -> List[Tensor]:
        """Teacher tensors at the paired taps (no autograd, stops at the last tap), run in the
        teacher's precision and memory format (``teacher_mode.py``), handed on in the student's dtype
        and each pair's loss layout (``to_loss_layout``). The student's dtype is read at each call: the
        student may be cast after construction, alone or with the distiller."""
        x = args[0]
        _check_batch(x, self.teacher_taps, self.teacher, "teacher")
        dtype, channels_last = self._mode_on(x.device)
        if channels_last:
            args = (x.contiguous(memory_format=torch.channels_last), *args[1:])
        with teacher_autocast(self.teacher_precision, dtype, x.device):
            features = self._teacher_extractor(*args, **kwargs)
        return self.teacher_tensors(features)

    def teacher_tensors(self, teacher_feats: Dict[str, Tensor]) -> List[Tensor]:
        """The teacher's tap tensors ({name: tensor}) in pair order, in the student's dtype and each
        pair's loss layout: what ``distill_loss`` compares with."""
        student_dtype = next(self.student.parameters()).dtype
        return [to_loss_layout(teacher_feats[t.name].to(student_dtype), t, layout, prefix)
                for (_, t), layout, (_, prefix) in zip(self.pairs, self.layouts, self._prefixes)]

    def _mode_on(self, device: torch.device) -> Tuple[torch.dtype, bool]:
        """The teacher's (dtype, channels_last) on ``device``, chosen and logged once per device."""
        if device not in self._teacher_mode:
            dtype, channels_last = resolve_teacher_mode(self.teacher_precision, self.teacher_channels_last, device,
                                                        self.teacher)
            if channels_last:
                self.teacher.to(memory_format=torch.channels_last)
            self._teacher_mode[device] = dtype, channels_last
            logger.info("teacher %s on %s runs in %s (teacher_precision=%r)", type(self.teacher).__name__, device,
                        describe_teacher_mode(dtype, channels_last), self.teacher_precision)
        return self._teacher_mode[device]

    @property
    def teacher_runs_in(self) -> Dict[str, str]:
        """How the teacher has run, per device: {'cpu': 'bfloat16, channels-last'}; empty before its first forward."""
        return {str(device): describe_teacher_mode(*mode) for device, mode in self._teacher_mode.items()}

    @contextlib.contextmanager
    def capture_student(self) -> Iterator[Dict[str, Tensor]]:
        """Within the context, student forwards fill the yielded {tap name: tensor} dict."""
        with capture_taps(self.student) as captured:
            yield captured

    @torch.no_grad()
    def calibrate_margins(self, batches: Iterable, max_batches: Optional[int] = None) -> None:
        """Estimate the data margins (mean negative teacher response per channel) from batches."""
        if not self._data_margin_taps:
            return
        estimators = {i: DataMarginEstimator(self._channel_dim(i)) for i in self._data_margin_taps}
        seen = 0
        for batch in batches:
            features = self.teacher_features(batch)
            for i, estimator in estimators.items():
                estimator.update(features[i])
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
        for i, estimator in estimators.items():
            getattr(self, f"margin_{i}").copy_(estimator.compute())
        self.margins_calibrated.fill_(True)
        logger.info("OFD data margins estimated from %d batch(es) for taps %s", seen,
                    [self.pairs[i][1].name for i in self._data_margin_taps])

    def _calibrate_from(self, teacher_feats: Sequence[Tensor]) -> None:
        for i in self._data_margin_taps:
            getattr(self, f"margin_{i}").copy_(DataMarginEstimator.from_features([teacher_feats[i]],
                                                                                  self._channel_dim(i)))
        self.margins_calibrated.fill_(True)
        logger.info("OFD data margins estimated from the first batch; call calibrate_margins() for more batches")

    def match_size(self, s: Tensor, t: Tensor, pair: Tuple[Tap, Tap]) -> Tensor:
        """A regressed student map ``s`` at teacher map ``t``'s spatial size (per ``align``), both in
        the pair's loss layout; tokens of different counts are refused."""
        layout = loss_layout(*pair)
        same = s.shape[:-1] == t.shape[:-1] if layout != "nchw" else s.shape[2:] == t.shape[2:]
        if same:
            return s
        if self.align == "raise" or layout == "tokens":
            raise ValueError(
                f"student tap {pair[0].name} has spatial size {tuple(s.shape)} after its regressor but teacher tap "
                f"{pair[1].name} has {tuple(t.shape)}; feed both the same input size"
                + ("" if layout == "tokens" else " or use align='interpolate'")
            )
        if layout == "nhwc":
            resized = F.interpolate(s.permute(0, 3, 1, 2), size=t.shape[1:3], mode="bilinear", align_corners=False)
            return resized.permute(0, 2, 3, 1)
        return resize_to(s, t)

    def distill_loss(
        self, student_feats: Union[Dict[str, Tensor], Sequence[Tensor]], teacher_feats: Sequence[Tensor]
    ) -> Tensor:
        """alpha * sum_i w_i * ofd_loss(r_i(s_i), t_i, m_i) / batch_size, on the student's tap tensors
        as captured and the teacher's from ``teacher_features``."""
        return self._consume_loss(self.student_features(student_feats), list(teacher_feats))

    def student_features(self, student_feats: Union[Dict[str, Tensor], Sequence[Tensor]]) -> List[Tensor]:
        """The student's captured tap tensors ({name: tensor} or a list in pair order) in pair order,
        each in its pair's loss layout (``to_loss_layout``): what the regressors take."""
        if isinstance(student_feats, dict):
            missing = [s.name for s, _ in self.pairs if s.name not in student_feats]
            if missing:
                raise RuntimeError(f"student taps {missing} were not captured; run the student inside capture_student()")
            student_feats = [student_feats[s.name] for s, _ in self.pairs]
        return [to_loss_layout(x, s, layout, prefix)
                for x, (s, _), layout, (prefix, _) in zip(student_feats, self.pairs, self.layouts, self._prefixes)]

    def _channel_dim(self, i: int) -> int:
        return 1 if self.layouts[i] == "nchw" else -1

    def _consume_loss(
        self, student_feats: List[Optional[Tensor]], teacher_feats: List[Optional[Tensor]], own_teacher: bool = False
    ) -> Tensor:
        """``distill_loss`` on lists it owns: a tap's entries are taken out as its term is computed,
        so tensors no other reference holds are freed tap by tap, not at the end. With
        ``own_teacher`` (tensors nobody else sees) the loss also reuses the memory of those that
        are neither views nor shared with another tap."""
        if not bool(self.margins_calibrated):
            self._calibrate_from(teacher_feats)
        batch_size = teacher_feats[0].shape[0]
        storages = [t.untyped_storage().data_ptr() for t in teacher_feats]
        total = None
        for i in range(min(len(self.pairs), len(student_feats), len(teacher_feats))):
            overwrite = own_teacher and teacher_feats[i]._base is None and storages.count(storages[i]) == 1
            term = self._term(i, student_feats, teacher_feats, overwrite)
            total = term if total is None else total + term
        alpha = self.effective_alpha
        if self.training and torch.is_grad_enabled():
            self.warmup_step += 1
        return total * (alpha / batch_size)

    def _term(self, i: int, student_feats: List[Optional[Tensor]], teacher_feats: List[Optional[Tensor]],
              overwrite_teacher: bool = False) -> Tensor:
        """w_i * ofd_loss(r_i(s_i), t_i, m_i). With ``memory_saving`` it is differentiated at once
        (``eager_term``): what waits for backward is the gradient at the student's tap, not the
        regressor's activations; else it is ``ofd_loss_reference`` (as OFD.md writes it) on the step's
        autograd graph. Tap i's tensors are taken out of the lists, and the teacher's is let go once the
        loss has read it, so a tensor nothing else holds is freed before the regressor's gradient is formed."""
        pair = self.pairs[i]
        regressor = self.regressors[i]
        channel_dim = self._channel_dim(i)
        s, teacher = student_feats[i], [teacher_feats[i]]
        student_feats[i] = teacher_feats[i] = None

        def term(feature: Tensor) -> Tensor:
            t = teacher.pop()
            r = self.match_size(regressor(feature), t, pair)
            if self.distance == "l2":
                return (r - margin_relu(t.detach(), self.margins[i], channel_dim)).pow(2).sum()
            if not self.memory_saving:
                return ofd_loss_reference(r, t, self.margins[i], channel_dim)
            # The regressor's output, read by nothing else, holds the kept difference.
            owned = r is not feature and r._base is None and r.dtype == t.dtype
            return ofd_loss(r, t, self.margins[i], channel_dim, overwrite_teacher=overwrite_teacher,
                            overwrite_student=owned)

        if not self.memory_saving:
            return self.weights[i] * term(s)
        return self.weights[i] * eager_term(term, s, regressor)

    def forward(self, x: Tensor) -> Tuple[object, Dict[str, Tensor]]:
        """Student output and {'loss_ofd': loss} for a batch both models see as it is; a non-finite batch or loss
        raises FloatingPointError before it reaches the weights or the BatchNorm statistics."""
        _check_batch(x, self.student_taps, self.student, "student")
        refuse_non_finite_input(x, "FeatureDistiller")
        with self.capture_student() as captured:
            out = self.student(x)
            student_feats = self.student_features(captured)
        loss = self._consume_loss(student_feats, self.teacher_features(x), own_teacher=True)
        if self.stop_non_finite_loss:
            refuse_non_finite_loss("loss_ofd", loss, "lower alpha or the learning rate")
        return out, {"loss_ofd": loss}
