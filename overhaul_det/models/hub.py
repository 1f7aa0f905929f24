"""Pretrained weights the ecosystem's way: torchvision's ``weights=`` names and timm's ``pretrained=True``,
found in their own caches (``$TORCH_HOME/hub/checkpoints``, the Hugging Face cache) before any download.

A file already in its cache loads with no network and no copying; an absent one is one
``MissingWeightsError`` naming where the library looked, the file to put there and the variable that
moves the cache, instead of a download that hangs on a machine without network.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Dict, Optional, Tuple
from urllib.parse import urlparse

import torch
import torchvision
from torchvision.models import WeightsEnum

from .weights import load_state_into

__all__ = ["MissingWeightsError", "backbone_weights_enum", "cached_state_dict", "existing_weights_file",
           "load_torchvision_weights", "timm_pretrained_file", "torchvision_state_dict", "torchvision_weights",
           "weights_member"]

_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights asked for by name are not in their library's cache."""


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def torchvision_weights(builder: str, weights: str) -> WeightsEnum:
    """The member of ``builder``'s weights enum that ``weights`` names: ``'DEFAULT'``, ``'IMAGENET1K_V2'``,
    ``'COCO_V1'`` or the full ``'ResNet50_Weights.IMAGENET1K_V2'``.

    Args:
        builder: a torchvision model builder name, e.g. ``resnet50`` or ``fasterrcnn_resnet50_fpn``.
        weights: the weights' name in that builder's enum.
    """
    return weights_member(torchvision.models.get_model_weights(builder), weights, builder)


def weights_member(enum: type, weights: str, what: str) -> WeightsEnum:
    """The member of ``enum`` named ``weights`` (bare or ``Enum.NAME``); a ValueError listing the names.

    Args:
        enum: a torchvision weights enum, e.g. ``ResNet50_Weights``.
        weights: the member's name.
        what: the model the weights are for, named in the error.
    """
    member = weights.rpartition(".")[2] if weights.startswith(enum.__name__ + ".") else weights
    if member not in enum.__members__:
        names = ", ".join(["DEFAULT"] + [m.name for m in enum])
        raise ValueError(f"weights={weights!r} is not one of torchvision's weights for {what}; choose one of {names}")
    return enum[member]


def backbone_weights_enum(builder: str) -> type:
    """The weights enum of the backbone of torchvision's detector or segmenter ``builder`` (the type of its
    ``weights_backbone`` default, e.g. ``ResNet50_Weights``).

    Args:
        builder: a torchvision detection or segmentation builder name.
    """
    signature = inspect.signature(torchvision.models.get_model_builder(builder))
    return type(signature.parameters["weights_backbone"].default)


def torchvision_state_dict(builder: str, weights: str) -> Tuple[Dict[str, torch.Tensor], WeightsEnum]:
    """``builder``'s state_dict for the named ``weights``, read from torch.hub's cache by torchvision's own
    loader (``WeightsEnum.get_state_dict``, weights_only), and the enum member (its ``meta`` holds the categories).

    Args:
        builder: a torchvision model builder name.
        weights: a name of its weights enum (see ``torchvision_weights``).
    """
    member = torchvision_weights(builder, weights)
    return cached_state_dict(member, builder), member


def load_torchvision_weights(model: torch.nn.Module, builder: str, weights: str, hint: str) -> None:
    """Load torchvision's named ``weights`` of ``builder`` from torch.hub's cache into ``model`` (the same keys),
    strictly; a mismatch is one ValueError naming the weights and ``hint``.

    Args:
        model: a model with ``builder``'s state_dict keys.
        builder: the torchvision builder the weights belong to.
        weights: a name of its weights enum.
        hint: the fix named in a mismatch's error.
    """
    state, member = torchvision_state_dict(builder, weights)
    load_state_into(model, state, f"torchvision weights {member}", builder, hint,
                    ignore_missing=("num_batches_tracked",))


def cached_state_dict(member: WeightsEnum, builder: str) -> Dict[str, torch.Tensor]:
    """The state_dict of torchvision weights ``member`` from torch.hub's cache; MissingWeightsError if absent.

    Args:
        member: a torchvision weights enum member.
        builder: the model the weights are for, named in the error.
    """
    folder = _torch_hub_checkpoints()
    file_name = _url_file(member.url)
    if not (folder / file_name).is_file():
        raise MissingWeightsError(
            f"torchvision weights {type(member).__name__}.{member.name} for {builder}: {folder / file_name} not "
            f"found (torch.hub's cache, $TORCH_HOME/hub/checkpoints). Put the file {file_name} there (from "
            f"{member.url}), or set TORCH_HOME to the folder whose hub/checkpoints holds it"
        )
    return member.get_state_dict(progress=False, weights_only=True)


def _hf_cached(repo: str, revision: Optional[str], names: Tuple[str, ...]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(found, str):
            return found
    return None


def timm_pretrained_file(name: str) -> str:
    """The local file of timm's pretrained weights for ``name`` (``arch`` or ``arch.tag``): the Hugging Face
    cache entry timm would download (``model.safetensors`` / ``pytorch_model.bin`` of its ``hf_hub_id``), or
    torch.hub's cached copy of its URL.

    Args:
        name: a timm model name, with or without a pretrained tag.
    """
    import timm
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm has no pretrained weights for {name}; drop pretrained=True or give "
                         "pretrained_cfg_overlay=dict(file=PATH)")
    if cfg.file:
        return existing_weights_file(name, cfg.file)
    looked = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _TIMM_FILES
        found = _hf_cached(repo, revision or None, names)
        if found:
            return found
        looked.append(f"{' or '.join(names)} of the Hugging Face repo {repo} in {constants.HF_HUB_CACHE} "
                      "(HF_HOME or HF_HUB_CACHE move it; `hf download "
                      f"{repo} {names[0]}` puts it there)")
    if cfg.url:
        path = _torch_hub_checkpoints() / _url_file(cfg.url)
        if path.is_file():
            return str(path)
        looked.append(f"{path} (from {cfg.url}; TORCH_HOME moves it)")
    raise MissingWeightsError(f"timm pretrained weights for {name} not found: looked for {'; and for '.join(looked)}. "
                              "Or give the file with pretrained_cfg_overlay=dict(file=PATH)")


def existing_weights_file(name: str, file: str) -> str:
    """``file`` (a ``pretrained_cfg_overlay`` file of timm model ``name``), checked to exist, as a string.

    Args:
        name: the timm model the file is for, named in the error.
        file: the path given.
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"timm model {name}: pretrained_cfg_overlay file {path} not found; give the path "
                                  "of a .safetensors/.pth state_dict of this architecture")
    return str(path)
