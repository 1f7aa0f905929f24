"""FeatureDistiller end to end on a real teacher/student pair, and its error paths."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overhaul_det import (
    DataMarginEstimator,
    FeatureDistiller,
    attach_taps,
    bn_margin,
    capture_taps,
    default_tap_weights,
    find_taps,
    ofd_loss_reference,
    pair_taps,
)

from overhaul_det.alpha_schedule import round_to_series
from overhaul_det.pairing import resize_to
from cifar_models import CifarResNet, WideResNet
from conftest import assert_same_state, randomize_bn, snapshot_state

SIZE = (3, 64, 64)


@pytest.fixture
def pair(make_model, randomized):
    """A random-init torchvision ResNet-50 teacher (random BN affines) and MobileNetV3-Large student."""
    return randomized(make_model("tv", "resnet50")), make_model("tv", "mobilenet_v3_large")


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *SIZE)


def _teacher_train_features(teacher: nn.Module, taps, x: torch.Tensor):
    """Teacher tap tensors from a deep copy run with BN in train mode (independent of TapExtractor)."""
    clone = copy.deepcopy(teacher).train()
    attach_taps(clone, taps)
    with torch.no_grad(), capture_taps(clone) as feats:
        clone(x)
    return [feats[t.name] for t in taps]


def test_distiller_trains_student_and_leaves_teacher_untouched(pair):
    teacher, student = pair
    snapshot = snapshot_state(teacher)
    distiller = FeatureDistiller(teacher, student, input_size=SIZE)
    distiller.train()
    assert not teacher.training and student.training
    student_before = snapshot_state(student)
    # the optimizer sees every parameter, the teacher's included: nothing may reach them
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for step in range(3):
        x, y = _x(), torch.randint(0, 1000, (2,))
        out, losses = distiller(x)
        assert set(losses) == {"loss_ofd"}
        loss = losses["loss_ofd"]
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
        optimizer.zero_grad()
        (F.cross_entropy(out, y) + loss).backward()
        if step == 0:
            assert all(p.grad is None for p in teacher.parameters())
            assert all(p.grad is not None for p in student.parameters())
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.regressors.parameters())
        optimizer.step()
    assert_same_state(teacher, snapshot)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


def test_distill_loss_alone_reaches_student_features(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE).train()
    _, losses = distiller(_x())
    losses["loss_ofd"].backward()
    assert student.features[0][0].weight.grad.abs().sum() > 0
    assert student.classifier[-1].weight.grad is None  # after the last tap: no distillation gradient
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_loss_value(pair):
    teacher, student = pair
    alpha = 0.5
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, alpha=alpha, teacher_precision="float32").train()
    x = _x()
    with distiller.capture_student() as captured:
        distiller.student(x)
    student_feats = [captured[s.name] for s in distiller.student_taps]
    loss = distiller.distill_loss(captured, distiller.teacher_features(x))

    teacher_feats = _teacher_train_features(teacher, distiller.teacher_taps, x)
    expected = 0.0
    for w, s, t, reg, tap in zip([1 / 8, 1 / 4, 1 / 2, 1.0], student_feats, teacher_feats,
                                 distiller.regressors, distiller.teacher_taps):
        margin = bn_margin(teacher.get_submodule(tap.norm))
        expected = expected + w * ofd_loss_reference(reg(s), t, margin)
    expected = expected * alpha / x.shape[0]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_distiller_teacher_features_use_batch_statistics(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, teacher_precision="float32")
    x = _x()
    feats = distiller.teacher_features(x)
    expected = _teacher_train_features(teacher, distiller.teacher_taps, x)
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not got.requires_grad and got.min() < 0


def test_distiller_student_output_is_native(pair):
    teacher, student = pair
    plain = copy.deepcopy(student).eval()
    distiller = FeatureDistiller(teacher, student, input_size=SIZE).eval()
    x = _x()
    with torch.no_grad():
        out, _ = distiller(x)
        assert torch.equal(out, plain(x))
    assert list(student.state_dict()) == list(plain.state_dict())


def test_distiller_defaults_weights_and_bn_margins(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE)
    assert distiller.weights == [1 / 8, 1 / 4, 1 / 2, 1.0]
    assert default_tap_weights(3) == [1 / 4, 1 / 2, 1.0]
    assert [s.stride for s, _ in distiller.pairs] == [4, 8, 16, 32]
    assert [t.stride for _, t in distiller.pairs] == [4, 8, 16, 32]
    assert [t.norm for t in distiller.teacher_taps] == ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"]
    buffers = dict(distiller.named_buffers())
    state = distiller.state_dict()
    for i, tap in enumerate(distiller.teacher_taps):
        margin = buffers[f"margin_{i}"]
        assert f"margin_{i}" in state
        assert torch.equal(margin, bn_margin(teacher.get_submodule(tap.norm)))
        assert margin.shape == (tap.channels,) and (margin < 0).all()
    assert bool(distiller.margins_calibrated)
    assert [(r[0].in_channels, r[0].out_channels) for r in distiller.regressors] == [
        (s.channels, t.channels) for s, t in distiller.pairs]


def test_distiller_data_margins_calibrate(pair):
    teacher, student = pair
    snapshot = snapshot_state(teacher)
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, margin="data", teacher_precision="float32")
    assert not bool(distiller.margins_calibrated)
    batches = [_x() for _ in range(3)]
    distiller.calibrate_margins(iter(batches))
    assert bool(distiller.margins_calibrated)
    per_batch = [_teacher_train_features(teacher, distiller.teacher_taps, b) for b in batches]
    for i, margin in enumerate(distiller.margins):
        values = torch.cat([feats[i].transpose(0, 1).reshape(feats[i].shape[1], -1) for feats in per_batch], 1)
        negatives = torch.where(values < 0, values.double(), torch.zeros((), dtype=torch.float64))
        expected = negatives.sum(1) / (values < 0).sum(1).clamp_min(1)
        torch.testing.assert_close(margin.double(), expected, rtol=1e-5, atol=1e-7)
        assert (margin < 0).any() and (margin <= 0).all()
    assert_same_state(teacher, snapshot)


def test_distiller_data_margins_from_first_batch(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, margin="data", teacher_precision="float32").train()
    x = _x()
    _, losses = distiller(x)
    assert bool(distiller.margins_calibrated) and torch.isfinite(losses["loss_ofd"])
    feats = _teacher_train_features(teacher, distiller.teacher_taps, x)
    for margin, feat in zip(distiller.margins, feats):
        torch.testing.assert_close(margin, DataMarginEstimator.from_features([feat]), rtol=1e-5, atol=1e-7)
    calibrated = [m.clone() for m in distiller.margins]
    distiller(_x())
    assert all(torch.equal(a, b) for a, b in zip(calibrated, distiller.margins))


def test_distiller_bn_margin_needs_a_bn(make_model):
    teacher, student = make_model("timm", "convnext_nano"), make_model("timm", "resnet18")
    with pytest.raises(ValueError, match="margin='data'"):
        FeatureDistiller(teacher, student, input_size=SIZE, margin="bn")
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, margin="auto")
    assert not bool(distiller.margins_calibrated)


def test_distiller_explicit_pairs(pair):
    teacher, student = pair
    s_taps, t_taps = find_taps(student, input_size=SIZE), find_taps(teacher, input_size=SIZE)
    pairs = [(s_taps[3].name, t_taps[3].name), (s_taps[1].name, t_taps[1].name)]
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, pairs=pairs).train()
    assert [(s.name, t.name) for s, t in distiller.pairs] == pairs
    assert distiller.weights == [1 / 2, 1.0]
    assert len(distiller.regressors) == 2 and distiller.regressors[0][0].out_channels == 2048
    assert torch.equal(distiller.margin_0, bn_margin(teacher.layer4[2].bn3))
    _, losses = distiller(_x())
    assert torch.isfinite(losses["loss_ofd"])


def test_distiller_align(pair):
    teacher, student = pair
    s_taps, t_taps = find_taps(student, input_size=SIZE), find_taps(teacher, input_size=SIZE)
    # student stride 8 (8x8 at 64 px) against teacher stride 16 (4x4), and the reverse
    pairs = [(s_taps[1].name, t_taps[2].name), (s_taps[3].name, t_taps[2].name)]
    strict = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE,
                              pairs=pairs, align="raise")
    with pytest.raises(ValueError, match="spatial size"):
        strict(_x())
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, pairs=pairs, align="interpolate").train()
    _, losses = distiller(_x())
    loss = losses["loss_ofd"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in distiller.regressors.parameters())


@pytest.mark.parametrize("size", [(32, 32), (5, 7)])
def test_resize_to_a_channels_last_teacher_is_the_same_resize_channels_last(size):
    """resize_to gives F.interpolate's values and gradient to the bit, laid out as the teacher is; a
    channels-first teacher keeps the channels-first resize."""
    s = torch.randn(2, 64, 16, 16, requires_grad=True)
    grad = torch.randn(2, 64, *size)
    want = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
    (want_grad,) = torch.autograd.grad(want, s, grad)
    teacher = torch.randn(2, 64, *size)
    for t, channels_last in ((teacher.contiguous(memory_format=torch.channels_last), True), (teacher, False)):
        got = resize_to(s, t)
        (got_grad,) = torch.autograd.grad(got, s, grad)
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert got_grad.is_contiguous()  # the layers before it get their gradient as they did


def test_a_channels_last_teacher_trains_the_interpolated_pairs_as_a_channels_first_one(pair):
    """Three OFD steps on pairs the regressed student map is resized for (align='interpolate'), the
    teacher's maps once channels-first and once channels-last with the same values, end at the same
    student and regressor weights, BatchNorm statistics and momentum to the bit; only the loss's
    value is summed in another order."""
    teacher, student = pair
    s_taps, t_taps = find_taps(student, input_size=SIZE), find_taps(teacher, input_size=SIZE)
    pairs = [(s_taps[1].name, t_taps[2].name), (s_taps[3].name, t_taps[2].name)]  # 8x8 -> 4x4, 2x2 -> 4x4
    torch.manual_seed(0)
    base = FeatureDistiller(teacher, student, input_size=SIZE, pairs=pairs, align="interpolate").train()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, *SIZE, generator=generator) for _ in range(3)]
    runs = []
    for channels_last in (False, True):
        distiller = copy.deepcopy(base)
        trainable = list(distiller.student.parameters()) + list(distiller.regressors.parameters())
        optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9)
        for x in batches:
            with distiller.capture_student() as captured:
                distiller.student(x)
            teacher_maps = distiller.teacher_features(x)
            if channels_last:
                teacher_maps = [t.contiguous(memory_format=torch.channels_last) for t in teacher_maps]
            loss = distiller.distill_loss(captured, teacher_maps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        momentum = [optimizer.state[p]["momentum_buffer"] for p in trainable if p in optimizer.state]
        runs.append((distiller.state_dict(), momentum, loss))
    (state, momentum, loss), (cl_state, cl_momentum, cl_loss) = runs
    assert not torch.equal(state["regressors.0.0.weight"], base.state_dict()["regressors.0.0.weight"])
    for key in state:
        assert torch.equal(state[key], cl_state[key]), key
    assert len(momentum) == len(cl_momentum) > 10
    assert all(torch.equal(a, b) for a, b in zip(momentum, cl_momentum))
    torch.testing.assert_close(cl_loss, loss, rtol=1e-5, atol=0)


def test_unequal_tap_lists_pair_by_depth_and_bad_names_are_refused(pair):
    """Three student taps against four teacher taps: the deepest three of each pair by depth (the
    stride lists differ); an unknown name in pairs= names both models' taps."""
    teacher, student = pair
    s_taps, t_taps = find_taps(student, input_size=SIZE), find_taps(teacher, input_size=SIZE)
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, student_taps=s_taps[:3], teacher_taps=t_taps)
    assert distiller.pairs == list(zip(s_taps[:3], t_taps[1:]))
    with pytest.raises(ValueError) as info:
        pair_taps(s_taps[:3], t_taps, pairs=[(s_taps[0].name, "no_such_node")])
    assert "no_such_node" in str(info.value) and t_taps[0].name in str(info.value)


