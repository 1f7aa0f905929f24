"""The OFD method itself: margin ReLU, partial L2, BN margins, data margins, the regressor.

Pure tensors in, tensors out; imports only torch. Features are (N, C, H, W) with channels on
dim 1, or channel-last tokens (N, L, C) / (N, H, W, C) where ``channel_dim=-1``.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "margin_relu",
    "ofd_loss",
    "ofd_loss_reference",
    "bn_margin",
    "DataMarginEstimator",
    "Regressor",
    "TokenRegressor",
]


def _per_channel(margin: Tensor, like: Tensor, channel_dim: int) -> Tensor:
    """View a (C,) margin so that it broadcasts over ``like`` along ``channel_dim``."""
    if like.dim() < 2:
        raise TypeError(f"OFD features must have a batch and a channel axis, got shape {tuple(like.shape)}")
    dim = channel_dim % like.dim()
    if margin.numel() != like.shape[dim]:
        raise ValueError(
            f"margin has {margin.numel()} channels but the feature has {like.shape[dim]} on dim {dim} "
            f"(shape {tuple(like.shape)}); compute the margin from the same teacher tap"
        )
    shape = [1] * like.dim()
    shape[dim] = -1
    return margin.to(dtype=like.dtype, device=like.device).view(shape)


def margin_relu(teacher: Tensor, margin: Tensor, channel_dim: int = 1) -> Tensor:
    """sigma_m(x) = max(x, m) with a per-channel (negative) margin m."""
    return torch.maximum(teacher, _per_channel(margin, teacher, channel_dim))


class _PartialL2(torch.autograd.Function):
    """Partial L2 after margin ReLU, with one feature-size tensor kept for backward.

    The naive form builds t, (s - t), (s - t)^2 and a float mask. Here an element is kept when
    max(t, s - t) > 0 (i.e. t > 0 or s > t), and the masking is the float-only kernel
    ``threshold_backward`` (boolean masks are several times slower on CPU): four element-wise
    passes and a dot product. The target t takes one temporary, or the teacher's own memory
    when the caller gives it up; the difference takes another, or the student's own memory when
    the caller gives that up (autograd still checks that no other node saved it). Backward is a
    single scaled copy of the kept difference, or, when the student's memory was given up, the
    difference scaled in place (that graph can then be backpropagated once only).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, student: Tensor, teacher: Tensor, margin: Tensor, overwrite_teacher: bool, overwrite_student: bool
    ) -> Tensor:
        target = torch.maximum(teacher, margin, out=teacher) if overwrite_teacher else torch.maximum(teacher, margin)
        diff = torch.sub(student, target, out=student) if overwrite_student else student - target
        torch.maximum(target, diff, out=target)
        torch.ops.aten.threshold_backward.grad_input(diff, target, 0, grad_input=diff)
        del target
        flat = diff.reshape(-1) if diff.is_contiguous() else diff.permute(_memory_order(diff)).reshape(-1)
        loss = torch.dot(flat, flat) if flat.dtype in (torch.float32, torch.float64) else flat.float().pow(2).sum()
        ctx.save_for_backward(diff)
        ctx.in_place = overwrite_student
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        scale = (2 * grad_output).to(diff.dtype)
        grad = diff.mul_(scale) if ctx.in_place else diff * scale
        return grad, None, None, None, None


def _memory_order(x: Tensor) -> List[int]:
    """Dimensions of ``x`` from the largest stride to the smallest (a view in memory order)."""
    return sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))


