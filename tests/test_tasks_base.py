"""What every task adapter shares: built or loaded weights survive mmengine's start-up init."""
from __future__ import annotations

import pytest
import timm
import torch

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
