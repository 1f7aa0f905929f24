"""Checkpoints without the frozen teacher: the state_dict of the module holding it (the distiller, a KD model)
leaves it out (the config rebuilds it from its own file) and keeps its SHA-256, so a load tells another teacher.

The teacher never changes in training (frozen, BatchNorm on batch statistics without touching its running
statistics), so the teacher the config builds is the one the checkpoint was trained with, and loading
fills its keys from that live teacher. A checkpoint that still holds the teacher loads it as before.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any, Dict

import torch
from torch import nn

__all__ = ["teacher_digest", "keep_teacher_out_of_state_dict"]

logger = logging.getLogger(__name__)


def teacher_digest(state: Dict[str, torch.Tensor]) -> torch.Tensor:
    """SHA-256 (32 uint8) over a teacher's state: each key in sorted order with its dtype, shape and bytes.

    Args:
        state: the teacher's state_dict, keys relative to the teacher.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        flat = state[key].detach().reshape(-1).contiguous().cpu()
        digest.update(f"{key}\0{flat.dtype}\0{tuple(state[key].shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def _hex(digest: torch.Tensor) -> str:
    return bytes(torch.as_tensor(digest).cpu().tolist()).hex()[:16]


def _drop_teacher(name: str, owner: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: dict) -> None:
    """State-dict hook: the keys under ``prefix + name + '.'`` replaced by their digest,
    ``prefix + name + '_sha256'``."""
    start = len(f"{prefix}{name}.")
    keys = [key for key in state_dict if key.startswith(f"{prefix}{name}.")]
    state_dict[f"{prefix}{name}_sha256"] = teacher_digest({key[start:]: state_dict[key] for key in keys})
    for key in keys:
        del state_dict[key]


def _restore_teacher(name: str, owner: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: where ``state_dict`` holds no teacher, its keys filled from the live one (built from its
    own file), with a warning when that teacher is not the one the saved digest names; the digest is taken out."""
    saved = state_dict.pop(f"{prefix}{name}_sha256", None)
    if any(key.startswith(f"{prefix}{name}.") for key in state_dict):
        return
    live = getattr(owner, name).state_dict()
    live_digest = None if saved is None else teacher_digest(live)
    if live_digest is not None and not torch.equal(torch.as_tensor(saved).cpu(), live_digest):
        logger.warning(
            "the checkpoint was trained with another teacher than the one model.teacher builds now (its SHA-256 "
            "%s differs from the saved %s): the student loads, but resumed training will not match the original "
            "run; give model.teacher the weights file the run was trained with", _hex(live_digest), _hex(saved))
    state_dict.update({f"{prefix}{name}.{key}": value for key, value in live.items()})


def keep_teacher_out_of_state_dict(module: nn.Module, name: str) -> None:
    """Hook ``module`` so its state_dict holds its frozen child ``name`` as ``<name>_sha256`` alone, and a
    state without the child loads it from the live one (a state that still holds it loads it as before).

    Args:
        module: the module that holds the teacher (the distiller, or a task model with a KD teacher).
        name: the attribute under which ``module`` holds the teacher.
    """
    module.register_state_dict_post_hook(functools.partial(_drop_teacher, name))
    module.register_load_state_dict_pre_hook(functools.partial(_restore_teacher, name))
