"""Tap discovery in FX graphs, and capture that leaves the model's outputs and parameters alone."""
from __future__ import annotations

import copy
import dataclasses
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overhaul_det import (FeatureDistiller, TapExtractor, attach_taps, capture_taps, detach_taps, find_taps,
                          graph_node_names)
from overhaul_det.taps import SampleRunError, check_input_size, qualified_name, trace

from conftest import assert_same_state, snapshot_state

SIZE = (3, 64, 64)

MODELS = [
    ("tv", "resnet18"), ("tv", "resnet50"), ("tv", "wide_resnet50_2"), ("tv", "resnext50_32x4d"),
    ("tv", "mobilenet_v2"), ("tv", "mobilenet_v3_large"), ("tv", "regnet_y_400mf"),
    ("tv", "efficientnet_b0"), ("tv", "convnext_tiny"),
    ("timm", "resnet18"), ("timm", "resnet50"), ("timm", "resnet50d"), ("timm", "mobilenetv3_large_100"),
    ("timm", "efficientnet_b0"), ("timm", "regnety_008"), ("timm", "convnext_nano"),
]
CONVNEXT = {("tv", "convnext_tiny"), ("timm", "convnext_nano")}
# linear-bottleneck nets: the tap is the pre-activation BN output of the next stage's expansion
LINEAR_BOTTLENECK = [("tv", "mobilenet_v2"), ("tv", "mobilenet_v3_large"), ("tv", "efficientnet_b0"),
                     ("timm", "mobilenetv3_large_100"), ("timm", "efficientnet_b0")]


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *SIZE)


def _nodes(model: nn.Module):
    return {qualified_name(n): n for n in trace(model).nodes}


# ---------------------------------------------------------------------------------------------
# find_taps


@pytest.mark.parametrize("source,name", MODELS, ids=[f"{s}-{n}" for s, n in MODELS])
def test_find_taps_four_stages(make_model, source, name):
    model = make_model(source, name)
    taps = find_taps(model, input_size=SIZE)
    assert [t.stride for t in taps] == [4, 8, 16, 32]
    for tap, size in zip(taps, (16, 8, 4, 2)):
        assert len(tap.shape) == 4 and tap.shape[1] == tap.channels and tap.shape[2:] == (size, size)
    if (source, name) in CONVNEXT:
        assert all(t.norm is None and t.activation is None for t in taps)
    else:
        # every other listed net ends its stages (or feeds the next expansion) in BN -> activation
        assert all(t.norm is not None and t.activation is not None for t in taps)
        for tap in taps:
            assert isinstance(model.get_submodule(tap.norm), nn.modules.batchnorm._BatchNorm)


def test_find_taps_timm_features_only(make_model):
    model = make_model("timm", "resnet18", features_only=True)
    taps = find_taps(model, input_size=SIZE)
    assert [t.stride for t in taps] == [4, 8, 16, 32]
    assert [t.channels for t in taps] == [64, 128, 256, 512]
    assert [t.norm for t in taps] == [f"layer{i}.1.bn2" for i in range(1, 5)]


def test_find_taps_torchvision_resnet50_exact(make_model):
    model = make_model("tv", "resnet50")
    taps = find_taps(model, input_size=SIZE)
    nodes = _nodes(model)
    blocks = ["layer1.2", "layer2.3", "layer3.5", "layer4.2"]
    assert [t.module for t in taps] == blocks
    assert [t.channels for t in taps] == [256, 512, 1024, 2048]
    assert [t.norm for t in taps] == [f"{b}.bn3" for b in blocks]
    assert [t.activation for t in taps] == ["ReLU"] * 4
    for tap in taps:
        node = nodes[tap.name]
        assert node.op == "call_function" and node.target in (operator.add, operator.iadd)
        assert node.meta["module_path"] == tap.module


