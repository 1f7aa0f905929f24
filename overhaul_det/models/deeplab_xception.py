"""Checkpoints of pytorch-deeplab-xception's DeepLabV3+ (the official OFD segmentation teacher and students) as
state_dicts of this package's ``build_segmenter(..., decoder=True, output_stride=16)``.

That code names its modules ``backbone`` (a ResNet with ``conv1``, ``layer1``..``layer4``, or a MobileNetV2 as
``features.N.conv.M``), ``aspp.aspp1``..``aspp4``/``global_avg_pool``/``conv1``/``bn1`` and
``decoder.conv1``/``bn1``/``last_conv``; here they are ``backbone`` (timm's ``resnet101`` or ``mobilenetv2_100``)
and ``classifier.aspp`` (torchvision's ASPP), ``classifier.low_level``, ``classifier.decoder`` and
``classifier.classifier``. Only names change; every tensor keeps its shape and values. Its ResNet's last stage
is dilated by multi-grid (2, 4, 8 at output stride 16) where timm's dilates every block by 2: the converted
teacher runs with timm's dilations.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from .weights import load_checkpoint_file

__all__ = ["MOBILENET_V2_STAGES", "from_deeplab_xception", "to_deeplab_xception", "convert_file", "main"]

logger = logging.getLogger(__name__)

# Blocks per stage of MobileNetV2 (its inverted-residual setting's n), as timm's ``blocks.S.B`` nests them.
MOBILENET_V2_STAGES = (1, 2, 3, 4, 3, 3, 1)
_HEAD = [
    (r"aspp\.aspp1\.atrous_conv\.", "classifier.aspp.convs.0.0."),
    (r"aspp\.aspp1\.bn\.", "classifier.aspp.convs.0.1."),
    (r"aspp\.aspp([234])\.atrous_conv\.", "classifier.aspp.convs.{-1}.0."),
    (r"aspp\.aspp([234])\.bn\.", "classifier.aspp.convs.{-1}.1."),
    (r"aspp\.global_avg_pool\.([12])\.", "classifier.aspp.convs.4.{0}."),
    (r"aspp\.conv1\.", "classifier.aspp.project.0."),
    (r"aspp\.bn1\.", "classifier.aspp.project.1."),
    (r"decoder\.conv1\.", "classifier.low_level.0."),
    (r"decoder\.bn1\.", "classifier.low_level.1."),
    (r"decoder\.last_conv\.([0145])\.", "classifier.decoder.{0}."),
    (r"decoder\.last_conv\.8\.", "classifier.classifier."),
]
# Layers inside a MobileNetV2 block: theirs ``conv.M`` -> timm's, for the first block (no expansion) and the rest.
_FIRST_BLOCK = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}
_BLOCK = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}
_LOW_LEVEL_BLOCKS = 4  # their MobileNetV2's low_level_features = features[0:4], high_level_features the rest


def _rename(key: str, rules: Sequence[Tuple[str, str]]) -> Optional[str]:
    """``key`` renamed by the first rule whose pattern starts it; None if none does. ``{0}`` in a replacement is
    the pattern's group, ``{-1}`` the group minus one."""
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
            group = match.group(1) if match.groups() else ""
            new = replacement.replace("{0}", group).replace("{-1}", str(int(group or 1) - 1))
            return new + key[match.end():]
    return None


def _block_positions() -> List[Tuple[int, int]]:
    """(stage, block) of timm's MobileNetV2 ``blocks`` for their ``features.1``, ``features.2``, ..."""
    return [(stage, block) for stage, count in enumerate(MOBILENET_V2_STAGES) for block in range(count)]


def _mobilenet_key(key: str) -> str:
    """Their ``backbone.features.N.*`` key as timm's ``mobilenetv2_100`` names it."""
    index, _, rest = key.removeprefix("backbone.features.").partition(".")
    if index == "0":
        return "backbone." + {"0": "conv_stem", "1": "bn1"}[rest.split(".")[0]] + rest[1:]
    stage, block = _block_positions()[int(index) - 1]
    layer, _, tensor = rest.removeprefix("conv.").partition(".")
    names = _FIRST_BLOCK if index == "1" else _BLOCK
    return f"backbone.blocks.{stage}.{block}.{names[layer]}.{tensor}"


def from_deeplab_xception(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """This package's DeepLabV3+ state_dict from a pytorch-deeplab-xception one (ResNet or MobileNetV2 backbone).

    A ``module.`` prefix (DataParallel) is dropped; the MobileNetV2's ``low_level_features``/``high_level_features``
    aliases of ``features`` are skipped. A key of another model is one ValueError naming it.

    Args:
        state: the checkpoint's ``state_dict``.
    """
    converted = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("backbone.low_level_features.", "backbone.high_level_features.")):
            continue
        if key.startswith("backbone.features."):
            new = _mobilenet_key(key)
        elif key.startswith("backbone."):
            new = key
        else:
            new = _rename(key, _HEAD)
        if new is None:
            raise ValueError(f"key {key!r} is not one of pytorch-deeplab-xception's DeepLabV3+ (backbone.*, aspp.*, "
                             "decoder.*); give a checkpoint of its ResNet or MobileNetV2 DeepLabV3+")
        converted[new] = value
    return converted


