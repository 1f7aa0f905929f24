"""The fingerprint trainings: each (task, method) trained in a subprocess of the checkout under test, through its
``python -m overhaul_det.cli train`` command line (old and new checkouts share it), at one thread, on the synthetic
data; then the SHA-256 of the student's and regressors' weights."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from tools.synthetic import write_fashion_mnist

from .spec import FASHION_PER_CLASS, FORMAT, METHODS, SCENES, TASKS

__all__ = ["fingerprint_checkout", "hash_state", "fingerprinted_keys", "train_and_hash"]

logger = logging.getLogger(__name__)


def _checkout_env(code_root: Path, data_root: Path) -> Dict[str, str]:
    """The environment of a run: only ``code_root`` on the import path, one thread, the synthetic Fashion-MNIST."""
    fashion = data_root / "fashion-mnist"
    return {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OVERHAUL_DET_DATA": str(fashion), "OVERHAUL_DET_DEBIAN_DATA": str(fashion / "debian")}


def _cli(arguments: Sequence[str], env: Mapping[str, str], code_root: Path, log: Path) -> None:
    """``python -m overhaul_det.cli ARGUMENTS`` in ``code_root``; its output goes to ``log``, named on failure."""
    command = [sys.executable, "-m", "overhaul_det.cli", *arguments]
    with log.open("w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=code_root, env=dict(env)).returncode
    if status != 0:
        raise RuntimeError(f"`{' '.join(command)}` in {code_root} failed with status {status}; its output: {log}")


def write_data(data_root: Path, code_root: Path) -> Path:
    """The synthetic Fashion-MNIST (here) and the scenes made from it by the checkout's ``make-scenes``; returns
    the scenes folder (COCO and VOC layouts in one)."""
    data_root.mkdir(parents=True, exist_ok=True)
    write_fashion_mnist(data_root / "fashion-mnist", FASHION_PER_CLASS)
    scenes = data_root / "scenes"
    env = _checkout_env(code_root, data_root)
    for split, count in SCENES.items():
        _cli(["make-scenes", str(scenes), "--split", split, "--num-images", str(count)], env, code_root,
             data_root / f"make-scenes-{split}.log")
    return scenes


def fingerprinted_keys(state: Mapping[str, torch.Tensor]) -> List[str]:
    """The keys a fingerprint hashes: the student's and the OFD regressors' (a part named ``student...`` or
    ``regressors``: ``student_model.`` without a teacher, ``distiller.student.`` with one), never the teacher's (a
    part named ``teacher...``) nor the distiller's margins.
    """
    def trained(key: str) -> bool:
        parts = key.split(".")
        if any(part.startswith("teacher") for part in parts):
            return False
        return any(part.startswith("student") or part == "regressors" for part in parts)
    return sorted(k for k in state if trained(k))


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    header = f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode()
    return hashlib.sha256(header + flat.view(torch.uint8).numpy().tobytes()).digest()


def hash_state(state: Mapping[str, torch.Tensor]) -> Tuple[str, Dict[str, str]]:
    """SHA-256 over the fingerprinted tensors in sorted key order (name, dtype, shape and exact bytes of each),
    and each tensor's own digest (16 hex digits), which names the first tensor that moved.

    Args:
        state: a state_dict (the model's, as a training checkpoint holds it).
    """
    overall, tensors = hashlib.sha256(), {}
    for name in fingerprinted_keys(state):
        digest = _tensor_digest(name, state[name])
        overall.update(digest)
        tensors[name] = digest.hex()[:16]
    return overall.hexdigest(), tensors


def _last_state(work_dir: Path) -> Dict[str, torch.Tensor]:
    from overhaul_det.engine.checkpoint import load_checkpoint_file

    checkpoint = (work_dir / "last_checkpoint").read_text().strip()
    return load_checkpoint_file(checkpoint)["state_dict"]


def _last_metrics(work_dir: Path) -> Dict[str, float]:
    """The metrics of the run's last validation, from mmengine's ``vis_data/scalars.json``."""
    metrics: Dict[str, float] = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if any("/" in key for key in record):
                metrics = {k: v for k, v in record.items() if "/" in k}
    return metrics


def train_and_hash(task: str, method: str, code_root: Path, work_dir: Path, data_root: Path,
                   scenes: Path) -> Dict[str, object]:
    """Train ``task`` with ``method`` in ``code_root``'s code and return its fingerprint: the hash, each tensor's
    digest and the last validation's metrics."""
    spec = TASKS[task]
    options = {**spec["options"], **METHODS[method]}
    arguments = ["train", str(code_root / spec["config"]), "--work-dir", str(work_dir),
                 "--cfg-options", *[f"{k}={v}" for k, v in options.items()]]
    if spec["data"] == "scenes":
        arguments += ["--data-root", str(scenes)]
    work_dir.mkdir(parents=True, exist_ok=True)
    logger.info("fingerprint %s / %s in %s", task, method, code_root)
    _cli(arguments, _checkout_env(code_root, data_root), code_root, work_dir / "train.log")
    state = _last_state(work_dir)
    digest, tensors = hash_state(state)
    if not tensors:
        raise RuntimeError(f"{task} / {method}: the checkpoint in {work_dir} holds no student keys to hash")
    return dict(hash=digest, tensors=tensors, metrics=_last_metrics(work_dir))


def fingerprint_checkout(code_root: Path, work_dir: Path, tasks: Sequence[str] = tuple(TASKS),
                         methods: Sequence[str] = tuple(METHODS), previous: Optional[Mapping] = None) -> Dict:
    """Fingerprint every (task, method) of the checkout at ``code_root``, its runs under ``work_dir``.

    Args:
        code_root: the checkout whose code trains (its ``overhaul_det``, ``configs`` and ``checkpoints``).
        work_dir: where the data and the runs go (emptied of earlier runs first, so nothing stale is hashed).
        tasks: the tasks to fingerprint (default all).
        methods: the methods of each (default all).
        previous: a fingerprint file of the same checkout whose other entries are kept.
    """
    from tools.provenance import code_hash, cpu_model, git_commit, recorded_code_hash

    code_root = code_root.resolve()
    scenes = write_data(work_dir / "data", code_root)
    fingerprints = {task: dict(previous["fingerprints"].get(task, {})) if previous else {} for task in TASKS}
    for task in tasks:
        for method in methods:
            run_dir = work_dir / "runs" / task / method
            _empty(run_dir)
            fingerprints[task][method] = train_and_hash(task, method, code_root, run_dir, work_dir / "data", scenes)
            logger.info("%s / %s: %s", task, method, fingerprints[task][method]["hash"][:16])
    return dict(format=FORMAT, code_root=str(code_root), commit=git_commit(code_root), code=code_hash(code_root),
                recorded_code=recorded_code_hash(code_root), threads=1, torch=torch.__version__, cpu=cpu_model(),
                fingerprints={task: entries for task, entries in fingerprints.items() if entries})


def _empty(run_dir: Path) -> None:
    import shutil

    if run_dir.exists():
        shutil.rmtree(run_dir)
