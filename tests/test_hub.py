"""Weights named the ecosystem's way load from their libraries' caches with no network, and an absent
file is one error naming where it was looked for."""
from __future__ import annotations

import os

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from overhaul_det.models.classifiers import build_classifier
from overhaul_det.models.detection import build_detector, feature_extractor
from overhaul_det.models.hub import MissingWeightsError, timm_pretrained_file, torchvision_weights
from overhaul_det.models.segmentation import build_segmenter


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; a download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _stand_in(folder, model: torch.nn.Module, url: str) -> dict:
    """A random state_dict saved under the exact file name torchvision downloads ``url`` to."""
    torch.manual_seed(1)
    for parameter in model.parameters():
        parameter.data.normal_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / os.path.basename(url))
    return state


def test_torchvision_classifier_weights_load_from_torch_home_offline(torch_home):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = _stand_in(torch_home, torchvision.models.resnet18(), weights.url)
    model = build_classifier("resnet18", weights="IMAGENET1K_V1", num_classes=10)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.fc.out_features == 10
    default = build_classifier("resnet18", pretrained=True)
    assert torch.equal(default.fc.weight, state["fc.weight"])


def test_detector_weights_backbone_loads_into_the_body(torch_home):
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    state = _stand_in(torch_home, torchvision.models.mobilenet_v3_large(), weights.url)
    model = build_detector("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5, min_size=64, max_size=64,
                           weights_backbone="IMAGENET1K_V1")
    body = feature_extractor(model)
    assert torch.equal(body["1"].block[0][0].weight, state["features.1.block.0.0.weight"])
    assert type(body["1"].block[0][1]).__name__ == "FrozenBatchNorm2d"


def test_detector_weights_load_the_whole_detector(torch_home):
    weights = torchvision.models.detection.SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    state = _stand_in(torch_home, torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91), weights.url)
    model = build_detector("ssdlite320_mobilenet_v3_large", num_classes=91, weights="COCO_V1")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    with pytest.raises(ValueError, match="91 classes: set num_classes"):
        build_detector("ssdlite320_mobilenet_v3_large", num_classes=81, weights="COCO_V1")


def test_segmenter_pretrained_backbone_reads_the_cache(torch_home):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = _stand_in(torch_home, torchvision.models.resnet18(), weights.url)
    model = build_segmenter("resnet18", num_classes=3, decoder=True, output_stride=32, pretrained_backbone=True)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_torchvision_segmenter_pretrained_backbone_reads_the_cache(torch_home):
    weights = torchvision.models.MobileNet_V3_Large_Weights.DEFAULT
    state = _stand_in(torch_home, torchvision.models.mobilenet_v3_large(), weights.url)
    model = build_segmenter("lraspp_mobilenet_v3_large", num_classes=3, pretrained_backbone=True)
    assert torch.equal(model.backbone["16"][0].weight, state["features.16.0.weight"])


def test_a_cached_file_of_another_model_is_named(torch_home):
    for url in (torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url,
                torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url):
        _stand_in(torch_home, torchvision.models.resnet34(), url)
    with pytest.raises(ValueError, match="torchvision weights ResNet18_Weights.IMAGENET1K_V1 does not match"):
        build_classifier("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="torchvision weights MobileNet_V3_Large_Weights.IMAGENET1K_V1 lacks"):
        build_detector("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5, weights_backbone="IMAGENET1K_V1")


def test_absent_torchvision_file_names_where_to_put_it(torch_home):
    with pytest.raises(MissingWeightsError) as error:
        build_classifier("resnet18", weights="DEFAULT")
    message = str(error.value)
    assert str(torch_home / "resnet18-f37072fd.pth") in message and "TORCH_HOME" in message


def test_unknown_weights_name_lists_the_names():
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        torchvision_weights("resnet50", "IMAGENET_V2")


def test_timm_file_overlay_loads(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("resnet18")
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_classifier("timm/resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    with pytest.raises(MissingWeightsError, match="absent.safetensors"):
        build_classifier("timm/resnet18", pretrained=True,
                         pretrained_cfg_overlay=dict(file=str(tmp_path / "absent.safetensors")))


def test_timm_pretrained_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match="timm/resnet18.a1_in1k") as error:
        timm_pretrained_file("resnet18")
    assert str(tmp_path / "hf") in str(error.value) and "HF_HOME" in str(error.value)
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    source = timm.create_model("resnet18")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    model = build_classifier("timm/resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_torchvision_segmenter_weights_load_by_name(torch_home):
    weights = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1
    state = _stand_in(torch_home, torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21), weights.url)
    model = build_segmenter("lraspp_mobilenet_v3_large", num_classes=21, weights="COCO_WITH_VOC_LABELS_V1")
    loaded = model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="set num_classes and aux_loss"):
        build_segmenter("lraspp_mobilenet_v3_large", num_classes=5, weights="COCO_WITH_VOC_LABELS_V1")
    resnet = _stand_in(torch_home, torchvision.models.resnet18(), torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    on_resnet = build_segmenter("resnet18", num_classes=3, output_stride=32, weights="IMAGENET1K_V1")
    assert torch.equal(on_resnet.backbone.layer2[0].conv1.weight, resnet["layer2.0.conv1.weight"])
