"""Export the distilled student alone: a plain state_dict the zoo's own model loads strictly."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch

from .engine.checkpoint import load_checkpoint_file

__all__ = ["STUDENT_PREFIXES", "EXPORT_DTYPES", "student_state_dict", "export_student", "atomic_save"]

STUDENT_PREFIXES = ("distiller.student.", "student_model.", "student.")


def student_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The student's weights from a task checkpoint, with the task's key prefix removed."""
    state = checkpoint.get("state_dict", checkpoint)
    prefixes = (prefix,) if prefix else STUDENT_PREFIXES
    for p in prefixes:
        found = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if found:
            return found
    sample = list(state)[:5]
    raise ValueError(f"no key starts with {list(prefixes)} (keys look like {sample}); pass --prefix")


def atomic_save(write, path: os.PathLike) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``: no half-written file is ever visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_student(checkpoint_path: os.PathLike, out: os.PathLike, prefix: Optional[str] = None,
                   dtype: Optional[str] = None) -> Path:
    """Write the student of ``checkpoint_path`` to ``out`` (.safetensors, or .pth/.pt); ``dtype`` (a key of
    ``EXPORT_DTYPES``) casts its floating-point tensors (loading copies them back into a model's own dtype)."""
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {sorted(EXPORT_DTYPES)}")
    state = student_state_dict(load_checkpoint_file(checkpoint_path), prefix)
    cast = EXPORT_DTYPES.get(dtype)
    state = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).detach().clone().contiguous()
             for k, v in state.items()}
    if str(out).endswith(".safetensors"):
        from safetensors.torch import save_file

        return atomic_save(lambda tmp: save_file(state, tmp, metadata={"format": "pt"}), out)
    return atomic_save(lambda tmp: torch.save(state, tmp), out)