def test_find_taps_mobilenet_v2_official_positions(make_model):
    model = make_model("tv", "mobilenet_v2")
    taps = find_taps(model, input_size=SIZE)
    # expansion 1x1 conv + BN of the first block of the next stage, and the last conv + BN
    assert [t.norm for t in taps] == ["features.4.conv.0.1", "features.7.conv.0.1",
                                      "features.14.conv.0.1", "features.18.1"]
    assert [t.channels for t in taps] == [144, 192, 576, 1280]
    assert [t.activation for t in taps] == ["ReLU6"] * 4
    for tap in taps:
        block = model.get_submodule(tap.norm.rsplit(".", 1)[0])
        assert block[0].kernel_size == (1, 1) and isinstance(block[2], nn.ReLU6)


def _eval_bn_output(model: nn.Module, norm: str, x: torch.Tensor) -> torch.Tensor:
    """The affine BN output (before any activation) of ``norm``, recomputed from its input."""
    bn = model.get_submodule(norm)
    seen = {}
    handle = bn.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return F.batch_norm(seen["x"], bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("source,name", LINEAR_BOTTLENECK, ids=[f"{s}-{n}" for s, n in LINEAR_BOTTLENECK])
def test_linear_bottleneck_taps_are_pre_activation_bn_outputs(make_model, randomized, source, name):
    model = randomized(make_model(source, name))
    taps = find_taps(model, input_size=SIZE)
    x = _x()
    plain = copy.deepcopy(model)
    attach_taps(model, taps)
    with torch.no_grad(), capture_taps(model) as feats:
        model(x)
        for tap in taps:
            expected = _eval_bn_output(plain, tap.norm, x)
            torch.testing.assert_close(feats[tap.name], expected, rtol=1e-5, atol=1e-5)
            assert feats[tap.name].min() < 0, f"{tap.name} lost its negative half"


def test_find_taps_unknown_node_names_the_closest(make_model):
    model = make_model("tv", "resnet18")
    with pytest.raises(ValueError) as info:
        find_taps(model, input_size=SIZE, nodes=["layer1.1.add", "layer9.0.add", "layer2.1.bn_2"])
    message = str(info.value)
    assert "layer9.0.add" in message and "ResNet" in message and "graph_node_names" in message
    assert "'layer2.1.bn_2' (closest: layer2.1.bn2" in message
    assert len(message) < 600, "the error lists the closest names, not the whole graph"


def test_node_names_are_torchvision_qualified_names(make_model):
    from torchvision.models.feature_extraction import get_graph_node_names

    model = make_model("tv", "resnet50")
    ours, theirs = graph_node_names(model), get_graph_node_names(model)
    for mode in (0, 1):
        assert ours[mode] == [name for name in theirs[mode] if name != "x"]
    assert [t.name for t in find_taps(model, input_size=SIZE)] == [
        "layer1.2.add", "layer2.3.add", "layer3.5.add", "layer4.2.add"]


class _ExtraStemOp(nn.Module):
    """resnet18 with one more add in its stem: FX's global names (add_3, ...) of every later add shift."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(x)))) + 1.0
        x = body.layer4(body.layer3(body.layer2(body.layer1(x))))
        return body.fc(torch.flatten(body.avgpool(x), 1))


def test_tap_names_do_not_shift_when_an_op_is_added_upstream(make_model):
    plain = make_model("tv", "resnet18")
    wrapped = _ExtraStemOp(plain)
    assert [t.name.removeprefix("body.") for t in find_taps(wrapped, input_size=SIZE)] == \
        [t.name for t in find_taps(plain, input_size=SIZE)]
    fx_names = {qualified_name(n): n.name for n in trace(plain).nodes}
    wrapped_fx_names = {qualified_name(n).removeprefix("body."): n.name for n in trace(wrapped).nodes}
    assert fx_names["layer2.1.add"] != wrapped_fx_names["layer2.1.add"]  # what raw FX names would have done


def test_train_only_node_is_refused_by_name(make_model):
    class TrainNoise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            x = self.bn(self.conv(x))
            if self.training:
                x = x + 0.1
            return torch.relu(x)

    train_names, eval_names = graph_node_names(TrainNoise())
    assert "add" in train_names and "add" not in eval_names
    taps = find_taps(TrainNoise(), input_size=(3, 16, 16), nodes=["bn"])
    attach_taps(TrainNoise(), taps)
    with pytest.raises(ValueError, match="not in the eval-mode graph"):
        TapExtractor(TrainNoise(), [dataclasses.replace(taps[0], name="add")])


@pytest.mark.parametrize("side", [8, 16])
def test_find_taps_refuses_inputs_that_collapse_stages(make_model, side):
    with pytest.raises(ValueError, match=rf"input size {side} px is smaller than the deepest stage stride \(32\) "
                                         r"of ResNet.*at least 32x32"):
        find_taps(make_model("tv", "resnet50"), input_size=(3, side, side))
    assert [t.stride for t in find_taps(make_model("tv", "resnet50"), input_size=(3, 32, 32))] == [4, 8, 16, 32]


def test_check_input_size_names_the_model_and_the_fix_it_is_given(make_model):
    model = make_model("tv", "resnet50")
    with pytest.raises(ValueError, match=r"input size 16 px is smaller than the deepest stage stride \(32\) of the body: "
                                         r".*at least 32x32 \(the crop\)$"):
        check_input_size(model, (3, 16, 16), what="the body", fix="the crop")
    check_input_size(model, (32, 32), graph=trace(model))


def test_model_that_cannot_run_at_the_size_gets_one_short_error(make_model, capfd):
    with pytest.raises(SampleRunError) as info:
        find_taps(make_model("timm", "vit_tiny_patch16_224"), input_size=(3, 128, 128))
    message = str(info.value)
    assert message.startswith("VisionTransformer does not run on a sample of shape (2, 3, 128, 128): AssertionError: ")
    assert "--input-size" in message and "\n" not in message and "ShapeProp" not in message
    assert capfd.readouterr().err == ""


def test_find_taps_explicit_nodes(make_model):
    model = make_model("tv", "resnet18")
    taps = find_taps(model, input_size=SIZE, nodes=["layer2.1.add", "layer1.0.bn1"])
    assert [t.name for t in taps] == ["layer2.1.add", "layer1.0.bn1"]
    assert [(t.channels, t.stride) for t in taps] == [(128, 8), (64, 4)]
    assert taps[0].norm == "layer2.1.bn2" and taps[1].norm == "layer1.0.bn1"
    assert taps[0].activation == "ReLU"


def test_find_taps_non_feature_node_is_type_error(make_model):
    with pytest.raises(TypeError, match="fc"):
        find_taps(make_model("tv", "resnet18"), input_size=SIZE, nodes=["fc"])


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


def test_untraceable_model_is_value_error():
    with pytest.raises(ValueError) as info:
        find_taps(DataDependent(), input_size=SIZE)
    message = str(info.value)
    assert "DataDependent" in message
    assert "tracer_kwargs={'leaf_modules': [ItsClass]}" in message


class Gate(nn.Module):
    """Data-dependent control flow FX cannot trace through."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class GatedNet(nn.Module):
    """Three stride-2 conv+BN+ReLU stages, each followed by a Gate."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), Gate())
            for c_in, c_out in ((3, 8), (8, 16), (16, 32)))

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


@pytest.mark.parametrize("leaf", [Gate, f"{__name__}.Gate"])
def test_tracer_kwargs_reach_every_entry_point(leaf):
    with pytest.raises(ValueError, match="leaf_modules"):
        find_taps(GatedNet(), input_size=(3, 32, 32), min_stride=2)
    options = {"leaf_modules": [leaf]}
    assert "stages.0.3" in graph_node_names(GatedNet(), tracer_kwargs=options)[1]  # the first Gate, one call
    taps = find_taps(GatedNet(), input_size=(3, 32, 32), min_stride=2, tracer_kwargs=options)
    assert [t.stride for t in taps] == [2, 4, 8]
    model = attach_taps(GatedNet(), taps, tracer_kwargs=options)
    with capture_taps(model) as captured:
        model(torch.randn(2, 3, 32, 32))
    assert set(captured) == {t.name for t in taps}
    distiller = FeatureDistiller(GatedNet(), GatedNet(), input_size=(3, 32, 32), min_stride=2,
                                 tracer_kwargs=options).train()
    _, losses = distiller(torch.randn(2, 3, 32, 32))
    losses["loss_ofd"].backward()
    assert distiller.student.stages[0][0].weight.grad is not None


def test_tracer_kwargs_errors_name_the_key():
    with pytest.raises(ValueError, match="leaf_module.*valid keys: leaf_modules"):
        find_taps(GatedNet(), tracer_kwargs={"leaf_module": [Gate]})
    with pytest.raises(ValueError, match="no.such.Module"):
        find_taps(GatedNet(), tracer_kwargs={"leaf_modules": ["no.such.Module"]})


# ---------------------------------------------------------------------------------------------
# Capture


def _bottleneck_pre_activation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = torch.relu(block.bn1(block.conv1(x)))
    out = torch.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    identity = block.downsample(x) if block.downsample is not None else x
    return out + identity


def _resnet50_pre_activations(model: nn.Module, x: torch.Tensor):
    """Independent computation of the four stage-end pre-activations of a torchvision ResNet-50."""
    h = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = layer[:-1](h)
        pre = _bottleneck_pre_activation(layer[-1], h)
        outs.append(pre)
        h = torch.relu(pre)
    return outs


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_capture_resnet50_equals_hand_computed_pre_activation(make_model, randomized, mode):
    model = randomized(make_model("tv", "resnet50"))
    taps = find_taps(model, input_size=SIZE)
    reference = copy.deepcopy(model)
    attach_taps(model, taps)
    model.train(mode == "train")
    reference.train(mode == "train")
    x = _x()
    with torch.no_grad():
        with capture_taps(model) as feats:
            out = model(x)
            captured = [feats[t.name].clone() for t in taps]
        expected = _resnet50_pre_activations(reference, x)
    assert len(captured) == 4
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the last block's pre-activation keeps its negative half: no in-place ReLU overwrote it
    assert captured[3].min() < 0 and expected[3].min() < 0
    assert all(c.min() < 0 for c in captured)
    assert out.shape == (2, 1000)


def test_capture_outside_context_stores_nothing(make_model):
    model = make_model("tv", "resnet18")
    taps = find_taps(model, input_size=SIZE)
    attach_taps(model, taps)
    store = model._ofd_capture
    with torch.no_grad():
        model(_x())
    assert store.features == {}
    with torch.no_grad(), capture_taps(model) as feats:
        model(_x())
        assert sorted(feats) == sorted(t.name for t in taps)
    kept = dict(feats)
    with torch.no_grad():
        model(_x())
    # the yielded dict stays readable after the context, and later forwards leave it alone
    assert feats.keys() == kept.keys() and all(feats[k] is kept[k] for k in kept)
    assert store.features == {} and not store.active


REWRITE_MODELS = [("tv", "resnet50", {}), ("tv", "mobilenet_v3_large", {}),
                  ("timm", "efficientnet_b0", {"drop_path_rate": 0.2})]


@pytest.mark.parametrize("source,name,kwargs", REWRITE_MODELS, ids=[n for _, n, _ in REWRITE_MODELS])
def test_rewritten_model_is_unchanged(make_model, randomized, source, name, kwargs):
    model = randomized(make_model(source, name, **kwargs))
    original = copy.deepcopy(model)
    keys = list(model.state_dict())
    attach_taps(model, find_taps(model, input_size=SIZE))
    assert list(model.state_dict()) == keys
    x = _x()

    model.eval()
    original.eval()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))

    # train mode: dropout / stochastic depth draw the same numbers, BN statistics evolve alike
    before_train = {k: v.clone() for k, v in original.state_dict().items()}
    model.train()
    original.train()
    for step in range(2):
        torch.manual_seed(100 + step)
        with capture_taps(model):
            out = model(x)
        torch.manual_seed(100 + step)
        expected = original(x)
        assert torch.equal(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for (k, p), (k2, q) in zip(model.named_parameters(), original.named_parameters()):
        assert k == k2 and torch.equal(p.grad, q.grad), k
    state, reference = model.state_dict(), original.state_dict()
    assert list(state) == list(reference)
    for key in reference:
        assert torch.equal(state[key], reference[key]), key
    assert any(not torch.equal(state[k], v) for k, v in before_train.items() if k.endswith("running_mean"))

    fresh = make_model(source, name, **kwargs)
    result = fresh.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_detach_taps_restores(make_model, randomized):
    model = randomized(make_model("tv", "resnet18"))
    original = copy.deepcopy(model)
    attach_taps(model, find_taps(model, input_size=SIZE))
    assert "forward" in model.__dict__
    detach_taps(model)
    assert "forward" not in model.__dict__
    assert not hasattr(model, "_ofd_capture")
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    with pytest.raises(ValueError, match="attach_taps"):
        with capture_taps(model):
            pass


# ---------------------------------------------------------------------------------------------
# TapExtractor


def _captured(model: nn.Module, taps, x: torch.Tensor, train: bool):
    """Tap tensors of a deep copy run in the given mode (the copy's BN statistics may move)."""
    clone = copy.deepcopy(model).train(train)
    attach_taps(clone, taps)
    with torch.no_grad(), capture_taps(clone) as feats:
        clone(x)
        return {k: v.clone() for k, v in feats.items()}


@pytest.mark.parametrize("source,name", [("tv", "resnet50"), ("timm", "efficientnet_b0")])
def test_tap_extractor_batch_statistics(make_model, randomized, source, name):
    model = randomized(make_model(source, name)).eval()
    taps = find_taps(model, input_size=SIZE)
    snapshot = snapshot_state(model)
    x = _x()
    extractor = TapExtractor(model, taps, batch_stats=True)
    with torch.no_grad():
        first = extractor(x)
        second = extractor(x)
    assert sorted(first) == sorted(t.name for t in taps)
    assert_same_state(model, snapshot)
    assert not model.training and "forward" not in model.__dict__

    expected = _captured(model, taps, x, train=True)
    eval_features = _captured(model, taps, x, train=False)
    for tap in taps:
        torch.testing.assert_close(first[tap.name], expected[tap.name], rtol=1e-5, atol=1e-5)
        assert torch.equal(first[tap.name], second[tap.name])
        assert not torch.allclose(first[tap.name], eval_features[tap.name], atol=1e-3)
        assert first[tap.name].min() < 0
    assert_same_state(model, snapshot)


@pytest.mark.parametrize("source,name", [("tv", "resnet50"), ("timm", "efficientnet_b0")])
def test_tap_extractor_eval_statistics(make_model, randomized, source, name):
    model = randomized(make_model(source, name)).eval()
    taps = find_taps(model, input_size=SIZE)
    snapshot = snapshot_state(model)
    x = _x()
    with torch.no_grad():
        got = TapExtractor(model, taps, batch_stats=False)(x)
    expected = _captured(model, taps, x, train=False)
    for tap in taps:
        torch.testing.assert_close(got[tap.name], expected[tap.name], rtol=1e-5, atol=1e-5)
    assert_same_state(model, snapshot)


def test_tap_extractor_frozen_bn_used_as_is(make_model, randomized):
    from torchvision.models import resnet18
    from torchvision.ops import FrozenBatchNorm2d

    model = randomized(resnet18(norm_layer=FrozenBatchNorm2d)).eval()
    taps = find_taps(model, input_size=SIZE)
    assert [t.norm for t in taps] == [f"layer{i}.1.bn2" for i in range(1, 5)]
    snapshot = snapshot_state(model)
    x = _x()
    with torch.no_grad():
        got = TapExtractor(model, taps, batch_stats=True)(x)
    expected = _captured(model, taps, x, train=False)
    for tap in taps:
        torch.testing.assert_close(got[tap.name], expected[tap.name], rtol=1e-5, atol=1e-5)
    assert_same_state(model, snapshot)


def test_capture_survives_inplace_activation_behind_identity():
    """BN -> Identity -> in-place ReLU (timm's BatchNormAct2d layout): the BN output stays intact."""

    class NormAct(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.drop = torch.nn.Identity()
            self.act = torch.nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.drop(self.bn(self.conv(x)))).view(x.shape[0], -1).relu_()

    model = NormAct().eval()
    taps = find_taps(model, input_size=(3, 32, 32), nodes=["bn"])
    attach_taps(model, taps)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), capture_taps(model) as captured:
        model(x)
        expected = model.bn(model.conv(x))
    assert torch.equal(captured["bn"], expected)
    assert (captured["bn"] < 0).any()


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_last_stage_at_1x1_is_not_the_global_pool(name):
    """At 32 px the stride-32 stage is 1x1: the tap must still be the stage end, not the pooled head."""
    import timm

    taps = find_taps(timm.create_model(name, num_classes=10), input_size=(3, 32, 32))
    assert [t.stride for t in taps] == [4, 8, 16, 32]
    assert all(t.norm is not None and t.activation is not None for t in taps)
    assert "pool" not in taps[-1].name and "head" not in taps[-1].name


def test_each_model_is_traced_once_per_mode(make_model, monkeypatch):
    counts = {}
    original = torch.fx.Tracer.trace

    def counting(self, root, *args, **kwargs):
        counts[type(root).__name__] = counts.get(type(root).__name__, 0) + 1
        return original(self, root, *args, **kwargs)

    monkeypatch.setattr(torch.fx.Tracer, "trace", counting)
    FeatureDistiller(make_model("tv", "resnet50"), make_model("tv", "mobilenet_v3_large"), input_size=SIZE)
    assert counts == {"ResNet": 1, "MobileNetV3": 2}  # teacher: eval only; student: eval and train


def test_a_changed_module_tree_is_traced_again(make_model):
    model = make_model("tv", "resnet18")
    assert "layer4.1.add" in graph_node_names(model)[1]
    model.layer4 = nn.Identity()
    assert not any(name.startswith("layer4.1") for name in graph_node_names(model)[1])


def test_a_batchnorm_the_graphs_traced_through_refuses_a_mode_or_momentum_of_its_own(make_model):
    model = make_model("timm", "mobilenetv3_large_100")  # BatchNormAct2d: traced through, its mode read at trace time
    attach_taps(model, find_taps(model, input_size=SIZE)).train()
    bn = model.blocks[1][0].bn1
    bn.eval()  # a student's BN frozen the usual way: the train graph would go on normalising with batch statistics
    with pytest.raises(RuntimeError, match=r"BatchNormAct2d blocks\.1\.0\.bn1 is in eval mode .*\(timm\.layers\."
                                           r"freeze_batch_norm_2d"):
        model(_x())
    model.train()
    bn.momentum = 0.01
    with pytest.raises(RuntimeError, match="traced through this BatchNorm with momentum 0.1"):
        model(_x())
    bn.momentum = 0.1
    model.eval()(_x())  # modes set on the whole model run


def test_a_batchnorm_module_the_graph_calls_keeps_its_own_mode(make_model):
    model = make_model("tv", "resnet18")  # nn.BatchNorm2d is a leaf: called at run time, its own mode applies
    attach_taps(model, find_taps(model, input_size=SIZE)).train()
    model.bn1.eval()
    before = model.bn1.running_mean.clone()
    model(_x())
    assert torch.equal(model.bn1.running_mean, before)  # frozen as asked


def test_a_deep_copy_checks_its_own_batchnorms(make_model):
    model = make_model("timm", "mobilenetv3_large_100")
    attach_taps(model, find_taps(model, input_size=SIZE)).train()
    twin = copy.deepcopy(model).eval()  # the original stays in train mode
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    before, twin_before = (m.get_submodule(name).running_mean.clone() for m in (model, twin))
    twin(_x())
    model(_x())
    assert torch.equal(twin.get_submodule(name).running_mean, twin_before)  # the copy ran in eval mode
    assert not torch.equal(model.get_submodule(name).running_mean, before)  # the original in train mode
