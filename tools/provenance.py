"""Where a number comes from: the training fingerprint of its (task, method), the config, the weight files it
loads, the thread count, the torch version and the CPU of a run.

A recorded result is reused only while all six still hold (the same code rounds differently on another CPU). The
fingerprint (``tools/fingerprints``) stands for the code: an edit that leaves every fingerprint identical trains the
same weights and reruns nothing; one that moves a fingerprint reruns the (task, method) it moved. The commit is
recorded for the reader. Result files written before fingerprints carry a ``code`` hash instead: such a record
counts as current where a fingerprint file of a checkout with that code hash (``known``) matches today's.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

from overhaul_det.cpuinfo import cpu_model

__all__ = ["CODE_PATHS", "WEIGHT_SUFFIXES", "code_hash", "recorded_code_hash", "git_commit", "config_hash",
           "weights_hash", "cpu_model", "stamp", "stale_fields", "recorded_fingerprint"]

# The code a checkout trains with: the package and the install. ``code_hash`` over them keys a fingerprint file to
# the exact code it was computed from.
CODE_PATHS = ("overhaul_det", "pyproject.toml")
# What the ``code`` hash of result files written before fingerprints left out: the lab those checkouts kept inside
# the package. Only to compute that hash of such a checkout (``recorded_code_hash``), so its records can be matched.
RECORDED_CODE_LEFT_OUT = ("overhaul_det/reproduce", "overhaul_det/provenance.py", "overhaul_det/demo.py",
                          "overhaul_det/report.py", "overhaul_det/bench")
# A config's string values with these endings name weight files (teachers, backbones) the run loads.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DECISIVE = ("fingerprint", "config", "weights", "threads", "torch", "cpu")


def _digest(chunks) -> str:
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()[:12]


def _code_files(repo: Path, left_out: Sequence[str] = ()) -> List[Path]:
    files = []
    for name in CODE_PATHS:
        path = repo / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        files += [f for f in candidates if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
                  and not _under(f.relative_to(repo), left_out)]
    return files


def _under(relative: Path, parts: Sequence[str]) -> bool:
    return any(relative == Path(part) or Path(part) in relative.parents for part in parts)


def _files_digest(repo: Path, left_out: Sequence[str]) -> str:
    def chunks():
        for f in _code_files(repo, left_out):
            yield f.relative_to(repo).as_posix().encode() + b"\0"
            yield f.read_bytes()
    return _digest(chunks())


def code_hash(repo: Path) -> str:
    """A hash of the content of every file under ``CODE_PATHS`` (path and bytes): which code a fingerprint file
    was computed from.

    Args:
        repo: the checkout.
    """
    return _files_digest(repo, ())


def recorded_code_hash(repo: Path) -> str:
    """The ``code`` hash that result files written before fingerprints recorded, of the checkout at ``repo``.

    Args:
        repo: the checkout (of that time, or any other).
    """
    return _files_digest(repo, RECORDED_CODE_LEFT_OUT)


def git_commit(repo: Path) -> str:
    """The short commit of ``repo``, with ``+modified`` when its code (``CODE_PATHS``) differs from it; 'unknown'
    outside git.

    Args:
        repo: the checkout.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], capture_output=True,
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
          fingerprint: str) -> Dict[str, object]:
    """What a run about to start will be: commit, the fingerprint of its (task, method), config hash, weights
    hash, threads, torch version, CPU model.

    Args:
        repo: the checkout that trains.
        config_path: the run's config.
        options: its ``--cfg-options``.
        threads: its torch threads.
        fingerprint: the hash of its (task, method) in the current fingerprint file.
    """
    import torch

    resolved = _resolved(config_path, options)
    return dict(commit=git_commit(repo), fingerprint=fingerprint, config=_config_digest(resolved),
                weights=_weights_digest(repo, resolved), threads=threads, torch=torch.__version__, cpu=cpu_model())


def recorded_fingerprint(recorded: Mapping[str, object], task: str, method: str,
                         known: Sequence[Mapping] = ()) -> Optional[str]:
    """The fingerprint a recorded stamp stands for: its own, or for a record written before fingerprints (a
    ``code`` hash), that of (``task``, ``method``) in the ``known`` fingerprint file of a checkout with that code.

    Args:
        recorded: a result's ``provenance``.
        task: the result's task.
        method: its fingerprinted method ('baseline' or 'ofd').
        known: fingerprint files of other checkouts (their ``recorded_code`` names the code they were made from).
    """
    if "fingerprint" in recorded:
        return recorded["fingerprint"]
    for fingerprints in known:
        if recorded.get("code") is not None and fingerprints.get("recorded_code") == recorded["code"]:
            entry = fingerprints["fingerprints"].get(task, {}).get(method)
            return entry["hash"] if entry else None
    return None


def stale_fields(recorded: Mapping[str, object], current: Mapping[str, object]) -> List[str]:
    """The decisive fields in which a recorded stamp differs from the current one (all, if none was recorded).

    Args:
        recorded: the stamp a result was recorded with (its ``fingerprint`` resolved by ``recorded_fingerprint``).
        current: the stamp the run would have now.
    """
    return [key for key in DECISIVE if recorded.get(key) != current.get(key)]
