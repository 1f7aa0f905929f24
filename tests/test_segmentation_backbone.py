"""A segmenter's backbone from a classifier's weights (backbone_checkpoint), and the configs that use it."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from overhaul_det.training import load_config
from overhaul_det.models.classifiers import build_classifier
from overhaul_det.models.segmentation import build_segmenter
from overhaul_det.registry import MODELS

REPO = Path(__file__).parents[1]
PRETRAIN_CONFIG = REPO / "configs/classification/pretrain_mobilenetv2_050_fashionmnist.py"
STUDENT_CONFIG = REPO / "configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py"
TEACHER_CONFIG = REPO / "configs/segmentation/teacher_deeplabv3plus_resnet18_fashion_scenes.py"


def _save(state: dict, path: Path) -> Path:
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def _classifier_file(tmp_path: Path, name: str = "mobilenetv2_050", prefix: str = "") -> tuple:
    torch.manual_seed(3)
    classifier = timm.create_model(name, num_classes=10)
    state = {prefix + key: value for key, value in classifier.state_dict().items()}
    return classifier.state_dict(), _save(state, tmp_path / f"{name}.safetensors")


def _assert_body_equals(body: torch.nn.Module, state: dict) -> None:
    own = body.state_dict()
    assert own and all(torch.equal(value, state[key]) for key, value in own.items())


@pytest.mark.parametrize("output_stride", [32, 16])
def test_a_classifiers_weights_load_into_the_body_and_the_head_is_skipped(tmp_path, caplog, output_stride):
    state, path = _classifier_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="overhaul_det.models.segmentation"):
        model = build_segmenter("timm/mobilenetv2_050", 11, output_stride=output_stride, channels=16,
                                backbone_checkpoint=str(path))
    _assert_body_equals(model.backbone, state)
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0]
    skipped = lines[0].rpartition(": ")[2].split(", ")
    assert sorted(skipped) == sorted(key for key in state if key.split(".")[0] in ("conv_head", "bn2", "classifier"))


def test_the_prefix_is_stripped(tmp_path):
    state, path = _classifier_file(tmp_path, prefix="student_model.")
    model = build_segmenter("timm/mobilenetv2_050", 3, channels=16, backbone_checkpoint=str(path),
                            backbone_checkpoint_prefix="student_model.")
    _assert_body_equals(model.backbone, state)


@pytest.mark.parametrize("backbone, output_stride", [("resnet18", 32), ("timm/resnet18", 16)])
def test_a_torchvision_resnet18_classifier_loads_into_either_zoos_body(tmp_path, backbone, output_stride):
    """The long teacher's case: torchvision's and timm's ResNet-18 share their state_dict keys."""
    classifier = torchvision.models.resnet18(num_classes=10)
    path = _save(classifier.state_dict(), tmp_path / "resnet18.safetensors")
    model = build_segmenter(backbone, 3, output_stride=output_stride, channels=16, backbone_checkpoint=str(path))
    _assert_body_equals(model.backbone, classifier.state_dict())


def test_another_width_is_refused_naming_the_file_and_key(tmp_path):
    _, path = _classifier_file(tmp_path, "mobilenetv2_100")
    with pytest.raises(ValueError, match=rf"backbone checkpoint {path} does not fit the backbone timm/mobilenetv2_050: "
                                         r"\d+ have other shapes \(e\.g\. conv_stem\.weight: \(32, 3, 3, 3\) "
                                         r"in the file, \(16, 3, 3, 3\) in the backbone\); give the classifier weights"):
        build_segmenter("timm/mobilenetv2_050", 3, channels=16, backbone_checkpoint=str(path))


def test_another_architecture_is_refused_naming_the_file_and_key(tmp_path):
    path = _save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.safetensors")
    with pytest.raises(ValueError, match=rf"backbone checkpoint {path} does not fit the backbone timm/mobilenetv2_050: "
                                         r"\d+ of its tensors are not in the file \(e\.g\. conv_stem\.weight\) and \d+ have "
                                         r"other shapes \(e\.g\. bn1\.weight: \(64,\) in the file, \(16,\) in the backbone\); "
                                         r".*backbone_checkpoint_prefix"):
        build_segmenter("timm/mobilenetv2_050", 3, channels=16, backbone_checkpoint=str(path))


def test_a_missing_prefix_is_refused(tmp_path):
    _, path = _classifier_file(tmp_path, prefix="student_model.")
    with pytest.raises(ValueError, match=r"are not in the file .* set backbone_checkpoint_prefix"):
        build_segmenter("timm/mobilenetv2_050", 3, channels=16, backbone_checkpoint=str(path))


def test_pretrained_backbone_and_a_backbone_checkpoint_are_not_both_taken(tmp_path):
    _, path = _classifier_file(tmp_path)
    with pytest.raises(ValueError, match="set only one"):
        build_segmenter("timm/mobilenetv2_050", 3, backbone_checkpoint=str(path), pretrained_backbone=True)


def test_the_pretrain_configs_classifier_exports_into_the_pretrained_students_backbone(tmp_path, monkeypatch):
    """The chain the configs name: the Fashion-MNIST classifier's state_dict (as export writes it) is the
    segmentation student's backbone_checkpoint; the teacher builds as its config says (body from the shipped detector)."""
    pretrain = load_config(str(PRETRAIN_CONFIG))
    assert pretrain.model.student.name == "timm/mobilenetv2_050" and pretrain.model.teacher is None
    classifier = build_classifier(**pretrain.model.student, num_classes=pretrain.model.num_classes)
    path = _save(classifier.state_dict(), tmp_path / "fashionmnist_mobilenetv2_050.safetensors")

    cfg = load_config(str(STUDENT_CONFIG))
    assert cfg.model.student.backbone_checkpoint == "checkpoints/fashionmnist_mobilenetv2_050.safetensors"
    teacher = load_config(str(TEACHER_CONFIG))
    assert cfg.model.teacher.checkpoint == "checkpoints/fashion_scenes_deeplabv3plus_resnet18_teacher.safetensors"
    weight_keys = ("checkpoint", "backbone_checkpoint", "backbone_checkpoint_prefix")
    assert {k: v for k, v in cfg.model.teacher.items() if k not in weight_keys} == {
        k: v for k, v in teacher.model.student.items() if k not in weight_keys}
    classifier_norm = [[round(v / 255, 3) for v in pretrain.model.data_preprocessor[k]] for k in ("mean", "std")]
    for seg in (cfg, teacher):  # the scenes reach both networks normalised as the classifier's images were, once
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            assert [seg[key].dataset.mean, seg[key].dataset.std] == classifier_norm
        assert "mean" not in seg.model.data_preprocessor and "std" not in seg.model.data_preprocessor
    cfg.model.student.backbone_checkpoint = str(path)
    cfg.model.teacher = teacher.model.student
    monkeypatch.chdir(REPO)
    model = MODELS.build(cfg.model)
    _assert_body_equals(model.student.backbone, classifier.state_dict())
    assert len(model.distiller.pairs) == 6
