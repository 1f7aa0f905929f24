"""A scalar loss branch differentiated as soon as it is computed, so its graph never waits for backward.

OFD's distillation term is a side branch off the student: tap -> regressor -> partial L2 ->
scalar. Left in the step's graph, every regressor keeps its conv and BN outputs (teacher-channel
sized) alive through the whole backward. Differentiated at once, the branch leaves only its
gradients: one student-size tensor per tap and the regressor's parameter gradients. Backward
scales them by the incoming gradient, which is exact because the term is a scalar.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["eager_term"]


class _EagerTerm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, term_fn: Callable[[Tensor], Tensor], feature: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        with torch.enable_grad():
            leaf = feature.detach().requires_grad_(feature.requires_grad)
            targets = [leaf, *params]
            chosen = [i for i, x in enumerate(targets) if x.requires_grad]
            term = term_fn(leaf)
            grads = torch.autograd.grad(term, [targets[i] for i in chosen], allow_unused=True)
        ctx.slots = len(targets)
        ctx.with_grad = [i for i, g in zip(chosen, grads) if g is not None]
        ctx.save_for_backward(*(g for g in grads if g is not None))
        return term.detach()

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        scaled: List[Optional[Tensor]] = [None] * ctx.slots
        for i, grad in zip(ctx.with_grad, ctx.saved_tensors):
            scaled[i] = _scale(grad, grad_output)
        return (None, *scaled)


def _scale(grad: Tensor, grad_output: Tensor) -> Tensor:
    return grad * grad_output.to(grad.dtype)


def _fp16_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def eager_term(term_fn: Callable[[Tensor], Tensor], feature: Tensor, module: nn.Module) -> Tensor:
    """``term_fn(feature)``, a scalar that depends on ``feature`` and ``module``'s parameters only.

    Equal in value and gradient to calling ``term_fn`` directly, but the branch's activations
    are freed before this returns. Falls back to the direct call where nothing needs a gradient
    and under float16 autocast (the gradient is formed before the loss scale is known, and
    could underflow in float16).
    """
    params: Sequence[Tensor] = list(module.parameters())
    needs_grad = feature.requires_grad or any(p.requires_grad for p in params)
    if not torch.is_grad_enabled() or not needs_grad or _fp16_autocast(feature.device.type):
        return term_fn(feature)
    return _EagerTerm.apply(term_fn, feature, *params)
