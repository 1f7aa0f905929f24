"""Every pair pairs: taps of different strides pair by depth, nhwc maps and ViT tokens become
channel-first maps where the other side is a map, and the default path is left as it was."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from overhaul_det import FeatureDistiller, Regressor, TokenRegressor, find_taps, pair_taps
from overhaul_det.pairing import loss_layout, to_loss_layout
from overhaul_det.taps import Tap, TapExtractor


def _tap(name: str, stride: int, layout: str = "nchw", shape=()) -> Tap:
    return Tap(name=name, channels=8, stride=stride, norm=None, activation=None, shape=shape, layout=layout)


def _one_step(distiller: FeatureDistiller, size: int, batch: int = 2) -> torch.Tensor:
    """One forward and backward of cross-entropy + OFD; returns the OFD loss."""
    distiller.train()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    out, losses = distiller(x)
    loss = losses["loss_ofd"]
    (F.cross_entropy(out, torch.zeros(batch, dtype=torch.long)) + loss).backward()
    return loss.detach()


def _assert_distils(distiller: FeatureDistiller, size: int) -> None:
    """A finite, positive OFD loss whose gradient reaches every regressor and the student's taps."""
    distiller.zero_grad()
    with distiller.capture_student() as captured:
        distiller.student(torch.randn(2, 3, size, size))
    student = [captured[s.name].detach().requires_grad_(True) for s in distiller.student_taps]
    loss = distiller.distill_loss(student, distiller.teacher_features(torch.randn(2, 3, size, size)))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in student)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.regressors.parameters())
    assert torch.isfinite(_one_step(distiller, size))


def test_equal_stride_lists_pair_as_before():
    student = [_tap("s4", 4), _tap("s8", 8), _tap("s16", 16)]
    teacher = [_tap("t4", 4), _tap("t8", 8), _tap("t16", 16)]
    assert pair_taps(student, teacher) == list(zip(student, teacher))
    assert pair_taps(student, teacher[::-1]) == list(zip(student, teacher))  # by stride, whatever the order


def test_different_strides_pair_the_deepest_by_depth_and_say_so(caplog):
    student = [_tap("s4", 4), _tap("s8", 8), _tap("s16", 16), _tap("s32", 32)]
    vit = [_tap(f"blocks.{i}", 16, "tokens") for i in (2, 5, 8)]
    with caplog.at_level(logging.INFO, logger="overhaul_det.distiller"):
        matched = pair_taps(student, vit)
    assert matched == list(zip(student[1:], vit))
    (message,) = [r.getMessage() for r in caplog.records]
    assert "by depth" in message and "s32(stride 32) -> blocks.8(stride 16)" in message
    assert pair_taps(vit, student) == list(zip(vit, student[1:]))
    with pytest.raises(ValueError, match="no taps to pair"):
        pair_taps([], student)


def test_loss_layouts():
    assert loss_layout(_tap("a", 8, "nchw"), _tap("b", 8, "nchw")) == "nchw"
    assert loss_layout(_tap("a", 8, "nhwc"), _tap("b", 8, "nhwc")) == "nhwc"
    assert loss_layout(_tap("a", 16, "tokens", (2, 17, 8)), _tap("b", 16, "tokens", (2, 17, 8))) == "tokens"
    assert loss_layout(_tap("a", 16, "tokens", (2, 17, 8)), _tap("b", 16, "tokens", (2, 18, 8))) == "nchw"
    assert loss_layout(_tap("a", 8, "nhwc"), _tap("b", 8, "nchw")) == "nchw"
    assert loss_layout(_tap("a", 16, "tokens", (2, 17, 8)), _tap("b", 8, "nhwc")) == "nchw"


def test_to_loss_layout_permutes_maps_and_drops_leading_tokens():
    nhwc = torch.randn(2, 3, 3, 5)
    assert torch.equal(to_loss_layout(nhwc, _tap("a", 8, "nhwc"), "nchw"), nhwc.permute(0, 3, 1, 2))
    assert to_loss_layout(nhwc, _tap("a", 8, "nhwc"), "nhwc") is nhwc
    tokens = torch.randn(2, 2 + 9, 5)
    grid = to_loss_layout(tokens, _tap("a", 16, "tokens"), "nchw", prefix=2)
    assert grid.shape == (2, 5, 3, 3)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 2 + 1 * 3 + 2])  # row-major patches, prefix dropped
    with pytest.raises(ValueError, match="not a square grid"):
        to_loss_layout(torch.randn(2, 1 + 6, 5), _tap("vit.blocks.2", 16, "tokens"), "nchw", prefix=1)


