"""The teacher's precision and memory format: the rule per device, and a loss that stays within tolerance."""
from __future__ import annotations

import pytest
import torch

import overhaul_det.cpuinfo
from overhaul_det import FeatureDistiller
from overhaul_det import teacher_mode
from overhaul_det.teacher_mode import cpu_has_native_bf16, resolve_teacher_mode

from conftest import assert_same_state, snapshot_state

SIZE = (3, 64, 64)
# Measured on resnet18 -> mobilenet_v3_large at 64 px with random BN affines, batch 8: the
# bfloat16 teacher's loss differs from the float32 teacher's by 0.26%.
BFLOAT16_LOSS_TOLERANCE = 0.02


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_bfloat16_only_where_the_cpu_runs_it_natively(make_model, monkeypatch, native, expected):
    monkeypatch.setattr(teacher_mode, "cpu_has_native_bf16", lambda: native)
    dtype, channels_last = resolve_teacher_mode("auto", "auto", torch.device("cpu"), make_model("tv", "resnet18"))
    assert dtype == expected and channels_last == native  # channels-last for a conv net in reduced precision


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float32), ((8, 0), torch.bfloat16),
                                                   ((9, 0), torch.bfloat16)])
def test_auto_on_cuda_is_bfloat16_only_where_the_model_s_gpu_has_it_natively(make_model, monkeypatch, capability,
                                                                          expected):
    """A pre-Ampere GPU (which emulates bfloat16, and says it supports it) keeps the teacher in float32; the
    capability asked for is the model's device, not the current one."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    device = torch.device("cuda", 1)
    dtype, channels_last = resolve_teacher_mode("auto", "auto", device, make_model("tv", "resnet18"))
    assert (dtype, channels_last) == (expected, expected == torch.bfloat16)
    assert asked == [device]


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(overhaul_det.cpuinfo, "CPUINFO", cpuinfo)
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True),
                            ("fpu avx512f avx2", False)):
        cpuinfo.write_text(f"processor : 0\nflags\t\t: {flags}\n")
        cpu_has_native_bf16.cache_clear()
        assert cpu_has_native_bf16() is expected  # the module's own function (conftest pins the one 'auto' reads)
    cpu_has_native_bf16.cache_clear()


def test_explicit_choices_and_bad_values(make_model):
    model = make_model("tv", "resnet18")
    assert resolve_teacher_mode("float16", False, torch.device("cpu"), model) == (torch.float16, False)
    with pytest.raises(ValueError, match="teacher_precision='bf16'; choose one of"):
        resolve_teacher_mode("bf16", "auto", torch.device("cpu"), model)
    with pytest.raises(ValueError, match="teacher_channels_last='yes'"):
        resolve_teacher_mode("auto", "yes", torch.device("cpu"), model)


def _loss(make_model, randomized, precision, channels_last="auto"):
    torch.manual_seed(0)
    teacher = randomized(make_model("tv", "resnet18"))
    before = snapshot_state(teacher)
    distiller = FeatureDistiller(teacher, make_model("tv", "mobilenet_v3_large"), input_size=SIZE,
                                 teacher_precision=precision, teacher_channels_last=channels_last).train()
    x = torch.randn(8, *SIZE, generator=torch.Generator().manual_seed(1))
    features = distiller.teacher_features(x)
    _, losses = distiller(x)
    assert_same_state(teacher, before)  # the teacher comes out unchanged, whatever its precision
    return float(losses["loss_ofd"].detach()), features


def test_bfloat16_teacher_loss_within_tolerance(make_model, randomized):
    reference, _ = _loss(make_model, randomized, "float32")
    reduced, features = _loss(make_model, randomized, "bfloat16", True)
    assert all(f.dtype == torch.bfloat16 for f in features)  # handed on as computed: the loss converts them once
    assert abs(reduced - reference) / reference < BFLOAT16_LOSS_TOLERANCE
    assert reduced != reference  # the teacher really ran in bfloat16


def test_the_distiller_says_how_its_teacher_ran(make_model, caplog):
    distiller = FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large"), input_size=SIZE,
                                 teacher_precision="bfloat16")
    assert distiller.teacher_runs_in == {}
    with caplog.at_level("INFO", logger="overhaul_det.distiller"):
        distiller.teacher_features(torch.randn(2, *SIZE))
    assert distiller.teacher_runs_in == {"cpu": "bfloat16, channels-last"}
    assert "teacher ResNet on cpu runs in bfloat16, channels-last (teacher_precision='bfloat16')" in caplog.text


def test_auto_leaves_a_float64_teacher_as_it_is(make_model, monkeypatch):
    monkeypatch.setattr(teacher_mode, "cpu_has_native_bf16", lambda: True)
    teacher = make_model("tv", "resnet18").double()
    assert resolve_teacher_mode("auto", "auto", torch.device("cpu"), teacher) == (torch.float32, False)


def _trained_student(make_model, randomized, precision, steps=3):
    teacher, student = make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large")
    torch.manual_seed(0)
    distiller = FeatureDistiller(randomized(teacher), student, input_size=SIZE, teacher_precision=precision).train()
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    batches = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, labels = torch.randn(4, *SIZE, generator=batches), torch.randint(0, 1000, (4,), generator=batches)
        logits, losses = distiller(x)
        optimizer.zero_grad()
        (torch.nn.functional.cross_entropy(logits, labels) + losses["loss_ofd"]).backward()
        optimizer.step()
    return distiller


def test_an_explicit_float32_teacher_trains_what_auto_trains_without_native_bfloat16(make_model, randomized):
    """'auto' on a CPU without bfloat16 arithmetic (conftest) and an explicit 'float32' are one computation:
    `reproduce --teacher-precision float32` trains what the tables' float32 'auto' runs trained."""
    auto = _trained_student(make_model, randomized, "auto")
    explicit = _trained_student(make_model, randomized, "float32")
    assert auto.teacher_runs_in == explicit.teacher_runs_in == {"cpu": "float32"}
    assert_same_state(explicit.student, snapshot_state(auto.student))
    assert_same_state(explicit, snapshot_state(auto))  # the regressors too
    assert not torch.equal(auto.student.state_dict()["features.0.0.weight"],
                           make_model("tv", "mobilenet_v3_large").state_dict()["features.0.0.weight"])  # it trained
