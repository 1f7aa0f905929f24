"""Module-output taps, the fallback for models FX cannot trace or where it finds < 3 stage ends."""
import timm
import torch
from torch import nn

import overhaul_det as od
from overhaul_det.report import taps_table
from overhaul_det.taps import ModuleTapRunner, TraceFailure, module_taps


class Untraceable(nn.Module):
    """Three conv-BN stages behind a data-dependent branch (FX cannot trace it), listed in a
    timm-style ``feature_info``, and a head after them."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in ((3, 8), (8, 16), (16, 32))])
        self.head = nn.Linear(32, 5)
        self.feature_info = [dict(module=f"stages.{i}", num_chs=c, reduction=2 ** (i + 1))
                             for i, c in enumerate((8, 16, 32))]

    def forward(self, x):
        if x.sum() > float("inf"):
            x = -x
        return self.head(self.stages(x).mean((2, 3)))


def _dinov3():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_dinov3_qkvb")


def test_untraceable_model_gets_module_taps():
    taps = od.find_taps(Untraceable(), input_size=(3, 32, 32), min_stride=2)
    assert [(t.name, t.stride, t.channels, t.source) for t in taps] == [
        ("stages.0", 2, 8, "module"), ("stages.1", 4, 16, "module"), ("stages.2", 8, 32, "module")]
    assert all(t.norm is None and t.activation is None for t in taps)


def test_untraceable_model_without_feature_info_still_refused():
    model = Untraceable()
    del model.feature_info
    try:
        od.find_taps(model, input_size=(3, 32, 32), min_stride=2)
    except TraceFailure as error:
        assert "cannot trace Untraceable" in str(error)
    else:
        raise AssertionError("an untraceable model without feature_info must be refused")


def test_runner_stops_after_last_tap_and_uses_batch_statistics():
    model = Untraceable().eval()
    with torch.no_grad():
        for bn in (model.stages[0][1], model.stages[1][1]):
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    taps = [t for t in od.find_taps(model, input_size=(3, 32, 32), min_stride=2) if t.stride <= 4]
    head_calls = []
    model.stages[2].register_forward_hook(lambda *args: head_calls.append(1))
    x = torch.randn(4, 3, 32, 32)
    features = ModuleTapRunner(model, taps, batch_stats=True)(x)
    assert not head_calls, "the forward must stop after the last tap's module"
    conv, bn = model.stages[0][0], model.stages[0][1]
    expected = torch.relu(nn.functional.batch_norm(conv(x), None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
    torch.testing.assert_close(features["stages.0"], expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    eval_features = ModuleTapRunner(model, taps, batch_stats=False)(x)
    torch.testing.assert_close(eval_features["stages.0"], model.stages[0](x))


def test_eva_falls_back_to_evenly_spaced_blocks():
    taps = od.find_taps(_dinov3(), input_size=(3, 64, 64))
    assert [t.name for t in taps] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert {(t.source, t.layout, t.stride, t.shape[1:]) for t in taps} == {("module", "tokens", 16, (21, 192))}


def test_crossvit_takes_its_first_branch_from_tuple_outputs():
    torch.manual_seed(0)
    model = timm.create_model("crossvit_tiny_240")
    taps = od.find_taps(model, input_size=(3, 240, 240))
    assert [(t.name, t.output_index, t.stride) for t in taps] == [
        ("blocks.0[0]", 0, 12), ("blocks.1[0]", 0, 12), ("blocks.2[0]", 0, 12)]


def test_attached_module_taps_capture_what_forward_intermediates_returns():
    model = _dinov3().eval()
    keys = list(model.state_dict())
    taps = od.find_taps(model, input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected_out = model(x)
        expected = model.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
        od.attach_taps(model, taps)
        with od.capture_taps(model) as captured:
            out = model(x)
    torch.testing.assert_close(out, expected_out)
    assert list(model.state_dict()) == keys
    for tap, reference in zip(taps, expected):
        grid = captured[tap.name][:, model.num_prefix_tokens:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(grid, reference)
    od.detach_taps(model)
    with od.capture_taps(od.attach_taps(model, taps[:1])) as captured:
        model(x)
    assert list(captured) == ["blocks.2"], "detach_taps must remove the earlier hooks"


def test_distils_both_ways_with_a_cnn():
    for teacher_name, student_name in (("dinov3", "resnet18"), ("resnet18", "dinov3")):
        build = {"dinov3": _dinov3, "resnet18": lambda: timm.create_model("resnet18")}
        teacher, student = build[teacher_name](), build[student_name]()
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        distiller = od.FeatureDistiller(teacher, student, input_size=(3, 64, 64))
        _, losses = distiller(torch.randn(2, 3, 64, 64))
        losses["loss_ofd"].backward()
        assert torch.isfinite(losses["loss_ofd"]) and losses["loss_ofd"] > 0
        assert student.patch_embed.proj.weight.grad.abs().sum() > 0 if student_name == "dinov3" \
            else student.conv1.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in distiller.regressors.parameters())
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_module_taps_need_feature_info():
    assert module_taps(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 16, 16)) == []


def test_taps_table_names_the_source():
    model = Untraceable()
    table = taps_table(model, od.find_taps(model, input_size=(3, 32, 32), min_stride=2))
    assert table.splitlines()[0].split()[:2] == ["node", "source"]
    assert table.splitlines()[2].split()[:3] == ["stages.0", "module", "output"]


def test_untraceable_model_takes_taps_by_module_name():
    model = Untraceable()
    taps = od.find_taps(model, input_size=(3, 32, 32), nodes=["stages.2", "stages.1"])
    assert [(t.name, t.stride, t.source) for t in taps] == [("stages.2", 8, "module"), ("stages.1", 4, "module")]
    for bad, message in (("stages.7", "has no module 'stages.7'"), ("head", "not a feature map")):
        try:
            od.find_taps(model, input_size=(3, 32, 32), nodes=[bad])
        except ValueError as error:
            assert message in str(error)
        else:
            raise AssertionError(f"tap {bad!r} must be refused")
