"""Atomic local writes for mmengine: a file is either its old content or the whole new one.

mmengine saves checkpoints through the file backend of the path (``LocalBackend.put`` for local
paths), which opens the target and writes into it; a kill mid-write leaves a truncated file. The
backend ``install`` registers (when a Runner is built) writes a temporary file in the same folder,
fsyncs it, then renames it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ["AtomicLocalBackend", "atomic_write_bytes", "install"]


def atomic_write_bytes(data: bytes, path: Union[str, os.PathLike]) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``.

    The temporary file is ``.<name>.<random>.tmp`` next to ``path``; it is removed if writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicLocalBackend(LocalBackend):
    """mmengine's LocalBackend with atomic ``put`` and ``put_text`` (used for checkpoints)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        atomic_write_bytes(obj.encode(encoding), filepath)


def install() -> None:
    """Make mmengine write local files through ``AtomicLocalBackend``."""
    register_backend("local", AtomicLocalBackend, force=True, prefixes="")