def test_distiller_rejects_bad_options(pair):
    teacher, student = pair
    for kwargs in ({"margin": "mean"}, {"align": "crop"}, {"teacher_bn": "frozen"}, {"weights": [1.0, 1.0]}):
        with pytest.raises(ValueError):
            FeatureDistiller(teacher, student, input_size=SIZE, **kwargs)


def test_ablation_switches_change_the_loss_as_the_paper_defines(pair):
    """distance='l2' counts every element, margin='none' keeps the teacher as it is, position='post'
    taps after the activation (non-negative teacher features)."""
    teacher, student = pair
    x = _x()
    losses = {}
    for name, options in {"ofd": {}, "l2": dict(distance="l2"), "none": dict(margin="none"),
                          "post": dict(position="post")}.items():
        torch.manual_seed(0)
        distiller = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE, **options)
        distiller.train()
        with distiller.capture_student() as captured:
            distiller.student(x)
        feats = distiller.teacher_features(x)
        losses[name] = float(distiller.distill_loss(captured, feats))
        if name == "none":
            assert all(torch.isinf(m).all() for m in distiller.margins)
        if name == "post":
            assert all(t.activation is None for t in distiller.teacher_taps)
            assert all(bool((f >= 0).all()) for f in feats)
    assert losses["l2"] > losses["ofd"] > 0
    assert losses["none"] != losses["ofd"]


