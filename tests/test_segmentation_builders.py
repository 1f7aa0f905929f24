"""Every torchvision segmenter (DeepLabV3, FCN, LRASPP) through build_segmenter and SegmentationDistiller."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from overhaul_det.models.segmentation import TORCHVISION_SEGMENTERS, build_segmenter
from overhaul_det.taps.presets import segmenter_tap_groups
from overhaul_det.taps import attach_taps, capture_taps
from overhaul_det.tasks.segmentation import SegmentationDistiller, segmentation_tap_weights

SIZE = 64
CLASSES = 4
PARTNER = dict(backbone="timm/resnet18", channels=16)
HAS_AUX = {name: not name.startswith("lraspp") for name in TORCHVISION_SEGMENTERS}


def _batch():
    generator = torch.Generator().manual_seed(1)
    return dict(inputs=[torch.randn(3, SIZE, SIZE, generator=generator) for _ in range(2)],
                data_samples=[dict(gt_seg=torch.randint(0, CLASSES, (SIZE, SIZE), generator=generator))
                              for _ in range(2)])


def _spec(name: str) -> dict:
    return dict(backbone=name, aux_loss=True) if HAS_AUX[name] else dict(backbone=name)


def test_every_torchvision_segmenter_is_known():
    assert set(TORCHVISION_SEGMENTERS) == set(torchvision.models.list_models(torchvision.models.segmentation))


@pytest.mark.parametrize("name", TORCHVISION_SEGMENTERS)
def test_segmenter_is_torchvisions_model(name):
    """Same state_dict keys in the same order, and the same eval logits with the same weights."""
    torch.manual_seed(0)
    options = dict(aux_loss=True) if HAS_AUX[name] else {}
    model = build_segmenter(name, CLASSES, **options).eval()
    reference = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=CLASSES,
                                             **options).eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out, expected = model(x)["out"], reference(x)["out"]
    assert out.shape == (1, CLASSES, SIZE, SIZE)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name, head", [("fcn_resnet50", ["classifier.1"]),
                                        ("lraspp_mobilenet_v3_large", ["classifier.cbr.1"])])
def test_one_tap_heads_tap_their_conv_bn_before_relu(name, head, randomized):
    model = randomized(build_segmenter(name, CLASSES)).eval()
    backbone, head_taps = segmenter_tap_groups(model, (3, SIZE, SIZE))
    assert len(backbone) == 4 and [t.name for t in head_taps] == head
    assert [t.norm for t in head_taps] == head and [t.activation for t in head_taps] == ["ReLU"]
    attach_taps(model, backbone + head_taps)
    with torch.no_grad(), capture_taps(model) as feats:
        model(torch.randn(2, 3, SIZE, SIZE))
    assert all(feats[t.name].min() < 0 for t in backbone + head_taps), "a tap lost its negative half"


def test_lraspp_reads_two_branches_and_returns_logits_at_input_size():
    model = build_segmenter("lraspp_mobilenet_v3_large", CLASSES).train()
    out = model(torch.randn(2, 3, 48, 80))
    assert list(out) == ["out"] and out["out"].shape == (2, CLASSES, 48, 80)


@pytest.mark.parametrize("name", ["fcn_resnet50", "lraspp_mobilenet_v3_large"])
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_distils_as_teacher_and_student(name, role):
    """One SGD step with a DeepLabV3 partner: the one-tap head pairs with the partner's last head tap (1/16);
    the aux loss is there exactly when the student has an aux head; the teacher comes out unchanged."""
    torch.manual_seed(0)
    teacher, student = (_spec(name), PARTNER) if role == "teacher" else (PARTNER, _spec(name))
    model = SegmentationDistiller(teacher, student, num_classes=CLASSES,
                                  ofd=dict(input_size=(3, SIZE, SIZE))).train()
    pairs = [(s.name, t.name) for s, t in model.distiller.pairs]
    assert len(pairs) == 5 and all(s.startswith("backbone.") and t.startswith("backbone.") for s, t in pairs[:4])
    own = "classifier.1" if name.startswith("fcn") else "classifier.cbr.1"
    assert pairs[-1] == (("classifier.2", own) if role == "teacher" else (own, "classifier.2"))
    assert model.distiller.weights == segmentation_tap_weights(4, 1) == [1 / 8, 1 / 4, 1 / 2, 1.0, 1 / 16]
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    data = model.data_preprocessor(_batch(), True)
    losses = model(**data, mode="loss")
    aux = role == "student" and HAS_AUX[name]
    assert set(losses) == {"loss_ce", "loss_ofd"} | ({"loss_aux"} if aux else set())
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.parse_losses(losses)[0].backward()
    optimizer.step()
    stem = next(p for p in model.student.backbone.parameters())
    assert stem.grad is not None and bool(stem.grad.ne(0).any())
    assert all(torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
    predictions = model.predict(data["inputs"], data["data_samples"])
    assert all(p["pred_seg"].shape == (SIZE, SIZE) for p in predictions)


def test_head_weights_keep_the_paper_values():
    assert segmentation_tap_weights(4) == segmentation_tap_weights(4, 2) == [1 / 8, 1 / 4, 1 / 2, 1.0, 1.0, 1 / 16]
    assert segmentation_tap_weights(3, 0) == [1 / 4, 1 / 2, 1.0]


def test_clear_errors():
    with pytest.raises(ValueError, match="lraspp_mobilenet_v3_large has no aux head"):
        build_segmenter("lraspp_mobilenet_v3_large", CLASSES, aux_loss=True)
    with pytest.raises(ValueError, match="unknown model name 'fcn_resnet18'.*fcn_resnet50"):
        build_segmenter("fcn_resnet18", CLASSES)
    with pytest.raises(ValueError, match="cannot be set"):
        build_segmenter("fcn_resnet50", CLASSES, decoder=True)
