"""Where a number comes from: the code, the config, the thread count, the torch version and the CPU of a run.

A recorded result is reused only while all five still hold (the same code rounds differently on
another CPU); the commit is recorded for the reader, but the code's content decides, so a commit
that changes only docs or tests reruns nothing.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional

__all__ = ["CODE_PATHS", "code_hash", "git_commit", "config_hash", "cpu_model", "stamp", "stale_fields"]

# What a training run executes or reads besides its data: the package, the configs, the teachers' weights.
CODE_PATHS = ("overhaul_det", "configs", "checkpoints/*.safetensors", "pyproject.toml")
DECISIVE = ("code", "config", "threads", "torch", "cpu")


def _digest(chunks) -> str:
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()[:12]


def _code_files(repo: Path) -> List[Path]:
    files = []
    for name in CODE_PATHS:
        path = repo / name
        candidates = (sorted(repo.glob(name)) if "*" in name else [path] if path.is_file()
                      else sorted(path.rglob("*")) if path.is_dir() else [])
        files += [f for f in candidates if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    return files


def code_hash(repo: Path) -> str:
    """A hash of the content of every file under ``CODE_PATHS`` (path and bytes)."""
    def chunks():
        for f in _code_files(repo):
            yield f.relative_to(repo).as_posix().encode() + b"\0"
            yield f.read_bytes()
    return _digest(chunks())


def git_commit(repo: Path) -> str:
    """The short commit of ``repo``, with ``+modified`` when the code differs from it; 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], capture_output=True, text=True,
                               cwd=repo, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")


def config_hash(config_path: Path, options: Mapping[str, object]) -> str:
    """A hash of the config as mmengine resolves it (``_base_`` files merged) with ``options`` applied."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path))
    cfg.merge_from_dict(dict(options))
    return _digest([json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()])


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def stamp(repo: Path, config_path: Path, options: Mapping[str, object], threads: int,
          code: Optional[str] = None) -> Dict[str, object]:
    """What a run about to start will be: commit, code hash (``code`` if already computed), config
    hash, threads, torch version, CPU model."""
    import torch

    return dict(commit=git_commit(repo), code=code or code_hash(repo), config=config_hash(config_path, options),
                threads=threads, torch=torch.__version__, cpu=cpu_model())


def stale_fields(recorded: Mapping[str, object], current: Mapping[str, object]) -> List[str]:
    """The decisive fields in which a recorded stamp differs from the current one (all, if none was recorded)."""
    return [key for key in DECISIVE if recorded.get(key) != current.get(key)]