def test_xception_to_semnasnet_with_different_strides(make_model, caplog):
    """The student's three shallowest taps (strides 4, 8, 16) against the teacher's four: the
    deepest three of each pair by depth, each student map resized to its teacher's."""
    teacher = make_model("timm", "xception41", num_classes=10)
    student = make_model("timm", "semnasnet_075", num_classes=10)
    size = (3, 64, 64)
    s_taps = find_taps(student, input_size=size)[:3]
    t_taps = find_taps(teacher, input_size=size)
    with caplog.at_level(logging.INFO, logger="overhaul_det.distiller"):
        distiller = FeatureDistiller(teacher, student, input_size=size, student_taps=[t.name for t in s_taps],
                                     alpha=1e-3)
    assert [(s.stride, t.stride) for s, t in distiller.pairs] == [(4, 8), (8, 16), (16, 32)]
    assert [t.name for t in distiller.teacher_taps] == [t.name for t in t_taps[1:]]
    assert sum("by depth" in r.getMessage() for r in caplog.records) == 1
    _assert_distils(distiller, 64)


@pytest.mark.parametrize("swin_is_teacher", [True, False])
def test_swin_nhwc_pairs_with_a_resnet(make_model, swin_is_teacher):
    """Swin's (N, H, W, C) stage outputs are permuted to (N, C, H, W) against a ResNet's maps, and
    the pair takes a map regressor (1x1 conv + BN)."""
    swin = make_model("timm", "swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10)
    resnet = make_model("tv", "resnet18", num_classes=10)
    teacher, student = (swin, resnet) if swin_is_teacher else (resnet, swin)
    distiller = FeatureDistiller(teacher, student, input_size=(3, 64, 64), alpha=1e-3)
    assert distiller.layouts == ["nchw"] * 4
    assert all(type(r) is Regressor for r in distiller.regressors)
    if swin_is_teacher:
        x = torch.randn(2, 3, 64, 64)
        raw = TapExtractor(copy.deepcopy(teacher), distiller.teacher_taps)(x)
        for feature, tap in zip(distiller.teacher_features(x), distiller.teacher_taps):
            torch.testing.assert_close(feature, raw[tap.name].permute(0, 3, 1, 2))
    _assert_distils(distiller, 64)


def test_resnet_teacher_vit_student(make_model):
    """ViT tokens (a class token, then a 4x4 grid at 64 px) become maps at stride 16 against the
    ResNet's four stages, paired by depth and resized to each teacher map."""
    teacher = make_model("tv", "resnet18", num_classes=10)
    student = make_model("timm", "vit_tiny_patch16_224", img_size=64, num_classes=10)
    distiller = FeatureDistiller(teacher, student, input_size=(3, 64, 64), alpha=1e-3)
    assert [(s.layout, s.stride, t.stride) for s, t in distiller.pairs] == [
        ("tokens", 16, 4), ("tokens", 16, 8), ("tokens", 16, 16), ("tokens", 16, 32)]
    assert distiller.layouts == ["nchw"] * 4 and all(type(r) is Regressor for r in distiller.regressors)
    _assert_distils(distiller, 64)
    assert student.patch_embed.proj.weight.grad is not None


def test_deit_distilled_teacher_drops_both_leading_tokens(make_model):
    teacher = make_model("timm", "deit_tiny_distilled_patch16_224", img_size=64, num_classes=10)
    student = make_model("tv", "resnet18", num_classes=10)
    distiller = FeatureDistiller(teacher, student, input_size=(3, 64, 64), alpha=1e-3)
    assert [t.shape[1] for t in distiller.teacher_taps] == [18] * 4
    x = torch.randn(2, 3, 64, 64)
    raw = TapExtractor(copy.deepcopy(teacher), distiller.teacher_taps)(x)
    for feature, tap in zip(distiller.teacher_features(x), distiller.teacher_taps):
        tokens = raw[tap.name]
        torch.testing.assert_close(feature, tokens[:, 2:].reshape(2, 4, 4, 192).permute(0, 3, 1, 2))
    _assert_distils(distiller, 64)
    assert all(bool((m <= 0).all()) and bool((m < 0).any()) for m in distiller.margins)  # data margins of the maps


def test_tokens_with_tokens_keep_the_token_path(make_model):
    teacher = make_model("timm", "vit_tiny_patch16_224", img_size=64, num_classes=10)
    student = copy.deepcopy(teacher)
    distiller = FeatureDistiller(teacher, student, input_size=(3, 64, 64), alpha=1e-3)
    assert distiller.layouts == ["tokens"] * 4 and all(type(r) is TokenRegressor for r in distiller.regressors)
    with distiller.capture_student() as captured:
        distiller.student(torch.randn(2, 3, 64, 64))
    assert all(f is captured[s.name] for f, s in zip(distiller.student_features(captured), distiller.student_taps))


def test_tokens_off_a_square_grid_are_refused_by_name(make_model):
    teacher = make_model("tv", "resnet18", num_classes=10)
    student = make_model("timm", "vit_tiny_patch16_224", img_size=(64, 96), num_classes=10)
    with pytest.raises(ValueError, match=r"square grid.*pairs=") as info:
        FeatureDistiller(teacher, student, input_size=(3, 64, 96))
    assert "blocks." in str(info.value) and "layer" in str(info.value)


def test_default_path_keeps_native_layouts_and_tensors(make_model):
    """The demo pair (strides and layouts equal): no conversion, the same tensors reach the loss."""
    teacher = make_model("tv", "resnet18", num_classes=10)
    student = make_model("timm", "mobilenetv3_small_050", num_classes=10)
    distiller = FeatureDistiller(teacher, student, input_size=(3, 32, 32), alpha=1e-2)
    assert distiller.layouts == ["nchw"] * 4 and distiller.pairs == list(zip(distiller.student_taps,
                                                                             distiller.teacher_taps))
    assert [s.stride for s in distiller.student_taps] == [t.stride for t in distiller.teacher_taps]
    with distiller.capture_student() as captured:
        distiller.student(torch.randn(2, 3, 32, 32))
    assert all(f is captured[s.name] for f, s in zip(distiller.student_features(captured), distiller.student_taps))


def test_default_demo_training_equals_the_plain_path(make_model, randomized):
    """The demo pair at its own 32 px (1x1 deepest maps), three SGD steps: the default
    (memory-saving) path and the plain autograd path with ``ofd_loss_reference`` end at the same
    weights (float64, to 1e-9; in float32 the batch-statistics BNs of 1x1 maps amplify rounding)."""
    teacher = randomized(make_model("tv", "resnet18", num_classes=10))
    student = make_model("timm", "mobilenetv3_small_050", num_classes=10)
    states = []
    for memory_saving in (True, False):
        torch.manual_seed(0)
        distiller = FeatureDistiller(copy.deepcopy(teacher), copy.deepcopy(student), input_size=(3, 32, 32),
                                     alpha=1e-2, memory_saving=memory_saving).double().train()
        optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            x = torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64)
            y = torch.randint(0, 10, (8,), generator=generator)
            out, losses = distiller(x)
            optimizer.zero_grad()
            (F.cross_entropy(out, y) + losses["loss_ofd"]).backward()
            optimizer.step()
        states.append(distiller.state_dict())
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-9, atol=1e-9, msg=key)


def test_nhwc_pairs_of_different_strides_stay_nhwc_and_resize(make_model):
    """Swin to Swin with the student's three shallowest taps: nhwc pairs by depth keep their
    layout and token regressor, and the student map is resized to the teacher's (H, W)."""
    teacher = make_model("timm", "swin_tiny_patch4_window7_224", img_size=64, window_size=4, num_classes=10)
    student = copy.deepcopy(teacher)
    s_taps = find_taps(student, input_size=(3, 64, 64))[:3]
    distiller = FeatureDistiller(teacher, student, input_size=(3, 64, 64), student_taps=s_taps, alpha=1e-3)
    assert [(s.stride, t.stride) for s, t in distiller.pairs] == [(4, 8), (8, 16), (16, 32)]
    assert distiller.layouts == ["nhwc"] * 3 and all(type(r) is TokenRegressor for r in distiller.regressors)
    _assert_distils(distiller, 64)
