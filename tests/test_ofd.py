"""The OFD method in isolation: partial L2, margin ReLU, BN margins, data margins, regressors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from overhaul_det import (
    DataMarginEstimator,
    Regressor,
    TokenRegressor,
    bn_margin,
    margin_relu,
    ofd_loss,
    ofd_loss_reference,
)


# ---------------------------------------------------------------------------------------------
# Independent forms of the loss


def three_term_loss(s: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(s-m)^2 [s>m, t<=m] + (s-t)^2 [s>t, m<t<=0] + (s-t)^2 [t>0], margin per channel (dim 1)."""
    m = m.view(1, -1, *([1] * (t.dim() - 2))).to(s.dtype)
    t = t.detach().to(s.dtype)
    below_margin = ((s > m) & (t <= m)).to(s.dtype)
    between = ((s > t) & (m < t) & (t <= 0)).to(s.dtype)
    positive = (t > 0).to(s.dtype)
    return ((s - m) ** 2 * below_margin + (s - t) ** 2 * between + (s - t) ** 2 * positive).sum()


def random_case(dtype: torch.dtype, shape=(2, 6, 5, 7)):
    """Student and teacher with both signs, and a negative per-channel margin."""
    s = (1.5 * torch.randn(shape, dtype=dtype)).requires_grad_(True)
    t = (1.5 * torch.randn(shape, dtype=dtype)).requires_grad_(True)
    m = -(0.2 + torch.rand(shape[1], dtype=dtype))
    return s, t, m


def _grad(fn, s, t, m):
    s = s.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    loss = fn(s, t, m)
    loss.backward()
    return loss.detach(), s.grad, t.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ofd_loss_matches_reference_and_three_term_form(dtype):
    s, t, m = random_case(dtype)
    mb = m.view(1, -1, 1, 1)
    # every region of the three-term form is populated, or the comparison proves little
    assert ((s > mb) & (t <= mb)).any() and ((s > t) & (mb < t) & (t <= 0)).any() and (t > 0).any()
    assert ((s <= t) & (t <= 0)).any() and ((s <= mb) & (t <= mb)).any()

    loss, grad, t_grad = _grad(ofd_loss, s, t, m)
    ref_loss, ref_grad, _ = _grad(ofd_loss_reference, s, t, m)
    three_loss, three_grad, _ = _grad(three_term_loss, s, t, m)

    assert loss.dtype == dtype
    assert t_grad is None, "the teacher must get no gradient"
    assert loss > 0
    for other_loss, other_grad in ((ref_loss, ref_grad), (three_loss, three_grad)):
        torch.testing.assert_close(loss, other_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, other_grad, rtol=1e-6, atol=1e-12)
    assert (grad != 0).any() and (grad == 0).any()


def test_ofd_loss_gradient_is_twice_masked_difference():
    s, t, m = random_case(torch.float64)
    _, grad, _ = _grad(ofd_loss, s, t, m)
    target = torch.maximum(t.detach(), m.view(1, -1, 1, 1))
    skipped = (s <= target) & (target <= 0)
    expected = torch.where(skipped, torch.zeros_like(s), 2 * (s.detach() - target))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


def test_ofd_loss_scales_upstream_gradient():
    s, t, m = random_case(torch.float64)
    _, grad, _ = _grad(ofd_loss, s, t, m)
    s2 = s.detach().clone().requires_grad_(True)
    (3.5 * ofd_loss(s2, t, m)).backward()
    torch.testing.assert_close(s2.grad, 3.5 * grad, rtol=1e-12, atol=0)


def test_ofd_loss_hand_computed_values():
    m = torch.tensor([-1.0])
    t = torch.tensor([-3.0, -3.0, -0.5, -0.5, 2.0, 2.0]).view(1, 1, 1, 6)
    s = torch.tensor([-2.0, -1.5, -0.2, -0.8, 1.0, 3.0]).view(1, 1, 1, 6)
    # t<=m: target -1; s=-2 skipped, s=-1.5 skipped; m<t<=0: s=-0.2 -> 0.09, s=-0.8 skipped;
    # t>0: (1-2)^2 + (3-2)^2 = 2
    assert ofd_loss(s, t, m).item() == pytest.approx(2.09, rel=1e-6)
    s_above = torch.tensor([0.0, -0.5, 0.0, 0.0, 2.0, 2.0]).view(1, 1, 1, 6)
    # (0+1)^2 + (-0.5+1)^2 + 0.25 + 0.25 = 1.75
    assert ofd_loss(s_above, t, m).item() == pytest.approx(1.75, rel=1e-6)