def ofd_loss(
    student: Tensor,
    teacher: Tensor,
    margin: Tensor,
    channel_dim: int = 1,
    *,
    overwrite_teacher: bool = False,
    overwrite_student: bool = False,
) -> Tensor:
    """Sum over all elements of the partial L2 between ``student`` and ``max(teacher, margin)``.

    The teacher is detached and read in the student's dtype and memory layout, and the margin in the
    student's dtype (a bfloat16 teacher's margin is not rounded to bfloat16). Equals
    ``ofd_loss_reference`` in value and gradient. With
    ``overwrite_teacher=True`` the teacher tensor's memory is reused for the target (its values
    are lost); for a caller that owns the teacher tensor and saves one feature-size temporary.
    ``overwrite_student=True`` likewise keeps the difference in the student tensor's memory, for
    a caller whose student tensor (e.g. a regressor's BatchNorm output) nothing else reads;
    backward then turns that memory into the gradient, so the loss can be backpropagated once.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} differ; "
            "regress the student to the teacher's channels and spatial size first"
        )
    m = _per_channel(margin, student, channel_dim)
    teacher = teacher.detach()
    if teacher.dtype != student.dtype or teacher.stride() != student.stride():
        # One pass into the student's dtype and memory layout: the loss's element-wise passes are slow
        # over mixed layouts (a channels-last teacher, a channels-first regressor).
        teacher = torch.empty_like(student, requires_grad=False).copy_(teacher)
    return _PartialL2.apply(student, teacher, m, overwrite_teacher, overwrite_student)


def ofd_loss_reference(student: Tensor, teacher: Tensor, margin: Tensor, channel_dim: int = 1) -> Tensor:
    """The vectorised form of OFD.md, as the official code writes it (three temporaries); the teacher and the
    margin are read in the student's dtype, as ``ofd_loss`` reads them."""
    t = margin_relu(teacher.detach().to(student.dtype), margin, channel_dim)
    mask = ((student > t) | (t > 0)).to(student.dtype)
    return ((student - t).pow(2) * mask).sum()


@torch.no_grad()
def bn_margin(bn: nn.Module) -> Tensor:
    """Per-channel OFD margin E[x | x < 0] of N(beta, gamma^2) from a BatchNorm's affine params.

    Works for BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d and torchvision's
    FrozenBatchNorm2d. Falls back to -3|gamma| where P(x < 0) <= 0.001, as the official code does.
    """
    weight = getattr(bn, "weight", None)
    bias = getattr(bn, "bias", None)
    if not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
        raise TypeError(
            f"{type(bn).__name__} has no affine weight and bias; the BN margin needs them. "
            "Use margin='data' for this tap."
        )
    s = weight.detach().double().abs().clamp_min(1e-12)
    m = bias.detach().double()
    below = torch.special.ndtr(-m / s)
    density = torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
    expected = m - s * density / below.clamp_min(1e-300)
    margin = torch.where(below > 0.001, expected, -3 * s)
    return margin.to(weight.dtype)


class DataMarginEstimator:
    """Per-channel mean of the negative teacher responses, accumulated over batches.

    For taps that no BatchNorm feeds (LayerNorm/GELU nets, no norm). Channels that never
    respond negatively get margin 0 (margin ReLU becomes a plain ReLU there).
    """

    def __init__(self, channel_dim: int = 1) -> None:
        self.channel_dim = channel_dim
        self.negative_sum: Optional[Tensor] = None
        self.negative_count: Optional[Tensor] = None

    @torch.no_grad()
    def update(self, feature: Tensor) -> None:
        dim = self.channel_dim % feature.dim()
        x = feature.detach().double().movedim(dim, -1).reshape(-1, feature.shape[dim])
        negative = x.clamp_max(0)
        total = negative.sum(0)
        count = (x < 0).sum(0).double()
        if self.negative_sum is None:
            self.negative_sum, self.negative_count = total, count
        else:
            self.negative_sum += total
            self.negative_count += count

    def compute(self) -> Tensor:
        if self.negative_sum is None:
            raise RuntimeError("DataMarginEstimator saw no batch; call update() with teacher features first")
        return (self.negative_sum / self.negative_count.clamp_min(1)).float()

    @classmethod
    def from_features(cls, features: Iterable[Tensor], channel_dim: int = 1) -> Tensor:
        estimator = cls(channel_dim)
        for feature in features:
            estimator.update(feature)
        return estimator.compute()


def _official_conv_init(conv: nn.Module, out_channels: int, kernel_size: int = 1) -> None:
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


class Regressor(nn.Sequential):
    """The student transform r(.): 1x1 conv (no bias) to the teacher's channels, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        bn = nn.BatchNorm2d(out_channels)
        _official_conv_init(conv, out_channels)
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(conv, bn)


class TokenRegressor(nn.Module):
    """Regressor for channel-last features (N, L, C) or (N, H, W, C): linear + BatchNorm on C."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)
        _official_conv_init(self.linear, out_channels)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        shape = y.shape
        return self.bn(y.reshape(-1, shape[-1])).reshape(shape)