def _train_steps(distiller: FeatureDistiller, steps: int, batch: int = 8, size: int = 64):
    """``steps`` SGD (momentum, weight decay) steps of cross-entropy + OFD on fixed random batches."""
    generator = torch.Generator().manual_seed(0)
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    distiller.train()
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 10, (batch,), generator=generator)
        out, losses = distiller(x)
        optimizer.zero_grad()
        (F.cross_entropy(out, y) + losses["loss_ofd"]).backward()
        optimizer.step()
    momentum = [optimizer.state[p]["momentum_buffer"] for p in trainable]
    return distiller.state_dict(), momentum


@pytest.mark.parametrize("distance", ["partial_l2", "l2"])
def test_memory_saving_path_trains_as_the_plain_path(make_model, randomized, distance):
    """20 OFD steps through the memory-saving loss (eager differentiation, in-place reuse) and
    through the plain autograd graph with ``ofd_loss_reference`` end at the same weights,
    regressor BatchNorm statistics and momentum buffers (float64, so rounding stays far below
    the tolerance while a wrong gradient anywhere would not). At 64 px the deepest maps are 2x2:
    at 1x1 with batch 8 the batch-statistics BNs amplify rounding a millionfold in 20 steps."""
    teacher = randomized(make_model("tv", "resnet18", num_classes=10))
    student = make_model("timm", "mobilenetv3_small_050", num_classes=10)
    results = []
    for memory_saving in (True, False):
        torch.manual_seed(0)  # the same regressor initialisation
        distiller = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=(3, 64, 64),
                                     alpha=3e-2, distance=distance, memory_saving=memory_saving).double()
        results.append(_train_steps(distiller, steps=20))
    (state, momentum), (plain_state, plain_momentum) = results
    assert list(state) == list(plain_state)
    assert any("regressors.0.1.running_var" in k for k in state)
    for key in state:
        torch.testing.assert_close(state[key], plain_state[key], rtol=1e-9, atol=1e-9, msg=key)
    for got, want in zip(momentum, plain_momentum):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert not torch.equal(state["student.conv_stem.weight"], student.state_dict()["conv_stem.weight"].double())