def to_deeplab_xception(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The inverse of ``from_deeplab_xception``: pytorch-deeplab-xception's key names (with the MobileNetV2
    aliases) for a state_dict of this package's DeepLabV3+.

    Args:
        state: a ``build_segmenter(..., decoder=True)`` state_dict over timm's resnet* or mobilenetv2_100.
    """
    mobilenet = any(key.startswith("backbone.blocks.") for key in state)
    result = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            result[_their_mobilenet_key(key) if mobilenet else key] = value
            continue
        names = _their_head_keys(key)
        if not names:
            raise ValueError(f"key {key!r} has no pytorch-deeplab-xception name; give a DeepLabV3+ state_dict")
        result[names[0]] = value
    for key in [k for k in result if k.startswith("backbone.features.")]:
        index, _, rest = key.removeprefix("backbone.features.").partition(".")
        alias = (f"low_level_features.{index}" if int(index) < _LOW_LEVEL_BLOCKS
                 else f"high_level_features.{int(index) - _LOW_LEVEL_BLOCKS}")
        result[f"backbone.{alias}.{rest}"] = result[key]
    return result


def _their_mobilenet_key(key: str) -> str:
    parts = key.removeprefix("backbone.").split(".")
    if parts[0] in ("conv_stem", "bn1"):
        return "backbone.features.0." + {"conv_stem": "0", "bn1": "1"}[parts[0]] + "." + ".".join(parts[1:])
    index = _block_positions().index((int(parts[1]), int(parts[2]))) + 1
    names = _FIRST_BLOCK if index == 1 else _BLOCK
    layer = {name: number for number, name in names.items()}[parts[3]]
    return f"backbone.features.{index}.conv.{layer}." + ".".join(parts[4:])


def _their_head_keys(key: str) -> List[Optional[str]]:
    """Every pytorch-deeplab-xception head key that renames to ``key`` (at most one matches)."""
    tensor = key.rpartition(".")[2]
    options = [f"aspp.aspp{i}.{part}.{tensor}" for i in range(1, 5) for part in ("atrous_conv", "bn")]
    options += [f"aspp.global_avg_pool.{i}.{tensor}" for i in (1, 2)]
    options += [f"aspp.{name}.{tensor}" for name in ("conv1", "bn1")]
    options += [f"decoder.{name}.{tensor}" for name in ("conv1", "bn1")]
    options += [f"decoder.last_conv.{i}.{tensor}" for i in (0, 1, 4, 5, 8)]
    return [option for option in options if _rename(option, _HEAD) == key]


def _numpy_globals() -> list:
    """The numpy types a pytorch-deeplab-xception checkpoint pickles besides tensors (its ``best_pred``), under
    numpy 2's names and numpy 1's (``numpy.core``), which the official files were saved with."""
    from numpy._core.multiarray import scalar

    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float64))]


def convert_file(source: str, destination: str) -> int:
    """Convert a pytorch-deeplab-xception checkpoint (``deeplab-resnet.pth.tar``) into a safetensors state_dict
    this package's segmenter loads with ``checkpoint=``; returns the number of tensors written.

    Args:
        source: the checkpoint, read with weights_only (its numpy ``best_pred`` allowed).
        destination: the ``.safetensors`` file to write.
    """
    from safetensors.torch import save_file

    data = load_checkpoint_file(source, safe_globals=_numpy_globals())
    state = data.get("state_dict", data) if isinstance(data, dict) else data
    converted = from_deeplab_xception(state)
    save_file({key: value.contiguous() for key, value in converted.items()}, destination)
    logger.info("wrote %d tensors of %s to %s", len(converted), source, destination)
    return len(converted)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``convert-deeplab-xception SOURCE DESTINATION``: see ``convert_file``."""
    parser = argparse.ArgumentParser(prog="convert-deeplab-xception", description=convert_file.__doc__.splitlines()[0])
    parser.add_argument("source", help="pytorch-deeplab-xception checkpoint, e.g. deeplab-resnet.pth.tar")
    parser.add_argument("destination", help="output .safetensors, e.g. checkpoints/voc_deeplabv3plus_resnet101_teacher"
                                            ".safetensors")
    args = parser.parse_args(argv)
    if Path(args.destination).suffix != ".safetensors":
        parser.error(f"destination {args.destination} must end in .safetensors")
    convert_file(args.source, args.destination)
    return 0
