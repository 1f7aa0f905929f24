"""One model per tricky family (what tools/zoo_sweep.py checks over the whole zoo, in seconds):
>= 3 taps with non-decreasing strides, an exact rewrite that keeps every key, a finite OFD step."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

import overhaul_det as od

# name, zoo, input side, create_model overrides (smaller inputs where the model allows them)
FAMILIES = [
    ("resnetv2_18", "timm", 64, {}),                   # pre-activation: tap the next norm before its act
    ("ese_vovnet19b_dw", "timm", 64, {}),              # concatenation-ended stages (VoVNet)
    ("dpn48b", "timm", 64, {}),                        # dual-path, concatenation (DPN)
    ("densenet121", "torchvision", 64, {}),            # dense concatenation, transitions
    ("mobilevit_xxs", "timm", 64, {}),                 # hybrid conv/transformer stages
    ("edgenext_xx_small", "timm", 64, {}),             # hybrid, LayerNorm, no stage-end activation
    ("convnext_atto", "timm", 64, {}),                 # no stage-end activation, data margins
    ("efficientnet_b0", "timm", 64, {}),               # BatchNormAct2d leaves, linear bottlenecks
    ("ghostnet_050", "timm", 64, {}),                  # ghost modules, concatenation
    ("rexnet_100", "timm", 64, {}),                    # partial residual adds
    ("repvgg_a0", "timm", 64, {}),                     # multi-branch blocks
    ("res2net50_14w_8s", "timm", 64, {}),              # hierarchical splits
    ("dla34", "timm", 64, {}),                         # tree aggregation
    ("mixer_s16_224", "timm", 64, {"img_size": 64}),   # isotropic tokens (N, L, C)
    ("vit_tiny_patch16_224", "timm", 64, {"img_size": 64}),  # isotropic tokens with a class token
    ("swin_tiny_patch4_window7_224", "timm", 224, {}),  # channel-last maps (N, H, W, C)
    ("regnet_y_400mf", "torchvision", 64, {}),         # SE inside residual blocks
    ("shufflenet_v2_x0_5", "torchvision", 64, {}),     # channel shuffle, concatenation
    ("hrnet_w18_small", "timm", 64, {}),               # parallel multi-resolution branches
    ("coat_lite_tiny", "timm", 64, {"img_size": 64}),  # sizes carried through every stage
    ("twins_svt_small", "timm", 64, {}),               # tokens <-> maps each stage, positional convs
    ("vit_tiny_r_s16_p8_224", "timm", 128, {"img_size": 128}),  # conv stem, then one ViT stride
    ("vit_tiny_patch16_dinov3_qkvb", "timm", 64, {}),  # FX cannot trace (rotary): module taps
    ("crossvit_tiny_240", "timm", 240, {}),            # two token branches, 2 stage ends: module taps
]


def _build(name: str, zoo: str, overrides: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if zoo == "timm":
        return timm.create_model(name, **overrides).eval()
    return torchvision.models.get_model(name, **overrides).eval()


def _close(a, b) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,zoo,side,overrides", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_taps_rewrite_and_distil(name, zoo, side, overrides):
    model = _build(name, zoo, overrides)
    size = (3, side, side)
    taps = od.find_taps(model, input_size=size)
    strides = [t.stride for t in taps]
    assert len(taps) >= 3 and strides == sorted(strides), [(t.name, t.stride) for t in taps]

    student = copy.deepcopy(model)
    keys = list(student.state_dict())
    od.attach_taps(student, taps)
    x = torch.randn(2, *size)
    with torch.no_grad(), od.capture_taps(student) as captured:
        assert _close(model(x), student(x))
    assert set(captured) == {t.name for t in taps}
    assert list(student.state_dict()) == keys

    distiller = od.FeatureDistiller(model, copy.deepcopy(model), teacher_taps=taps,
                                    student_taps=[t.name for t in taps], input_size=size).train()
    _, losses = distiller(x)
    losses["loss_ofd"].backward()
    assert torch.isfinite(losses["loss_ofd"])
    assert all(p.grad is not None for p in distiller.regressors.parameters())


def test_resnet50_data_margins_are_the_negative_means_of_the_teacher_taps():
    """At a residual stage end the tap is bn3 + skip, not a BN output, so data and BN margins differ
    there (both negative); the closed-form agreement is tested on a plain BN in test_ofd."""
    torch.manual_seed(0)
    teacher = torchvision.models.resnet50().eval()
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    size = (3, 96, 96)
    bn = od.FeatureDistiller(teacher, torchvision.models.resnet18(), input_size=size, margin="bn")
    data = od.FeatureDistiller(copy.deepcopy(teacher), torchvision.models.resnet18(), input_size=size, margin="data")
    batches = [torch.randn(8, *size) for _ in range(4)]
    data.calibrate_margins(batches)
    features = [data.teacher_features(b) for b in batches]
    for i, (m_bn, m_data) in enumerate(zip(bn.margins, data.margins)):
        assert (m_bn < 0).all() and (m_data < 0).all()
        stacked = torch.cat([f[i].transpose(0, 1).reshape(f[i].shape[1], -1) for f in features], dim=1).double()
        negative = stacked.clamp_max(0)
        expected = negative.sum(1) / (stacked < 0).sum(1)
        assert torch.allclose(m_data.double(), expected, rtol=1e-5, atol=1e-6)
