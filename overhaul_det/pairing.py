"""How the taps of a teacher and a student pair up, and the layout each pair's loss works in: pairing by
name, stride or depth; nhwc maps and square grids of ViT tokens turned into channel-first maps; student
maps resized to their teacher's."""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .taps import Tap, find_taps
from .taps.trace import sample_input

__all__ = ["TapSpec", "check_batch", "default_tap_weights", "loss_layout", "match_size", "pair_taps", "resize_to",
           "resolve_taps", "to_loss_layout", "token_prefix"]

# Pairing is part of building a distiller, and is logged as the distiller's.
logger = logging.getLogger("overhaul_det.distiller")

TapSpec = Union[None, Sequence[Tap], Sequence[str]]


def default_tap_weights(n: int) -> List[float]:
    """The official per-tap weights 2^-(n-1-i): ..., 1/4, 1/2, 1 for the deepest tap.

    Args:
        n: the number of tap pairs, shallowest first.
    """
    return [2.0 ** -(n - 1 - i) for i in range(n)]


def _describe(taps: Sequence[Tap]) -> str:
    return ", ".join(f"{t.name}(C={t.channels}, stride={t.stride})" for t in taps)


def pair_taps(
    student_taps: Sequence[Tap],
    teacher_taps: Sequence[Tap],
    pairs: Optional[Sequence[Tuple[str, str]]] = None,
) -> List[Tuple[Tap, Tap]]:
    """Match student taps to teacher taps: by explicit names, by equal stride, or, where the stride sets
    differ, the deepest min(n_student, n_teacher) of each by depth order.

    Args:
        student_taps: the student's taps, shallowest first.
        teacher_taps: the teacher's taps, shallowest first.
        pairs: (student node, teacher node) names that choose the pairs; None to pair as above.
    """
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
    else channel-first maps ('nchw'), to which nhwc maps and square grids of tokens convert.

    Args:
        student_tap: the pair's student tap.
        teacher_tap: the pair's teacher tap.
    """
    same = student_tap.layout == teacher_tap.layout
    if same and (student_tap.layout != "tokens" or student_tap.shape[1:2] == teacher_tap.shape[1:2]):
        return student_tap.layout
    return "nchw"


def token_prefix(tap: Tap, other: Tap, layout: str, model: nn.Module, input_size) -> int:
    """How many class / distillation / register tokens lead the tokens of a tap that becomes a map
    (L minus the sample input's patches at the tap's stride; 0 for any other tap).

    Args:
        tap: the tap whose tokens may become a map.
        other: the tap it pairs with (named in errors).
        layout: the pair's loss layout (``loss_layout``).
        model: the model ``tap`` belongs to (its sample input gives the patch grid).
        input_size: the (C, H, W) the taps were found at; a grid that is not square is refused.
    """
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
    tokens without their ``prefix`` leading tokens reshaped to an (N, C, H, W) square grid.

    Args:
        x: the captured tensor.
        tap: the tap it was captured at.
        layout: the pair's loss layout (``loss_layout``).
        prefix: the leading tokens to drop (``token_prefix``).
    """
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
    """An (N, C, H, W) student map ``s`` bilinearly resized to teacher map ``t``'s spatial size.

    A channels-first ``s`` is resized channels-last where ``t`` is channels-last on the CPU: the same
    values and gradients to the bit, from the faster kernel, and the loss then reads ``t`` without a
    transposing copy.

    Args:
        s: the student map after its regressor.
        t: the teacher map.
    """
    if (t.device.type == "cpu" and s.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous()):
        s = _ChannelsLastCopy.apply(s)
    return F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)


def resolve_taps(model: nn.Module, spec: TapSpec, input_size, min_stride: int,
                 position: str = "pre", tracer_kwargs: Optional[dict] = None) -> List[Tap]:
    """``model``'s taps: found by ``find_taps`` (None), as given (Taps), or found at the named nodes.

    Args:
        model: the teacher or the student.
        spec: None, a list of ``Tap`` or a list of node names.
        input_size, min_stride, position, tracer_kwargs: as ``find_taps`` takes them.
    """
    if spec is None:
        return find_taps(model, input_size=input_size, min_stride=min_stride, position=position,
                         tracer_kwargs=tracer_kwargs)
    if all(isinstance(t, Tap) for t in spec):
        return list(spec)
    return find_taps(model, input_size=input_size, nodes=list(spec), tracer_kwargs=tracer_kwargs)


def check_batch(x: Tensor, taps: Sequence[Tap], model: nn.Module, role: str) -> None:
    """Refuse a batch smaller than the deepest tap's stride: that tap would see a collapsed map.

    Args:
        x: the batch.
        taps: the model's paired taps.
        model: the model (named in the error).
        role: 'teacher' or 'student'.
    """
    deepest = max((t.stride for t in taps if not t.channel_last), default=1)
    if x.dim() == 4 and min(x.shape[-2:]) < deepest:
        raise ValueError(
            f"the {role} ({type(model).__name__}) got a batch of {x.shape[-2]}x{x.shape[-1]} px, smaller than the "
            f"stride of its deepest tap ({deepest}): resize the data to at least {deepest}x{deepest} px, and build the "
            "distiller at the data's size (input_size / ofd.input_size)")


def match_size(s: Tensor, t: Tensor, pair: Tuple[Tap, Tap], align: str = "interpolate") -> Tensor:
    """A regressed student map ``s`` at teacher map ``t``'s spatial size, both in the pair's loss layout.

    Args:
        s: the student tensor after its regressor.
        t: the teacher tensor.
        pair: the (student, teacher) taps, for the layout and the error message.
        align: 'interpolate' (bilinear resize) or 'raise'; tokens of different counts are always refused.
    """
    layout = loss_layout(*pair)
    same = s.shape[:-1] == t.shape[:-1] if layout != "nchw" else s.shape[2:] == t.shape[2:]
    if same:
        return s
    if align == "raise" or layout == "tokens":
        raise ValueError(
            f"student tap {pair[0].name} has spatial size {tuple(s.shape)} after its regressor but teacher tap "
            f"{pair[1].name} has {tuple(t.shape)}; feed both the same input size"
            + ("" if layout == "tokens" else " or use align='interpolate'")
        )
    if layout == "nhwc":
        resized = F.interpolate(s.permute(0, 3, 1, 2), size=t.shape[1:3], mode="bilinear", align_corners=False)
        return resized.permute(0, 2, 3, 1)
    return resize_to(s, t)