def test_alpha_warmup_ramps_and_resumes(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, alpha=0.3, alpha_warmup=3).train()
    x = _x()
    seen = []
    for _ in range(4):
        seen.append(distiller.effective_alpha)
        distiller(x)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3])
    with torch.no_grad():
        distiller.eval()(x)  # evaluation does not advance the ramp
    assert int(distiller.warmup_step) == 4

    state = distiller.state_dict()
    resumed = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE, alpha=0.3,
                               alpha_warmup=3)
    resumed.load_state_dict(state)
    assert int(resumed.warmup_step) == 4 and resumed.effective_alpha == pytest.approx(0.3)
    del state["warmup_step"]  # a checkpoint written before the ramp existed: past its warm-up
    fresh = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE, alpha=0.3,
                             alpha_warmup=3)
    fresh.load_state_dict(state)
    assert fresh.effective_alpha == pytest.approx(0.3)
    with pytest.raises(ValueError, match="alpha_warmup"):
        FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE, alpha_warmup=-1)


@pytest.mark.parametrize("teacher, student, taps", [
    (CifarResNet(56), CifarResNet(20), ["layer1.8.bn2", "layer2.8.bn2", "layer3.8.bn2"]),
    # pre-activation: a stage ends before the next block's BN-ReLU; the last before the final one
    (WideResNet(40, 2), WideResNet(16, 2), ["block2.0.bn1", "block3.0.bn1", "bn"]),
])
def test_fixed_size_cifar_pairs_distil_at_their_own_size(teacher, student, taps):
    """CIFAR networks cannot run at the 224 px reference; the given 32 px is then their size."""
    distiller = FeatureDistiller(randomize_bn(teacher), student, input_size=(3, 32, 32), min_stride=1).train()
    assert [t.norm for t in distiller.teacher_taps] == taps
    assert [t.stride for t in distiller.student_taps] == [1, 2, 4]
    out, losses = distiller(torch.randn(4, 3, 32, 32))
    (F.cross_entropy(out, torch.tensor([0, 1, 2, 3])) + losses["loss_ofd"]).backward()
    assert out.shape == (4, 10) and student.conv1.weight.grad is not None


def test_input_below_the_deepest_stride_is_refused(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="at least 32x32"):
        FeatureDistiller(teacher, student, input_size=(3, 16, 16))


