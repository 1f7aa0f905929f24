"""Where a number comes from: the code, the config, the weight files it loads, the thread count, the
torch version and the CPU of a run.

A recorded result is reused only while all six still hold (the same code rounds differently on
another CPU); the commit is recorded for the reader, but the content decides, so a commit that
changes only docs, tests, other configs or the tools that start and report runs (``NOT_TRAINING``), or adds a
teacher another task loads, reruns nothing.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional

from .cpuinfo import cpu_model

__all__ = ["CODE_PATHS", "NOT_TRAINING", "WEIGHT_SUFFIXES", "code_hash", "git_commit", "config_hash", "weights_hash", "cpu_model",
           "stamp", "stale_fields"]

# What a training run executes besides its config, data and weights: the package and the install. The run's own
# config (its ``_base_`` files merged) is ``config_hash``'s; editing or adding another config reruns nothing.
CODE_PATHS = ("overhaul_det", "pyproject.toml")
# The package's parts that no training imports: they start, time or report runs, so editing them reruns nothing
# (tests/test_provenance.py checks that a training and every module it may import leave them out).
NOT_TRAINING = ("overhaul_det/reproduce", "overhaul_det/provenance.py", "overhaul_det/demo.py",
                "overhaul_det/report.py", "overhaul_det/bench")
# A config's string values with these endings name weight files (teachers, backbones) the run loads.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DECISIVE = ("code", "config", "weights", "threads", "torch", "cpu")


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
        files += [f for f in candidates if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
                  and not _outside_training(f.relative_to(repo))]
    return files


def _outside_training(relative: Path) -> bool:
    return any(relative == Path(part) or Path(part) in relative.parents for part in NOT_TRAINING)


def code_hash(repo: Path) -> str:
    """A hash of the content of every file under ``CODE_PATHS`` but ``NOT_TRAINING`` (path and bytes)."""
    def chunks():
        for f in _code_files(repo):
            yield f.relative_to(repo).as_posix().encode() + b"\0"
            yield f.read_bytes()
    return _digest(chunks())


def git_commit(repo: Path) -> str:
    """The short commit of ``repo``, with ``+modified`` when the hashed code differs from it (``code_hash``'s
    files: an edit under ``NOT_TRAINING`` does not count); 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                                check=True).stdout.strip()
        excluded = [f":(exclude){part}" for part in NOT_TRAINING]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS, *excluded], capture_output=True,
                               text=True, cwd=repo, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")


def _resolved(config_path: Path, options: Mapping[str, object]) -> dict:
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path))
    cfg.merge_from_dict(dict(options))
    return cfg.to_dict()


def _config_digest(resolved: dict) -> str:
    return _digest([json.dumps(resolved, sort_keys=True, default=str).encode()])


def config_hash(config_path: Path, options: Mapping[str, object]) -> str:
    """A hash of the config as mmengine resolves it (``_base_`` files merged) with ``options`` applied."""
    return _config_digest(_resolved(config_path, options))


def _strings(tree) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, Mapping):
        for value in tree.values():
            yield from _strings(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _strings(value)


def weights_hash(repo: Path, config_path: Path, options: Mapping[str, object]) -> str:
    """A hash of the weight files the resolved config names (paths relative to ``repo``, as configs
    write them): their names and bytes, a missing one by its name alone."""
    return _weights_digest(repo, _resolved(config_path, options))


def _weights_digest(repo: Path, resolved: dict) -> str:
    names = sorted({s for s in _strings(resolved) if s.endswith(WEIGHT_SUFFIXES)})

    def chunks():
        for name in names:
            path = Path(name) if Path(name).is_absolute() else repo / name
            yield name.encode() + b"\0"
            yield path.read_bytes() if path.is_file() else b"missing"
    return _digest(chunks())


def stamp(repo: Path, config_path: Path, options: Mapping[str, object], threads: int,
          code: Optional[str] = None) -> Dict[str, object]:
    """What a run about to start will be: commit, code hash (``code`` if already computed), config
    hash, weights hash, threads, torch version, CPU model."""
    import torch

    resolved = _resolved(config_path, options)
    return dict(commit=git_commit(repo), code=code or code_hash(repo), config=_config_digest(resolved),
                weights=_weights_digest(repo, resolved), threads=threads, torch=torch.__version__, cpu=cpu_model())


def stale_fields(recorded: Mapping[str, object], current: Mapping[str, object]) -> List[str]:
    """The decisive fields in which a recorded stamp differs from the current one (all, if none was recorded)."""
    return [key for key in DECISIVE if recorded.get(key) != current.get(key)]
