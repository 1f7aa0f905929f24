"""pytorch-deeplab-xception DeepLabV3+ checkpoints (the official OFD segmentation models) load into this
package's segmenter; the key set round-trips. Their key names and shapes are generated from that code's layout."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from overhaul_det.models.deeplab_xception import from_deeplab_xception, main, to_deeplab_xception
from overhaul_det.models.segmentation import build_segmenter

NUM_CLASSES = 21
# MobileNetV2's inverted-residual setting in that code: expansion t, channels c, blocks n.
MOBILENET_SETTING = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(conv: str, bn: str, out: int, inp: int, kernel: int) -> List[Tuple[str, tuple]]:
    return [(f"{conv}.weight", (out, inp, kernel, kernel))] + [(f"{bn}.{name}", (out,) if name != "num_batches_tracked"
                                                                else ()) for name in BN]


def resnet_keys(layers=(3, 4, 23, 3)) -> List[Tuple[str, tuple]]:
    """Their ResNet (bottleneck) backbone: conv1/bn1, then layer1..4 (layer4: three multi-grid blocks)."""
    keys = _conv_bn("backbone.conv1", "backbone.bn1", 64, 3, 7)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers[:3] + (3,)), start=1):
        for block in range(blocks):
            prefix = f"backbone.layer{stage}.{block}"
            keys += _conv_bn(f"{prefix}.conv1", f"{prefix}.bn1", planes, inplanes, 1)
            keys += _conv_bn(f"{prefix}.conv2", f"{prefix}.bn2", planes, planes, 3)
            keys += _conv_bn(f"{prefix}.conv3", f"{prefix}.bn3", planes * 4, planes, 1)
            if block == 0:
                keys += _conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", planes * 4, inplanes, 1)
            inplanes = planes * 4
    return keys


def mobilenet_keys() -> List[Tuple[str, tuple]]:
    """Their MobileNetV2: features.0 (conv + BN), then features.N.conv.M blocks, and the two alias lists."""
    keys = _conv_bn("backbone.features.0.0", "backbone.features.0.1", 32, 3, 3)
    inp, index = 32, 1
    for expansion, out, blocks in MOBILENET_SETTING:
        for _ in range(blocks):
            hidden, prefix = inp * expansion, f"backbone.features.{index}.conv"
            if expansion == 1:
                keys += _conv_bn(f"{prefix}.0", f"{prefix}.1", hidden, 1, 3) + _conv_bn(f"{prefix}.3", f"{prefix}.4",
                                                                                        out, hidden, 1)
            else:
                keys += (_conv_bn(f"{prefix}.0", f"{prefix}.1", hidden, inp, 1)
                         + _conv_bn(f"{prefix}.3", f"{prefix}.4", hidden, 1, 3)
                         + _conv_bn(f"{prefix}.6", f"{prefix}.7", out, hidden, 1))
            inp, index = out, index + 1
    aliases = []
    for key, shape in keys:
        number, _, rest = key.removeprefix("backbone.features.").partition(".")
        alias = f"low_level_features.{number}" if int(number) < 4 else f"high_level_features.{int(number) - 4}"
        aliases.append((f"backbone.{alias}.{rest}", shape))
    return keys + aliases


def head_keys(high: int, low: int) -> List[Tuple[str, tuple]]:
    """Their ASPP (output stride 16) and decoder."""
    keys = _conv_bn("aspp.aspp1.atrous_conv", "aspp.aspp1.bn", 256, high, 1)
    for index in (2, 3, 4):
        keys += _conv_bn(f"aspp.aspp{index}.atrous_conv", f"aspp.aspp{index}.bn", 256, high, 3)
    keys += _conv_bn("aspp.global_avg_pool.1", "aspp.global_avg_pool.2", 256, high, 1)
    keys += _conv_bn("aspp.conv1", "aspp.bn1", 256, 1280, 1) + _conv_bn("decoder.conv1", "decoder.bn1", 48, low, 1)
    keys += _conv_bn("decoder.last_conv.0", "decoder.last_conv.1", 256, 304, 3)
    keys += _conv_bn("decoder.last_conv.4", "decoder.last_conv.5", 256, 256, 3)
    return keys + [("decoder.last_conv.8.weight", (NUM_CLASSES, 256, 1, 1)),
                   ("decoder.last_conv.8.bias", (NUM_CLASSES,))]


def their_state(keys: List[Tuple[str, tuple]]) -> Dict[str, torch.Tensor]:
    """Random tensors under their names; the MobileNetV2 aliases share the tensors of ``features``, as there."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in keys:
        if not shape:
            state[key] = torch.tensor(7)
        elif "_features." in key:
            number, _, rest = key.split("_features.")[1].partition(".")
            offset = 4 if key.startswith("backbone.high") else 0
            state[key] = state[f"backbone.features.{int(number) + offset}.{rest}"]
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


@pytest.mark.parametrize("backbone, keys", [
    ("timm/resnet101", resnet_keys() + head_keys(2048, 256)),
    ("timm/mobilenetv2_100", mobilenet_keys() + head_keys(320, 24)),
])
def test_official_checkpoint_loads_strictly_and_round_trips(backbone, keys):
    theirs = their_state(keys)
    ours = from_deeplab_xception(theirs)
    model = build_segmenter(backbone, NUM_CLASSES, decoder=True, output_stride=16)
    model.load_state_dict(ours, strict=True)
    state = model.state_dict()
    assert torch.equal(state["classifier.classifier.weight"], theirs["decoder.last_conv.8.weight"])
    assert torch.equal(state["classifier.aspp.convs.4.2.running_var"], theirs["aspp.global_avg_pool.2.running_var"])
    back = to_deeplab_xception(ours)
    assert set(back) == set(theirs)
    assert all(torch.equal(back[key], value) for key, value in theirs.items())


def test_convert_file_reads_the_official_checkpoint_format(tmp_path):
    theirs = their_state(mobilenet_keys() + head_keys(320, 24))
    source = tmp_path / "deeplab-mobilenet.pth.tar"
    torch.save(dict(epoch=50, state_dict={f"module.{k}": v for k, v in theirs.items()}, optimizer={},
                    best_pred=np.float64(0.7119)), source)
    destination = tmp_path / "teacher.safetensors"
    assert main([str(source), str(destination)]) == 0
    assert len(load_file(destination)) == len([k for k in theirs if "_features." not in k])
    with pytest.raises(SystemExit):
        main([str(source), str(tmp_path / "teacher.pth")])
    model = build_segmenter("timm/mobilenetv2_100", NUM_CLASSES, decoder=True, checkpoint=str(destination))
    assert torch.equal(model.state_dict()["backbone.blocks.6.0.conv_pwl.weight"],
                       theirs["backbone.features.17.conv.6.weight"])


def test_a_key_of_another_model_is_named():
    with pytest.raises(ValueError, match="'head.fc.weight'"):
        from_deeplab_xception({"head.fc.weight": torch.zeros(1)})
