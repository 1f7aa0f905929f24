"""What every task adapter shares: built or loaded weights survive mmengine's start-up init; a teacher
without weights is warned about; eval mode computes no OFD term; a misspelt spec key is named."""
from __future__ import annotations

import logging

import pytest
import timm
import torch

from overhaul_det.registry import MODELS
from overhaul_det.tasks.classification import ClassificationDistiller
from overhaul_det.tasks.detection import DetectionDistiller
from overhaul_det.tasks.segmentation import SegmentationDistiller

from conftest import assert_same_state, snapshot_state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """timm classifiers whose own ``init_weights`` would re-draw them, saved as files."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in ("resnet18d", "resnet10t"):
        torch.manual_seed(1)
        model = timm.create_model(name, num_classes=10)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)  # nothing an initialiser would produce
        paths[name] = folder / f"{name}.pth"
        torch.save(model.state_dict(), paths[name])
    return paths


@pytest.mark.parametrize("alpha, kd_weight", [(0.0, 1.0), (0.0, 0.0), (1e-2, 0.0)])
def test_classification_runner_init_keeps_loaded_weights(checkpoints, alpha, kd_weight):
    model = ClassificationDistiller(
        teacher=dict(name="resnet18d", checkpoint=str(checkpoints["resnet18d"])),
        student=dict(name="resnet10t", checkpoint=str(checkpoints["resnet10t"])),
        num_classes=10, ofd=dict(alpha=alpha, input_size=(3, 64, 64)), kd_weight=kd_weight)
    before = snapshot_state(model)
    model.init_weights()  # what mmengine's Runner calls before training
    assert_same_state(model, before)
    expected = torch.load(checkpoints["resnet18d"], weights_only=True)
    assert torch.equal(model.teacher.conv1[0].weight, expected["conv1.0.weight"])


def test_detection_and_segmentation_runner_init_keep_weights():
    detector = DetectionDistiller(teacher=dict(name="resnet18d"), student=dict(name="resnet10t", fpn_channels=32),
                                  num_classes=3, min_size=64, max_size=64, ofd=dict(alpha=0.0))
    segmenter = SegmentationDistiller(teacher=dict(backbone="resnet18d", channels=32),
                                      student=dict(backbone="resnet10t", channels=32), num_classes=3,
                                      ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))
    for model in (detector, segmenter):
        before = snapshot_state(model)
        model.init_weights()
        assert_same_state(model, before)



# ---------------------------------------------------------------------------------------------
# A teacher without weights


def _classification(teacher):
    return ClassificationDistiller(teacher=teacher, student=dict(name="timm/resnet10t"), num_classes=10,
                                   ofd=dict(alpha=0.0), kd_weight=1.0)


def _detection(teacher):
    return DetectionDistiller(teacher=teacher, student=dict(name="timm/resnet10t", fpn_channels=32), num_classes=3,
                              min_size=64, max_size=64, ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


def _segmentation(teacher):
    return SegmentationDistiller(teacher=teacher, student=dict(backbone="timm/resnet10t", channels=32), num_classes=3,
                                 ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


def _random_teacher_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "RANDOMLY INITIALISED" in r.getMessage()]


@pytest.mark.parametrize("build, key, weights", [
    (_classification, "name", lambda path: dict(checkpoint=path)),
    (_detection, "name", lambda path: dict(backbone_checkpoint=path)),
    (_segmentation, "backbone", lambda path: dict(pretrained_backbone=True, pretrained_cfg_overlay=dict(file=path))),
], ids=["classification", "detection", "segmentation"])
def test_a_teacher_spec_without_weights_warns_once(build, key, weights, checkpoints, caplog):
    with caplog.at_level(logging.WARNING):
        build({key: "timm/resnet18d"})
    (message,) = _random_teacher_warnings(caplog)
    assert f"model.teacher ({key}='timm/resnet18d') has no weights" in message
    assert "model.teacher.checkpoint=PATH" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build({key: "timm/resnet18d", **weights(str(checkpoints["resnet18d"]))})
    assert _random_teacher_warnings(caplog) == []


def test_a_teacher_module_is_taken_as_it_is(caplog):
    with caplog.at_level(logging.WARNING):
        _classification(timm.create_model("resnet18d", num_classes=10))
    assert _random_teacher_warnings(caplog) == []


# ---------------------------------------------------------------------------------------------
# Eval mode: no OFD term


@pytest.fixture(scope="module")
def ofd_models():
    torch.manual_seed(0)
    classifier = ClassificationDistiller(teacher=dict(name="timm/resnet18d"), student=dict(name="timm/resnet10t"),
                                         num_classes=3, ofd=dict(alpha=1e-2, input_size=(3, 32, 32)))
    return dict(classification=(classifier, dict(inputs=torch.randn(2, 3, 32, 32), data_samples=[0, 2])),
                segmentation=(_segmentation(dict(backbone="timm/resnet18d", channels=32)),
                              dict(inputs=[torch.randn(3, 64, 64) for _ in range(2)],
                                   data_samples=[dict(gt_seg=torch.randint(0, 3, (64, 64))) for _ in range(2)])))


def _count_teacher_calls(model):
    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in model.teacher.modules()]
    return calls, handles


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_eval_mode_runs_no_teacher_and_returns_no_ofd_loss(ofd_models, task):
    model, batch = ofd_models[task]
    calls, handles = _count_teacher_calls(model)
    try:
        model.eval()
        losses = model(**model.data_preprocessor(batch, False), mode="loss")
        model.val_step(batch)
        assert "loss_ofd" not in losses and losses and calls == []
        model.train()
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
        assert "loss_ofd" in losses and calls
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# A misspelt key in a model spec


@pytest.mark.parametrize("build, message", [
    (lambda: MODELS.build(dict(type="ClassificationDistiller", teacher=dict(name="resnet18", checkpiont="t.pth"),
                               student=dict(name="timm/resnet10t"), num_classes=3, ofd=dict(alpha=0.0))),
     r"model\.teacher\.checkpiont: unknown key \(.*checkpiont.*\); did you mean model\.teacher\.checkpoint\? "
     r"build_classifier takes name, num_classes, pretrained, checkpoint, checkpoint_prefix"),
    (lambda: SegmentationDistiller(teacher=None, student=dict(backbone="timm/resnet10t", chanels=16), num_classes=3,
                                   ofd=dict(alpha=0.0)),
     r"model\.student\.chanels: .*did you mean model\.student\.channels\?"),
    (lambda: DetectionDistiller(teacher=None, student=dict(name="resnet18", fpn_chanels=32), num_classes=3,
                                ofd=dict(alpha=0.0)),
     r"model\.student\.fpn_chanels: .*did you mean model\.student\.fpn_channels\?"),
], ids=["classification", "segmentation", "detection"])
def test_a_misspelt_spec_key_is_named_with_the_nearest_valid_one(build, message):
    with pytest.raises(TypeError, match=message):
        build()
