"""Checkpoints without the frozen teacher: the distiller's state_dict leaves the teacher out (it is rebuilt
from its own weights file by the config) and keeps a SHA-256 of it, so a load can tell a different teacher.

The teacher never changes in training (frozen, BatchNorm on batch statistics without touching its running
statistics), so the teacher the config builds is the one the checkpoint was trained with, and loading
fills its keys from that live teacher. A checkpoint that still holds the teacher loads it as before.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["TEACHER_PREFIX", "TEACHER_DIGEST", "teacher_digest", "drop_teacher", "restore_teacher"]

logger = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher."
TEACHER_DIGEST = "teacher_sha256"


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


def _teacher_keys(state_dict: Dict[str, Any], prefix: str) -> List[str]:
    return [key for key in state_dict if key.startswith(prefix + TEACHER_PREFIX)]


def drop_teacher(module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: dict) -> None:
    """State-dict hook of the distiller: the teacher's keys replaced by ``teacher_sha256``, their digest.

    Args:
        module: the distiller (unused; the hook's signature).
        state_dict: the state being written, edited in place.
        prefix: the distiller's prefix in ``state_dict``.
        local_metadata: unused (the hook's signature).
    """
    keys = _teacher_keys(state_dict, prefix)
    start = len(prefix + TEACHER_PREFIX)
    state_dict[prefix + TEACHER_DIGEST] = teacher_digest({key[start:]: state_dict[key] for key in keys})
    for key in keys:
        del state_dict[key]


def restore_teacher(teacher: nn.Module, state_dict: Dict[str, Any], prefix: str) -> None:
    """Before the distiller loads ``state_dict``: where it holds no teacher, fill the teacher's keys from the
    live ``teacher`` (built from its own file), and warn when that teacher is not the one the digest names.

    Args:
        teacher: the distiller's live teacher.
        state_dict: the state being loaded, edited in place (``teacher_sha256`` is taken out).
        prefix: the distiller's prefix in ``state_dict``.
    """
    saved = state_dict.pop(prefix + TEACHER_DIGEST, None)
    if _teacher_keys(state_dict, prefix):
        return
    live = teacher.state_dict()
    if saved is not None and not torch.equal(torch.as_tensor(saved).cpu(), teacher_digest(live)):
        logger.warning(
            "the checkpoint was trained with another teacher than the one model.teacher builds now (its SHA-256 "
            "%s differs from the saved %s): the student loads, but resumed training will not match the original "
            "run; give model.teacher the weights file the run was trained with",
            bytes(teacher_digest(live).tolist()).hex()[:16], bytes(torch.as_tensor(saved).tolist()).hex()[:16])
    state_dict.update({prefix + TEACHER_PREFIX + key: value for key, value in live.items()})
