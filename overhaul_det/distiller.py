"""FeatureDistiller: teacher + student + paired taps + regressors + margins -> OFD loss.

Knows nothing of tasks: classification uses ``out, losses = distiller(x)``; detection and
segmentation adapters call ``capture_student``, ``teacher_features`` and ``distill_loss``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .alpha_schedule import AlphaSchedule
from .eager_grad import eager_term
from .ofd import DataMarginEstimator, Regressor, TokenRegressor, bn_margin, margin_relu, ofd_loss, ofd_loss_reference
from .ofd_config import OFDConfig
from .pairing import (check_batch, default_tap_weights, loss_layout, match_size, pair_taps, resolve_taps, to_loss_layout,
                      token_prefix)
from .taps import Tap, TapExtractor, attach_taps, capture_taps
from .distiller_checkpoint import keep_teacher_out_of_state_dict
from .finite import refuse_non_finite_input, refuse_non_finite_loss
from .teacher_mode import describe_teacher_mode, resolve_teacher_mode, teacher_autocast

__all__ = ["FeatureDistiller", "OFDConfig", "pair_taps", "default_tap_weights"]

logger = logging.getLogger(__name__)


class FeatureDistiller(nn.Module):
    """OFD between a teacher and a student taken as they are (any FX-traceable backbone):
    ``loss_ofd = alpha * sum_i w_i * partial_L2(r_i(student_i), max(teacher_i, m_i)) / batch``.

    The teacher is frozen, runs without autograd and only as far as its last tap, with BatchNorm on
    batch statistics (``teacher_bn='train'``) and its running statistics untouched; the student keeps
    its own forward, its tap tensors captured on the way. Taps pair as ``pairing.pair_taps`` pairs
    them; a pair whose layouts differ works on channel-first maps with the 1x1 conv + BN regressor.
    The paper's ablations are options: ``teacher_bn='eval'``, ``position='post'``, ``distance='l2'``
    and ``margin='none'``.
    Its state_dict holds the teacher as a SHA-256 only (``distiller_checkpoint``): the teacher is rebuilt
    from its own file, and a state without it loads the live teacher.

    Args:
        teacher: the trained teacher; frozen here (requires_grad off, eval mode).
        student: the student; its forward is rewritten to capture its taps, its state_dict keys kept.
        config: the options (``OFDConfig``); None for the defaults.
        **options: ``OFDConfig`` options, over ``config`` (e.g. ``alpha=1e-2, input_size=(3, 32, 32)``).
    """

    # ``forward`` stops a non-finite loss_ofd; a caller that checks every loss term itself turns this off.
    stop_non_finite_loss = True

    def __init__(self, teacher: nn.Module, student: nn.Module, config: Optional[OFDConfig] = None,
                 **options: Any) -> None:
        super().__init__()
        config = OFDConfig.from_dict(options) if config is None else config.updated(**options)
        self.config = config
        resolve_teacher_mode(config.teacher_precision, config.teacher_channels_last, torch.device("cpu"), teacher)
        teacher_size = config.teacher_input_size or config.input_size
        t_taps = resolve_taps(teacher, config.teacher_taps, teacher_size, config.min_stride, config.position,
                              config.tracer_kwargs)
        s_taps = resolve_taps(student, config.student_taps, config.input_size, config.min_stride, config.position,
                              config.tracer_kwargs)
        self.pairs = pair_taps(s_taps, t_taps, config.pairs)
        self.layouts = [loss_layout(s, t) for s, t in self.pairs]
        self._prefixes = [
            (token_prefix(s, t, layout, student, config.input_size),
             token_prefix(t, s, layout, teacher, teacher_size))
            for (s, t), layout in zip(self.pairs, self.layouts)
        ]
        n = len(self.pairs)
        if config.weights is not None and len(config.weights) != n:
            raise ValueError(f"weights has {len(config.weights)} entries for {n} tap pairs")
        self.weights = list(config.weights) if config.weights is not None else default_tap_weights(n)
        self.schedule = AlphaSchedule(config.alpha, config.alpha_ratio, config.alpha_series, config.alpha_warmup)
        if config.alpha == "auto":
            self.register_buffer("alpha_auto", torch.tensor(0.0, dtype=torch.float64))
        self._teacher_mode: Dict[torch.device, Tuple[torch.dtype, bool]] = {}
        self.register_buffer("warmup_step", torch.tensor(0, dtype=torch.long))

        teacher.requires_grad_(False)
        teacher.eval()
        self.teacher = teacher
        self.student = attach_taps(student, [s for s, _ in self.pairs], config.tracer_kwargs)
        self._teacher_extractor = TapExtractor(teacher, [t for _, t in self.pairs],
                                               batch_stats=config.teacher_bn == "train",
                                               tracer_kwargs=config.tracer_kwargs)
        self.regressors = nn.ModuleList(
            (Regressor if layout == "nchw" else TokenRegressor)(s.channels, t.channels)
            for (s, t), layout in zip(self.pairs, self.layouts)
        )
        self._data_margin_taps = self._init_margins(config.margin)
        keep_teacher_out_of_state_dict(self, "teacher")

    @property
    def alpha(self) -> Union[float, str]:
        """The alpha in use: the configured number, or for 'auto' the value the first training iteration chose
        ('auto' until then)."""
        if self.config.alpha == "auto" and float(self.alpha_auto) > 0:
            return float(self.alpha_auto)
        return self.config.alpha

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
        return self.schedule.weight(int(self.warmup_step) + 1)

    def scale_to_task(self, loss_ofd: Tensor, task_loss: Tensor) -> Tensor:
        """``loss_ofd`` weighted by alpha='auto', set at the first training iteration from the task loss
        and then held fixed (a buffer: checkpointed and resumed); other alphas are already applied.

        Args:
            loss_ofd: the OFD term of the iteration (warm-up ramp applied).
            task_loss: the task's own loss of the iteration.
        """
        if self.config.alpha != "auto":
            return loss_ofd
        if float(self.alpha_auto) == 0.0:
            if not self.training:
                raise RuntimeError("alpha='auto' is set by the first training iteration; train before evaluating")
            unweighted = loss_ofd.detach() / self.schedule.ramp(int(self.warmup_step))
            self.alpha_auto.fill_(self.schedule.auto_alpha(unweighted, task_loss.detach()))
        return loss_ofd * float(self.alpha_auto)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Loads as nn.Module does; a checkpoint written before the warm-up counter existed loads as past
        its warm-up."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.schedule.restore_missing_counter(self.warmup_step, prefix + "warmup_step", missing_keys)

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
        teacher's precision and memory format (``teacher_mode.py``), in each pair's loss layout.

        They stay in the teacher's dtype: the loss reads them into the student's dtype and memory
        layout in one pass (``ofd_loss``).

        Args:
            *args, **kwargs: the teacher's inputs; the first is the image batch.
        """
        x = args[0]
        check_batch(x, self.teacher_taps, self.teacher, "teacher")
        dtype, channels_last = self._mode_on(x.device)
        if channels_last:
            args = (x.contiguous(memory_format=torch.channels_last), *args[1:])
        with teacher_autocast(self.config.teacher_precision, dtype, x.device):
            features = self._teacher_extractor(*args, **kwargs)
        return self.teacher_tensors(features)

    def teacher_tensors(self, teacher_feats: Dict[str, Tensor]) -> List[Tensor]:
        """The teacher's tap tensors ({name: tensor}) in pair order, each in its pair's loss layout: what
        ``distill_loss`` compares with."""
        return [to_loss_layout(teacher_feats[t.name], t, layout, prefix)
                for (_, t), layout, (_, prefix) in zip(self.pairs, self.layouts, self._prefixes)]

    def _mode_on(self, device: torch.device) -> Tuple[torch.dtype, bool]:
        """The teacher's (dtype, channels_last) on ``device``, chosen and logged once per device."""
        if device not in self._teacher_mode:
            dtype, channels_last = resolve_teacher_mode(self.config.teacher_precision,
                                                        self.config.teacher_channels_last, device, self.teacher)
            if channels_last:
                self.teacher.to(memory_format=torch.channels_last)
            self._teacher_mode[device] = dtype, channels_last
            logger.info("teacher %s on %s runs in %s (teacher_precision=%r)", type(self.teacher).__name__, device,
                        describe_teacher_mode(dtype, channels_last), self.config.teacher_precision)
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
        """A regressed student map ``s`` at teacher map ``t``'s spatial size, per the configured ``align``
        (``pairing.match_size``)."""
        return match_size(s, t, pair, self.config.align)

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

    def _student_dtype(self) -> torch.dtype:
        """The student's dtype, read at each call: the student may be cast after construction."""
        return next(self.student.parameters()).dtype

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
            r = match_size(regressor(feature), t, pair, self.config.align)
            if self.config.distance == "l2":
                target = margin_relu(t.detach().to(self._student_dtype()), self.margins[i], channel_dim)
                return (r - target).pow(2).sum()
            if not self.config.memory_saving:
                return ofd_loss_reference(r, t, self.margins[i], channel_dim)
            # The regressor's output, read by nothing else, holds the kept difference.
            owned = r is not feature and r._base is None and r.dtype == self._student_dtype()
            return ofd_loss(r, t, self.margins[i], channel_dim, overwrite_teacher=overwrite_teacher,
                            overwrite_student=owned)

        if not self.config.memory_saving:
            return self.weights[i] * term(s)
        return self.weights[i] * eager_term(term, s, regressor)

    def forward(self, x: Tensor) -> Tuple[object, Dict[str, Tensor]]:
        """Student output and {'loss_ofd': loss} for a batch both models see as it is; a non-finite batch or loss
        raises FloatingPointError before it reaches the weights or the BatchNorm statistics."""
        check_batch(x, self.student_taps, self.student, "student")
        refuse_non_finite_input(x, "FeatureDistiller")
        with self.capture_student() as captured:
            out = self.student(x)
            student_feats = self.student_features(captured)
        loss = self._consume_loss(student_feats, self.teacher_features(x), own_teacher=True)
        if self.stop_non_finite_loss:
            refuse_non_finite_loss("loss_ofd", loss, "lower alpha or the learning rate")
        return out, {"loss_ofd": loss}
