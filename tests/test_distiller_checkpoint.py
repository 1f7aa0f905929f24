"""State dicts without the frozen teacher (the distiller's, a classifier's KD teacher): dropped with its digest
kept, filled from the live teacher on load, an old state with the teacher still loading it, another teacher named."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import snapshot_state
from overhaul_det import FeatureDistiller
from overhaul_det.tasks.classification import ClassificationDistiller
from overhaul_det.distiller_checkpoint import teacher_digest

TEACHER_DIGEST = "teacher_sha256"

SIZE = (3, 32, 32)


@pytest.fixture
def models(make_model, randomized):
    """A random-init ResNet-18 teacher (random BN statistics) and a MobileNetV3-Small student."""
    return randomized(make_model("tv", "resnet18")), make_model("tv", "mobilenet_v3_small")


def _trained(teacher, student, steps: int = 2, **options) -> FeatureDistiller:
    distiller = FeatureDistiller(teacher, student, input_size=SIZE, **options).train()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        out, losses = distiller(torch.randn(2, *SIZE))
        optimizer.zero_grad()
        (F.cross_entropy(out, torch.randint(0, 1000, (2,))) + losses["loss_ofd"]).backward()
        optimizer.step()
    return distiller


def _fresh(teacher, make_model) -> FeatureDistiller:
    return FeatureDistiller(copy.deepcopy(teacher), make_model("tv", "mobilenet_v3_small"), input_size=SIZE)


def test_state_dict_holds_no_teacher_but_its_digest(models):
    teacher, student = models
    state = _trained(teacher, student).state_dict()
    assert not any(key.startswith("teacher.") for key in state)
    assert any(key.startswith("student.") for key in state) and any(key.startswith("regressors.") for key in state)
    assert "margin_0" in state and "warmup_step" in state
    assert torch.equal(state[TEACHER_DIGEST], teacher_digest(teacher.state_dict()))


@pytest.mark.parametrize("teacher_bn", ["train", "eval"])
def test_training_leaves_the_teacher_digest_unchanged(models, teacher_bn):
    teacher, student = models
    before = teacher_digest(teacher.state_dict())
    distiller = _trained(teacher, student, steps=3, teacher_bn=teacher_bn)
    assert torch.equal(distiller.state_dict()[TEACHER_DIGEST], before)


def test_a_state_without_teacher_loads_strictly_with_the_live_teacher(models, make_model, caplog):
    teacher, student = models
    trained = _trained(copy.deepcopy(teacher), student)
    state = trained.state_dict()
    loaded = _fresh(teacher, make_model)
    teacher_before = snapshot_state(loaded.teacher)
    with caplog.at_level(logging.WARNING):
        result = loaded.load_state_dict(state, strict=True)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not result.missing_keys and not result.unexpected_keys and not warnings
    assert all(torch.equal(teacher_before[k], v) for k, v in loaded.teacher.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert TEACHER_DIGEST in state  # the caller's state is left as it was given


def test_an_old_state_with_the_teacher_loads_that_teacher(models, make_model):
    teacher, student = models
    trained = _trained(copy.deepcopy(teacher), student)
    old = {**trained.state_dict(), **{f"teacher.{k}": v for k, v in trained.teacher.state_dict().items()}}
    del old[TEACHER_DIGEST]
    other_teacher = make_model("tv", "resnet18")
    loaded = FeatureDistiller(other_teacher, make_model("tv", "mobilenet_v3_small"), input_size=SIZE)
    loaded.load_state_dict(old, strict=True)
    assert all(torch.equal(v, old[f"teacher.{k}"]) for k, v in loaded.teacher.state_dict().items())


def test_another_teacher_than_the_trained_one_is_named(models, make_model, caplog):
    teacher, student = models
    state = _trained(copy.deepcopy(teacher), student).state_dict()
    other = make_model("tv", "resnet18")
    loaded = FeatureDistiller(other, make_model("tv", "mobilenet_v3_small"), input_size=SIZE)
    with caplog.at_level(logging.WARNING):
        loaded.load_state_dict(state, strict=True)
    assert "another teacher than the one model.teacher builds" in caplog.text
    assert "give model.teacher the weights file the run was trained with" in caplog.text


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_a_classifier_without_ofd_leaves_its_teacher_model_out_too(kd_weight):
    def build(seed: int) -> ClassificationDistiller:
        torch.manual_seed(seed)
        return ClassificationDistiller(teacher="resnet18", student="timm/mobilenetv3_small_050", num_classes=10,
                                       ofd=dict(alpha=0), kd_weight=kd_weight)

    state = build(0).state_dict()
    assert not any(key.startswith("teacher_model.") for key in state) and "teacher_model_sha256" in state
    assert any(key.startswith("student_model.") for key in state)
    loaded = build(0)
    result = loaded.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