def test_ofd_loss_channel_last_equals_channel_first():
    s, t, m = random_case(torch.float64, shape=(2, 5, 3, 4))
    first = ofd_loss(s, t, m)
    last = ofd_loss(s.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1), m, channel_dim=-1)
    torch.testing.assert_close(first, last, rtol=1e-12, atol=0)
    tokens = ofd_loss(s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2), m, channel_dim=-1)
    torch.testing.assert_close(first, tokens, rtol=1e-12, atol=0)


@pytest.mark.parametrize("teacher_dtype", [torch.float32, torch.bfloat16])
def test_ofd_loss_channels_last_teacher_is_read_in_the_students_layout(teacher_dtype):
    s, t, m = random_case(torch.float32, shape=(2, 6, 5, 7))
    t = t.detach().to(teacher_dtype)
    t_last = t.contiguous(memory_format=torch.channels_last)
    loss, grad, _ = _grad(ofd_loss, s, t, m)
    s_last = s.detach().clone().requires_grad_(True)
    loss_last = ofd_loss(s_last, t_last, m, overwrite_teacher=True)
    loss_last.backward()
    assert torch.equal(loss, loss_last.detach()) and torch.equal(grad, s_last.grad)
    assert s_last.grad.is_contiguous()
    assert torch.equal(t_last, t), "a teacher of another layout is copied into the student's, not overwritten"


def test_ofd_loss_reads_a_bfloat16_channels_last_teacher_as_its_float32_copy_would_be_read():
    """One conversion (dtype and layout together, in the loss) gives the loss and gradient of two (the
    teacher first made float32, then read in the student's layout), to the bit."""
    s, t, m = random_case(torch.float32, shape=(2, 6, 5, 7))
    t = t.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    once, grad_once, _ = _grad(ofd_loss, s, t, m)
    twice, grad_twice, _ = _grad(ofd_loss, s, t.float(), m)
    assert torch.equal(once, twice) and torch.equal(grad_once, grad_twice)


@pytest.mark.parametrize("teacher_dtype", [torch.bfloat16, torch.float16])
def test_ofd_loss_reduced_precision_teacher_keeps_the_float32_margin(teacher_dtype):
    s, t, m = random_case(torch.float32, shape=(2, 6, 5, 7))
    t_low = t.detach().to(teacher_dtype)
    loss, grad, _ = _grad(ofd_loss, s, t_low.float(), m)
    loss_low, grad_low, _ = _grad(ofd_loss, s, t_low, m)
    assert torch.equal(loss, loss_low) and torch.equal(grad, grad_low)
    reference, reference_grad, _ = _grad(ofd_loss_reference, s, t_low.float(), m)
    reference_low, reference_grad_low, _ = _grad(ofd_loss_reference, s, t_low, m)
    assert torch.equal(reference, reference_low) and torch.equal(reference_grad, reference_grad_low)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ofd_loss_low_precision_student_float32_teacher(dtype):
    s, t, m = random_case(torch.float32)
    s_low = s.detach().to(dtype).requires_grad_(True)
    loss = ofd_loss(s_low, t, m)
    loss.backward()
    assert s_low.grad.dtype == dtype and t.grad is None
    t_low = t.detach().to(dtype).double()  # the teacher is cast to the student's dtype
    s64 = s_low.detach().double().requires_grad_(True)
    expected = three_term_loss(s64, t_low, m.to(dtype).double())
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)
    torch.testing.assert_close(s_low.grad.double(), s64.grad, rtol=2e-2, atol=2e-2)


def test_ofd_loss_rejects_mismatched_shapes():
    s, t, m = random_case(torch.float32)
    with pytest.raises(ValueError, match="differ"):
        ofd_loss(s[:, :, :4], t, m)
    with pytest.raises(ValueError, match="differ"):
        ofd_loss(s[:, :5], t, m)
    with pytest.raises(ValueError, match="channels"):
        ofd_loss(s, t, m[:4])


# ---------------------------------------------------------------------------------------------
# Margin ReLU


def test_margin_relu_broadcasts_per_channel():
    t = torch.randn(2, 3, 4, 5)
    m = torch.tensor([-0.5, -1.0, -0.1])
    out = margin_relu(t, m)
    assert out.shape == t.shape
    for c in range(3):
        assert torch.equal(out[:, c], torch.clamp(t[:, c], min=m[c].item()))
    assert (out[:, 2] >= -0.1).all() and (out[:, 1] < -0.5).any()


