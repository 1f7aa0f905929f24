"""DetectionDistiller's feature_levels ('body', 'fpn', 'body+fpn') and its FrozenBatchNorm2d teacher warning."""
import logging

import pytest
import torch

from overhaul_det.pairing import default_tap_weights
from overhaul_det.export import student_state_dict
from overhaul_det.models.detection import build_detector
from overhaul_det.taps import find_taps
from overhaul_det.tasks.detection import DetectionDistiller

SIZE = 96
NUM_CLASSES = 4
LIGHT = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50,
             rpn_post_nms_top_n_test=20, rpn_batch_size_per_image=32, box_batch_size_per_image=32)
OFD = dict(alpha=1e-3, input_size=(3, 64, 64))
LEVELS = ["levels.0", "levels.1", "levels.2", "levels.3", "levels.pool"]


def _batch():
    images = [torch.rand(3, SIZE, SIZE) for _ in range(2)]
    samples = [dict(image_id=i + 1, boxes=torch.tensor([[8.0, 10.0, 40.0, 50.0]]), labels=torch.tensor([1]))
               for i in range(2)]
    return images, samples


def _distiller(feature_levels, **kwargs):
    """A 32-channel FPN teacher with its own normalisation and a 16-channel FPN student, random init."""
    teacher = dict(name="resnet18", fpn_channels=32, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    options = dict(teacher=teacher, student=dict(name="resnet18", fpn_channels=16, **LIGHT), num_classes=NUM_CLASSES,
                   min_size=SIZE, max_size=SIZE, ofd=OFD)
    return DetectionDistiller(**{**options, **kwargs}, feature_levels=feature_levels)


@pytest.fixture(scope="module", params=["fpn", "body+fpn"])
def pyramid(request):
    torch.manual_seed(0)
    return request.param, _distiller(request.param)


def test_taps_are_the_fpn_outputs_after_the_body_stage_ends(pyramid):
    levels, model = pyramid
    distiller = model.distiller
    body = [f"backbone.body.layer{i}.1.add" for i in range(1, 5)] if levels == "body+fpn" else []
    assert [t.name for t in distiller.teacher_taps] == body + LEVELS
    assert [s.name for s in distiller.student_taps] == body + LEVELS
    assert [t.stride for t in distiller.teacher_taps[len(body):]] == [4, 8, 16, 32, 64]
    assert distiller.weights == default_tap_weights(len(body)) + [1.0] * 5
    assert [r[0].in_channels for r in distiller.regressors[len(body):]] == [16] * 5
    assert [t.channels for t in distiller.teacher_taps[len(body):]] == [32] * 5
    assert distiller.teacher.backbone is not model.student_model.backbone
    assert distiller.student.backbone is model.student_model.backbone


def test_teacher_input_keeps_the_teachers_normalisation(pyramid):
    _, model = pyramid
    images = torch.rand(2, 3, 8, 8)
    student_input = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model.teacher_input(student_input), (images - 0.5) / 0.25, atol=1e-5)


def test_a_step_trains_the_student_fpn_and_leaves_the_teacher(pyramid):
    _, model = pyramid
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    optimizer.zero_grad()
    losses = model(*_batch(), mode="loss")
    assert torch.isfinite(losses["loss_ofd"]) and losses["loss_ofd"] > 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    fpn = model.student_model.backbone.fpn
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fpn.layer_blocks.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    optimizer.step()
    after = model.teacher.state_dict()
    assert list(after) == list(teacher_before)
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)


def test_checkpoint_round_trip_is_strict_and_holds_the_student_once(pyramid):
    _, model = pyramid
    state = model.state_dict()
    assert not any(k.startswith("distiller.student.") for k in state)
    assert not any(k.startswith("distiller.teacher.") for k in state)
    assert "distiller.teacher_sha256" in state and "distiller.margin_4" in state
    model.load_state_dict(state, strict=True)
    plain = build_detector(dict(name="resnet18", fpn_channels=16, **LIGHT), num_classes=NUM_CLASSES, min_size=SIZE,
                           max_size=SIZE)
    plain.load_state_dict(student_state_dict({"state_dict": state}), strict=True)


def test_default_body_taps_and_keys_are_unchanged():
    torch.manual_seed(0)
    model = _distiller("body")
    assert model.feature_levels == "body"
    distiller = model.distiller
    assert distiller.teacher is not model.student_model.backbone.body
    assert distiller.student is model.student_model.backbone.body
    expected = [t.name for t in find_taps(distiller.teacher, input_size=OFD["input_size"])]
    assert [t.name for t in distiller.teacher_taps] == expected == [f"layer{i}.1.add" for i in range(1, 5)]
    assert distiller.weights == default_tap_weights(4)
    state = model.state_dict()
    assert "distiller.teacher_sha256" in state and not any(k.startswith("distiller.student.") for k in state)
    model.load_state_dict(state, strict=True)


def test_fpn_levels_refuse_a_teacher_without_a_trained_fpn():
    body = build_detector("resnet18", num_classes=NUM_CLASSES).backbone.body
    with pytest.raises(ValueError, match=r"feature_levels='fpn'.*not a detector.*teacher=dict\(name=.*checkpoint"):
        _distiller("fpn", teacher=body)
    with pytest.raises(ValueError, match="only backbone_checkpoint.*model.teacher.checkpoint=PATH"):
        _distiller("body+fpn", teacher=dict(name="resnet18", backbone_checkpoint="classifier.pth"))
    with pytest.raises(ValueError, match=r"model.feature_levels='neck'.*'body', 'fpn', 'body\+fpn'"):
        _distiller("neck")
    with pytest.raises(ValueError, match="model.ofd.teacher_taps"):
        _distiller("fpn", ofd=dict(OFD, teacher_taps=["levels.0"]))


def test_frozen_batchnorm_teacher_warns_once_that_teacher_bn_train_cannot_act(caplog):
    teacher = build_detector(dict(name="resnet18", frozen_bn=True, fpn_channels=16), num_classes=NUM_CLASSES)
    with caplog.at_level(logging.WARNING, logger="overhaul_det.tasks.detection"):
        _distiller("body", teacher=teacher)
    warnings = [r.getMessage() for r in caplog.records if r.name == "overhaul_det.tasks.detection"]
    assert len(warnings) == 1
    assert "20 FrozenBatchNorm2d layer(s) (bn1, layer1.0.bn1, layer1.0.bn2 and 17 more)" in warnings[0]
    assert all(text in warnings[0] for text in ("stored statistics", "teacher_bn='eval'", "frozen_bn=False"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="overhaul_det.tasks.detection"):
        _distiller("body", teacher=teacher, ofd=dict(OFD, teacher_bn="eval"))
    assert not [r for r in caplog.records if r.name == "overhaul_det.tasks.detection"]