def test_batch_below_the_deepest_tap_stride_is_refused(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=(3, 128, 128)).train()
    distiller(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got a batch of 16x16 px.*deepest tap \(32\)"):
        distiller(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"the teacher .* got a batch of 16x16 px"):
        distiller.teacher_features(torch.randn(2, 3, 16, 16))


def _auto_step(distiller: FeatureDistiller, x: torch.Tensor, labels: torch.Tensor):
    out, losses = distiller(x)
    task = F.cross_entropy(out, labels)
    return distiller.scale_to_task(losses["loss_ofd"], task), task


@pytest.mark.parametrize("warmup", [0, 4])
def test_auto_alpha_sets_the_ofd_term_to_the_ratio_at_the_first_iteration(pair, warmup):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, alpha="auto", alpha_warmup=warmup,
                                 alpha_series=None).train()
    x, labels = _x(4), torch.tensor([0, 1, 2, 3])
    first, task = _auto_step(distiller, x, labels)
    ramp = 1 / warmup if warmup else 1.0
    assert float(first) == pytest.approx(16.0 * float(task) * ramp, rel=1e-6)
    alpha = float(distiller.alpha_auto)
    second, _ = _auto_step(distiller, x, labels)
    assert float(distiller.alpha_auto) == alpha  # held fixed
    out, losses = distiller(x)
    assert float(distiller.scale_to_task(losses["loss_ofd"], torch.tensor(100.0))) == pytest.approx(
        float(losses["loss_ofd"]) * alpha)


def test_auto_alpha_is_rounded_to_the_series_by_default(pair):
    teacher, student = pair
    exact = FeatureDistiller(teacher, student, input_size=SIZE, alpha="auto", alpha_series=None).train()
    rounded = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=SIZE, alpha="auto").train()
    x, labels = _x(4), torch.tensor([0, 1, 2, 3])
    _auto_step(exact, x, labels)
    _auto_step(rounded, x, labels)
    raw = float(exact.alpha_auto)
    assert float(rounded.alpha_auto) == pytest.approx(round_to_series(raw)) and float(rounded.alpha_auto) != raw


@pytest.mark.parametrize("value,expected", [(0.0108, 0.01), (0.0096, 0.01), (7e-5, 1e-4), (5e-5, 3e-5),
                                            (2e-3, 3e-3), (1.7e-3, 1e-3), (0.3, 0.3), (9, 10)])
def test_round_to_series_is_nearest_in_log(value, expected):
    assert round_to_series(value) == pytest.approx(expected)


def test_round_to_series_takes_other_series():
    assert round_to_series(0.0035, (1.0, 2.0, 5.0)) == pytest.approx(0.005)
    assert round_to_series(0.0013, (1.0, 2.0, 5.0)) == pytest.approx(0.001)


def test_auto_alpha_series_is_checked(pair):
    for series in ((), (0.5, 3.0), (1.0, 30.0)):
        with pytest.raises(ValueError, match="alpha_series="):
            FeatureDistiller(*pair, input_size=SIZE, alpha="auto", alpha_series=series)


def test_auto_alpha_resumes_from_its_buffer(make_model, pair):
    teacher, student = pair
    first = FeatureDistiller(teacher, student, input_size=SIZE, alpha="auto").train()
    _auto_step(first, _x(4), torch.tensor([0, 1, 2, 3]))
    resumed = FeatureDistiller(copy.deepcopy(teacher), make_model("tv", "mobilenet_v3_large"), input_size=SIZE,
                               alpha="auto").train()
    resumed.load_state_dict(first.state_dict())
    _auto_step(resumed, _x(4), torch.tensor([3, 2, 1, 0]))
    assert float(resumed.alpha_auto) == float(first.alpha_auto) > 0


def test_a_numeric_alpha_has_no_auto_state(pair):
    teacher, student = pair
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, alpha=1e-3).train()
    assert not any("alpha_auto" in key for key in distiller.state_dict())  # older checkpoints keep loading
    out, losses = distiller(_x())
    assert distiller.scale_to_task(losses["loss_ofd"], torch.tensor(5.0)) is losses["loss_ofd"]
    for alpha in ("aut", -1e-3):
        with pytest.raises(ValueError, match=f"alpha={alpha!r}; give a number >= 0 or 'auto'"):
            FeatureDistiller(teacher, student, input_size=SIZE, alpha=alpha)


def test_distiller_forward_equals_distill_loss(make_model):
    torch.manual_seed(0)
    teacher, student = make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_small")
    distiller = FeatureDistiller(teacher, student, input_size=(64, 64)).train()
    x = torch.randn(2, 3, 64, 64)
    _, losses = distiller(x)
    with distiller.capture_student() as captured:
        distiller.student(x)
        reference = distiller.distill_loss(captured, distiller.teacher_features(x))
    torch.testing.assert_close(losses["loss_ofd"], reference)