def test_margin_relu_channel_last_and_wrong_size():
    t = torch.randn(2, 7, 3)
    m = torch.tensor([-0.5, -1.0, -0.1])
    out = margin_relu(t, m, channel_dim=-1)
    assert torch.equal(out, torch.maximum(t, m.view(1, 1, 3)))
    with pytest.raises(ValueError, match="channels"):
        margin_relu(torch.randn(2, 4, 3, 3), m)


# ---------------------------------------------------------------------------------------------
# BN margin


def closed_form_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma^2); -3|gamma| where P(x < 0) <= 0.001."""
    s = abs(gamma)
    cdf = 0.5 * (1.0 + math.erf((-beta / s) / math.sqrt(2.0)))
    if cdf <= 0.001:
        return -3.0 * s
    pdf = math.exp(-0.5 * (beta / s) ** 2) / math.sqrt(2.0 * math.pi)
    return beta - s * pdf / cdf


GAMMAS = [1.0, -1.0, 0.5, 2.0, -0.3, 1.0, 1.0, 0.7, 1.5, -2.0]
BETAS = [0.0, 0.3, -0.4, 1.0, 0.2, 4.0, 2.9, -2.5, 10.0, -0.1]


def _make_norm(kind: str, gammas, betas) -> nn.Module:
    c = len(gammas)
    norm = {"bn": lambda: nn.BatchNorm2d(c), "sync": lambda: nn.SyncBatchNorm(c),
            "frozen": lambda: FrozenBatchNorm2d(c)}[kind]()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(gammas))
        norm.bias.copy_(torch.tensor(betas))
        norm.running_mean.fill_(5.0)  # running statistics must not enter the margin
        norm.running_var.fill_(9.0)
    return norm


@pytest.mark.parametrize("kind", ["bn", "sync", "frozen"])
def test_bn_margin_closed_form(kind):
    # beta/|gamma| = 4 and 10 take the -3|gamma| fallback (Phi(-4) ~ 3e-5); 2.9 does not
    expected = torch.tensor([closed_form_margin(g, b) for g, b in zip(GAMMAS, BETAS)], dtype=torch.float64)
    assert expected[5] == -3.0 and expected[8] == -4.5 and expected[6] != -3.0
    margin = bn_margin(_make_norm(kind, GAMMAS, BETAS))
    assert margin.shape == (len(GAMMAS),) and margin.dtype == torch.float32
    torch.testing.assert_close(margin.double(), expected, rtol=1e-6, atol=0)
    assert (margin < 0).all()


def test_bn_margin_known_value():
    # standard normal: E[x | x < 0] = -sqrt(2/pi)
    margin = bn_margin(_make_norm("bn", [1.0], [0.0]))
    assert margin.item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)


def test_bn_margin_always_negative_on_extreme_params():
    gammas = (torch.randn(2000) * torch.logspace(-4, 2, 2000)).tolist() + [0.0, 0.0, 0.0, 1e-6]
    betas = (torch.randn(2000) * 20).tolist() + [0.0, 3.0, -3.0, 1.0]
    margin = bn_margin(_make_norm("bn", gammas, betas))
    assert torch.isfinite(margin).all()
    assert (margin < 0).all()
    fallback = torch.tensor([closed_form_margin(g, b) for g, b in zip(gammas[:2000], betas[:2000])])
    torch.testing.assert_close(margin[:2000].double(), fallback.double(), rtol=1e-5, atol=0)


def test_bn_margin_needs_affine():
    with pytest.raises(TypeError, match="margin='data'"):
        bn_margin(nn.BatchNorm2d(4, affine=False))


# ---------------------------------------------------------------------------------------------
# Data margin


def test_data_margin_is_mean_of_negatives_over_batches():
    batches = [torch.randn(3, 4, 5, 6) + torch.tensor([0.0, 1.0, -1.0, 0.0]).view(1, 4, 1, 1) for _ in range(4)]
    batches[1][:, 3] = batches[1][:, 3].abs()  # channel 3 negative only in some batches
    estimator = DataMarginEstimator()
    for b in batches:
        estimator.update(b)
    margin = estimator.compute()
    everything = torch.cat([b.transpose(0, 1).reshape(4, -1) for b in batches], dim=1).double()
    expected = torch.stack([row[row < 0].mean() for row in everything])
    torch.testing.assert_close(margin.double(), expected, rtol=1e-6, atol=0)
    assert (margin < 0).all()
    torch.testing.assert_close(DataMarginEstimator.from_features(batches), margin, rtol=0, atol=0)


def test_data_margin_of_gaussian_bn_output_equals_bn_margin():
    """A BatchNorm on batch statistics fed Gaussian responses outputs N(beta, gamma^2) per channel,
    whose negative mean is what the BN margin computes in closed form."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5, -0.8, 1.2, 0.7]))
        bn.bias.copy_(torch.tensor([-0.5, 0.0, 0.5, 0.3, 1.0, -1.0]))
        features = [bn(torch.randn(64, 6, 32, 32) * 3 + 1) for _ in range(4)]
    data = DataMarginEstimator.from_features(features)
    torch.testing.assert_close(data, bn_margin(bn), rtol=0.02, atol=0)


