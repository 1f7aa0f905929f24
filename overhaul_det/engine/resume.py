"""Resume that survives kills: pick a checkpoint that loads, and continue the same random streams.

mmengine resumes from the path written in ``<work_dir>/last_checkpoint``; that file can be
missing, empty, or name a checkpoint that a kill left unreadable. Here each candidate is loaded
(weights_only, allow-listed) before it is chosen, newest first. mmengine saves no RNG state, so
``ResumeRNGHook`` stores it in each checkpoint and restores it where the interrupted run stood.
Dataloader workers draw from their own RNGs, seeded by mmengine when they start: ``fresh_epoch_workers``
starts them afresh each epoch, so an epoch resumed in new workers draws what it drew uninterrupted.
"""
from __future__ import annotations

import contextlib
import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from ..registry import HOOKS
from .checkpoint import load_checkpoint_file

__all__ = ["find_resume_checkpoint", "checkpoint_candidates", "prepare_resume", "fresh_epoch_workers",
           "ResumeRNGHook", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


def checkpoint_candidates(work_dir: Path) -> List[Path]:
    """``iter_N.pth``/``epoch_N.pth`` in ``work_dir``, newest (modification time, then N) first."""
    found = [p.resolve() for p in Path(work_dir).glob("*.pth") if _NAME.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, int(_NAME.match(p.name).group(1))), reverse=True)


def _named_by_last_checkpoint(work_dir: Path) -> Optional[Path]:
    record = work_dir / "last_checkpoint"
    if not record.is_file():
        return None
    text = record.read_text(errors="replace").strip()
    return Path(text).resolve() if text else None


def _problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or None if it loads as an mmengine checkpoint."""
    if path.is_file() and path.stat().st_size == 0:
        return "empty file"
    try:
        data = load_checkpoint_file(path)
    except Exception as error:  # any failure to read means: not this one
        first = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {first[:100]}{'...' if len(first) > 100 else ''}"
    if not isinstance(data, dict) or "state_dict" not in data or "meta" not in data:
        return "not an mmengine checkpoint (no 'state_dict'/'meta')"
    return None


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint in ``work_dir`` to resume from; None if there is none at all.

    Raises ValueError when checkpoints exist but none loads, rather than silently starting over.
    """
    work_dir = Path(work_dir)
    named = _named_by_last_checkpoint(work_dir)
    if named is not None and not named.is_file():
        logger.warning("last_checkpoint names %s, which does not exist; looking for others in %s", named, work_dir)
        named = None
    candidates = ([named] if named else []) + [p for p in checkpoint_candidates(work_dir) if p != named]
    rejected: List[Tuple[Path, str]] = []
    for path in candidates:
        problem = _problem(path)
        if problem is None:
            if rejected:
                logger.warning("resuming from %s instead: %s", path,
                               "; ".join(f"{p} is unusable ({why})" for p, why in rejected))
            return str(path)
        rejected.append((path, problem))
    if rejected:
        raise ValueError(
            f"--resume: no checkpoint in {work_dir} loads ({'; '.join(f'{p.name}: {why}' for p, why in rejected)}); "
            "move them away to start over, or pass --cfg-options load_from=CHECKPOINT"
        )
    return None


def _iteration_based(train_cfg: Any) -> bool:
    """Whether mmengine trains ``train_cfg`` by iterations: its loop then replays every batch on resume."""
    if not isinstance(train_cfg, dict):
        return False
    if "type" in train_cfg:
        return train_cfg["type"] == "IterBasedTrainLoop"
    return train_cfg.get("by_epoch") is False


def fresh_epoch_workers(cfg: Config) -> None:
    """Turn off ``train_dataloader.persistent_workers`` in epoch-based training (logged).

    Persistent workers carry their RNGs from epoch to epoch, while a resumed run starts new workers at its
    first epoch, so its augmentations would differ; workers started each epoch draw the same in both.
    """
    loader = cfg.get("train_dataloader")
    if not isinstance(loader, dict) or not loader.get("num_workers") or not loader.get("persistent_workers"):
        return
    if _iteration_based(cfg.get("train_cfg")):
        return
    loader["persistent_workers"] = False
    logger.info("train_dataloader.persistent_workers=False: workers start afresh each epoch, so that --resume "
                "continues with the augmentations of an uninterrupted run")


def prepare_resume(cfg: Config) -> None:
    """Add ``ResumeRNGHook`` and start workers afresh each epoch; with ``cfg.resume`` and no ``load_from``,
    pick the checkpoint here (none yet: said, and training starts over)."""
    fresh_epoch_workers(cfg)
    hooks = cfg.setdefault("custom_hooks", [])
    if not any(h.get("type") == "ResumeRNGHook" for h in hooks):
        hooks.append(dict(type="ResumeRNGHook"))
    if cfg.get("resume") and not cfg.get("load_from"):
        cfg.load_from = find_resume_checkpoint(cfg.work_dir)
        if cfg.load_from is None:
            logger.warning("--resume: no checkpoint in %s yet; training starts from the beginning", cfg.work_dir)
            cfg.resume = False


def rng_state() -> Dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=random.getstate(),
                 numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), cached=float(cached)))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class _SkipWithoutRandomness:
    """Wraps a train loop's data iterator: the first ``skips`` batches (the ones mmengine's
    IterBasedTrainLoop fetches again and drops on resume) are drawn without advancing any RNG."""

    def __init__(self, iterator, skips: int) -> None:
        self.iterator = iterator
        self.skips = skips

    def __iter__(self) -> "_SkipWithoutRandomness":
        return self

    def __next__(self):
        if self.skips <= 0:
            return next(self.iterator)
        self.skips -= 1
        with _rng_untouched():
            return next(self.iterator)


@HOOKS.register_module()
class ResumeRNGHook(Hook):
    """Checkpoints carry the RNG states of the moment they are written; a resumed run starts its
    next batch from them, so random augmentations continue as in an uninterrupted run.

    Validation during training leaves the RNGs as it found them (it would otherwise draw from
    them between a checkpoint and the next batch). Under DDP, rank 0's states are saved and every
    rank restores them: exact when all ranks draw alike (the default ``diff_rank_seed=False``).
    """

    priority = "LOWEST"

    def __init__(self) -> None:
        self._loaded: Optional[Dict[str, Any]] = None
        self._before_val: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["rng_state"] = rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get("rng_state")

    def before_train(self, runner) -> None:
        if self._loaded is None or runner.iter == 0:
            return
        if runner.world_size > 1 and runner.cfg.get("randomness", {}).get("diff_rank_seed"):
            runner.logger.warning("ResumeRNGHook: diff_rank_seed=True; only rank 0's RNG state was saved, "
                                  "so other ranks' augmentations differ from an uninterrupted run")
        set_rng_state(self._loaded)
        loop = runner.train_loop
        if hasattr(loop, "dataloader_iterator"):
            loop.dataloader_iterator = _SkipWithoutRandomness(loop.dataloader_iterator, runner.iter)
        self._loaded = None

    def before_val(self, runner) -> None:
        self._before_val = rng_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            set_rng_state(self._before_val)
            self._before_val = None
