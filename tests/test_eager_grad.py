import gc
import weakref

import pytest
import torch

from overhaul_det.eager_grad import eager_term
from overhaul_det.ofd import Regressor, ofd_loss


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    regressor = Regressor(8, 16)
    feature = torch.randn(4, 8, 6, 6, requires_grad=True)
    teacher = torch.randn(4, 16, 6, 6)
    margin = -torch.rand(16)
    return regressor, feature, teacher, margin


def _term_fn(regressor, teacher, margin):
    return lambda x: ofd_loss(regressor(x), teacher, margin)


def _grads(eager: bool, upstream: float = 0.37):
    regressor, feature, teacher, margin = _setup()
    fn = _term_fn(regressor, teacher, margin)
    term = eager_term(fn, feature, regressor) if eager else fn(feature)
    # The term joins a graph that also uses the feature directly, as the student's own loss does.
    (upstream * term + feature.sin().sum()).backward()
    return term.detach(), feature.grad, [p.grad for p in regressor.parameters()], regressor[1].running_mean


def test_eager_term_equals_direct_term_in_value_and_gradient():
    direct = _grads(eager=False)
    eager = _grads(eager=True)
    torch.testing.assert_close(eager[0], direct[0])
    torch.testing.assert_close(eager[1], direct[1])
    for got, want in zip(eager[2], direct[2]):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(eager[3], direct[3])  # BatchNorm statistics updated once


class _Saved:
    """What autograd packs: kept by the graph for as long as the graph needs it."""

    def __init__(self, tensor):
        self.tensor = tensor


def _saved_bytes(eager: bool) -> int:
    """Bytes that the returned term's graph still holds for backward."""
    regressor, feature, teacher, margin = _setup()
    fn = _term_fn(regressor, teacher, margin)
    packed = []

    def pack(t):
        box = _Saved(t)
        packed.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        term = eager_term(fn, feature, regressor) if eager else fn(feature)
    gc.collect()
    alive = [ref().tensor for ref in packed if ref() is not None]
    assert term.grad_fn is not None
    return sum(t.numel() * t.element_size() for t in alive)


def test_eager_term_keeps_only_gradients_for_backward():
    regressor, feature, _, _ = _setup()
    gradients = feature.numel() * 4 + sum(p.numel() * 4 for p in regressor.parameters())
    regressor_output = 4 * 16 * 6 * 6 * 4
    assert _saved_bytes(eager=True) == gradients
    assert _saved_bytes(eager=False) >= 2 * regressor_output


def test_eager_term_without_feature_gradient_trains_the_regressor_only():
    regressor, feature, teacher, margin = _setup()
    frozen = feature.detach()
    term = eager_term(_term_fn(regressor, teacher, margin), frozen, regressor)
    term.backward()
    assert frozen.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in regressor.parameters())


@pytest.mark.parametrize("context", ["no_grad", "fp16_autocast"])
def test_eager_term_falls_back_to_the_direct_call(context):
    regressor, feature, teacher, margin = _setup()
    fn = _term_fn(regressor, teacher, margin)
    if context == "no_grad":
        with torch.no_grad():
            term = eager_term(fn, feature, regressor)
        assert term.grad_fn is None
    else:
        with torch.autocast("cpu", dtype=torch.float16):
            term = eager_term(fn, feature, regressor)
        assert "EagerTerm" not in type(term.grad_fn).__name__
        term.backward()
        assert feature.grad is not None


def test_eager_term_leaves_an_unused_parameter_without_gradient():
    regressor, feature, teacher, margin = _setup()
    module = torch.nn.ModuleDict(dict(used=regressor, unused=torch.nn.Linear(2, 2)))
    eager_term(_term_fn(regressor, teacher, margin), feature, module).backward()
    assert module["unused"].weight.grad is None  # as the direct call would
    assert regressor[0].weight.grad.abs().sum() > 0
