"""One zoo resolver for every builder: `timm/x`, `torchvision/x`, bare names torchvision's first,
close names from both zoos, one INFO line per name; every shipped checkpoint loads into its config's model."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file

from overhaul_det.training import load_config
from overhaul_det.models import zoo
from overhaul_det.models.classifiers import build_classifier
from overhaul_det.models.detection import build_detector, build_fpn_backbone
from overhaul_det.models.segmentation import build_segmenter
from overhaul_det.registry import MODELS

REPO = Path(__file__).parents[1]
CONFIGS = sorted(path for path in (REPO / "configs").glob("*/*.py"))
WEIGHT_FILES = ("checkpoint", "backbone_checkpoint")


@pytest.mark.parametrize("name, expected", [
    ("resnet18", ("torchvision", "resnet18")),                   # both zoos have it: torchvision's
    ("torchvision/resnet18", ("torchvision", "resnet18")),
    ("timm/resnet18", ("timm", "resnet18")),                     # the zoo prefix, not timm's hub organisation
    ("timm/resnet18.a1_in1k", ("timm", "resnet18.a1_in1k")),
    ("mobilenetv2_050", ("timm", "mobilenetv2_050")),            # only timm has it
    ("mobilenet_v3_small", ("torchvision", "mobilenet_v3_small")),
    ("hf-hub:timm/resnet18.a1_in1k", ("timm", "hf-hub:timm/resnet18.a1_in1k")),
    ("timm/hf-hub:timm/resnet18.a1_in1k", ("timm", "hf-hub:timm/resnet18.a1_in1k")),
])
def test_prefixes_and_the_default(name, expected):
    assert zoo.resolve_model_name(name) == expected


def test_unknown_names_get_close_names_from_both_zoos():
    with pytest.raises(ValueError, match=r"'resnet181'.*did you mean torchvision/resnet18, timm/resnet18"):
        zoo.resolve_model_name("resnet181")
    with pytest.raises(ValueError, match=r"'torchvision/mobilenetv2_050': not a torchvision .*timm/mobilenetv2_050"):
        zoo.resolve_model_name("torchvision/mobilenetv2_050")
    with pytest.raises(ValueError, match=r"unknown zoo prefix 'tf/'; write timm/resnet18, torchvision/resnet18"):
        zoo.resolve_model_name("tf/resnet18")


def test_the_resolved_zoo_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(zoo, "_announced", set())
    with caplog.at_level(logging.INFO, logger="overhaul_det.models.zoo"):
        for _ in range(2):
            zoo.resolve_model_name("resnet18")
            zoo.resolve_model_name("timm/resnet18")
    messages = [r.getMessage() for r in caplog.records if r.name == "overhaul_det.models.zoo"]
    assert len(messages) == 2 and all(r.levelno == logging.INFO for r in caplog.records)
    assert messages[0].startswith("resnet18 -> torchvision.models.resnet18") and "timm/resnet18" in messages[0]
    assert messages[1] == "timm/resnet18 -> timm.create_model('resnet18')"


@pytest.mark.parametrize("name, block", [
    ("resnet18", torchvision.models.resnet.BasicBlock),
    ("torchvision/resnet18", torchvision.models.resnet.BasicBlock),
    ("timm/resnet18", timm.models.resnet.BasicBlock),
])
def test_classification_detection_and_segmentation_builders_agree(name, block):
    models = [build_classifier(name, num_classes=3), build_fpn_backbone(name),
              build_segmenter(name, 3, output_stride=32, channels=16)]
    for model in models:
        blocks = [type(m) for m in model.modules() if type(m).__name__ == "BasicBlock"]
        assert blocks and set(blocks) == {block}, type(model).__name__


def _weight_specs():
    """(config, role, spec) of every shipped config's model spec that names local weight files present here."""
    found = []
    for path in CONFIGS:
        if "_base_" in path.parts:
            continue
        cfg = load_config(str(path))
        for role in ("teacher", "student"):
            spec = cfg.model.get(role)
            if not isinstance(spec, dict):
                continue
            files = [spec.get(key) for key in WEIGHT_FILES if spec.get(key)]
            files += [spec.get("pretrained_cfg_overlay", {}).get("file")] if spec.get("pretrained_cfg_overlay") else []
            if files and all((REPO / f).is_file() for f in files):
                found.append(pytest.param(cfg, spec.to_dict(), id=f"{path.stem}:{role}"))
    return found


@pytest.mark.parametrize("cfg, spec", _weight_specs())
def test_shipped_checkpoints_load_into_their_configs_models(cfg, spec, monkeypatch):
    """Each weight file loads strictly (or, for a detection body, tensor by tensor) into the model its config names."""
    monkeypatch.chdir(REPO)
    spec.setdefault("num_classes", cfg.model.num_classes)
    if cfg.model.type == "ClassificationDistiller":
        build_classifier(**spec)
    elif cfg.model.type == "DetectionDistiller":
        build_detector(spec)
    else:
        build_segmenter(**spec)


def test_shipped_classification_teacher_stays_loaded_through_the_runner_path(monkeypatch):
    """What Runner.from_cfg does with the demo config's model: build it, then init_weights()."""
    monkeypatch.chdir(REPO)
    cfg = load_config(str(REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"))
    model = MODELS.build(cfg.model)
    model.init_weights()
    shipped = load_file(REPO / cfg.model.teacher.checkpoint)
    assert isinstance(model.teacher, torchvision.models.ResNet)
    state = model.teacher.state_dict()
    assert all(torch.equal(state[key], value) for key, value in shipped.items())