def test_data_margin_channel_last_and_never_negative():
    tokens = [torch.randn(2, 9, 3) for _ in range(3)]
    for t in tokens:
        t[..., 1] = t[..., 1].abs()
    margin = DataMarginEstimator.from_features(tokens, channel_dim=-1)
    flat = torch.cat([t.reshape(-1, 3) for t in tokens])
    assert margin[1] == 0
    for c in (0, 2):
        column = flat[:, c]
        assert margin[c].item() == pytest.approx(column[column < 0].mean().item(), rel=1e-6)


def test_data_margin_requires_a_batch():
    with pytest.raises(RuntimeError):
        DataMarginEstimator().compute()


# ---------------------------------------------------------------------------------------------
# Regressors


def test_regressor_official_init():
    torch.manual_seed(1)
    reg = Regressor(96, 512)
    conv, bn = reg[0], reg[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv.kernel_size == (1, 1) and conv.bias is None
    assert conv.in_channels == 96 and conv.out_channels == 512 and bn.num_features == 512
    w = conv.weight.detach()
    target = math.sqrt(2.0 / 512)
    assert w.std().item() == pytest.approx(target, rel=0.03)
    assert abs(w.mean().item()) < 4 * target / math.sqrt(w.numel())
    assert torch.equal(bn.weight, torch.ones(512)) and torch.equal(bn.bias, torch.zeros(512))
    assert reg(torch.randn(2, 96, 4, 4)).shape == (2, 512, 4, 4)


def test_token_regressor_init_and_shape():
    torch.manual_seed(1)
    reg = TokenRegressor(64, 256)
    assert reg.linear.bias is None
    assert reg.linear.weight.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.03)
    assert torch.equal(reg.bn.weight, torch.ones(256)) and torch.equal(reg.bn.bias, torch.zeros(256))
    assert reg(torch.randn(2, 7, 64)).shape == (2, 7, 256)
    assert reg(torch.randn(2, 3, 5, 64)).shape == (2, 3, 5, 256)


# The fast loss against the reference (moved here from the benchmark tests: they test ofd_loss, not the harness)
@pytest.mark.parametrize("overwrite_teacher", [False, True])
@pytest.mark.parametrize("overwrite_student", [False, True])
def test_fast_loss_equals_reference_in_value_and_gradient(overwrite_teacher, overwrite_student):
    torch.manual_seed(0)
    student = torch.randn(2, 16, 8, 8)
    teacher = torch.randn(2, 16, 8, 8)
    margin = -torch.rand(16)
    margin[0] = 0.0
    teacher.view(-1)[::7] = 0.0
    student.view(-1)[::5] = teacher.view(-1)[::5]
    fast = student.clone().requires_grad_(True)
    naive = student.clone().requires_grad_(True)
    fast_loss = ofd_loss(fast * 1.0, teacher.clone(), margin, overwrite_teacher=overwrite_teacher,
                         overwrite_student=overwrite_student)
    naive_loss = ofd_loss_reference(naive, teacher, margin)
    fast_loss.backward()
    naive_loss.backward()
    torch.testing.assert_close(fast_loss, naive_loss)
    torch.testing.assert_close(fast.grad, naive.grad, rtol=0, atol=0)


def test_overwriting_a_student_tensor_another_op_saved_is_refused_by_autograd():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    saved_by_exp = x.exp()
    loss = ofd_loss(saved_by_exp, torch.randn(2, 4, 3, 3), torch.zeros(4), overwrite_student=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_fast_loss_gradcheck():
    student = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    margin = -torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: ofd_loss(s, teacher, margin), (student,))


def test_loss_that_reuses_the_student_memory_refuses_a_second_backward():
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = ofd_loss(student * 1.0, torch.randn(2, 4, 3, 3), torch.zeros(4), overwrite_student=True)
    loss.backward(retain_graph=True)
    first = student.grad.clone()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    torch.testing.assert_close(student.grad, first)
