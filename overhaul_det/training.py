"""Assemble runs from configs: load, check and build mmengine Runners (train, test), as the CLI and tools do.

The one place that registers every task, dataset and metric; ``engine/`` stays mmengine glue and imports no task."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch import nn

import overhaul_det.datasets  # noqa: F401  (registers datasets)
import overhaul_det.engine  # noqa: F401  (safe loader, hooks, optim wrappers)
import overhaul_det.evaluation  # noqa: F401  (registers metrics)
import overhaul_det.tasks  # noqa: F401  (registers task models)
from overhaul_det.config_bases import resolve_bases
from overhaul_det.datasets.classification import share_train_classes
from overhaul_det.datasets.voc import check_normalised_once
from overhaul_det.engine import install
from overhaul_det.engine.batch_lr import enable_auto_scale_lr
from overhaul_det.engine.checkpoint import load_checkpoint_file, load_state_into
from overhaul_det.engine.keys import check_config_keys, check_option_keys, check_top_level_keys
from overhaul_det.engine.logging_bridge import LoggingRunner
from overhaul_det.engine.paths import DATALOADERS, fill_data_root, find_config, resolve_repo_path, resolve_repo_paths
from overhaul_det.engine.reliability import prepare_distributed
from overhaul_det.engine.resume import prepare_resume
from overhaul_det.export import STUDENT_PREFIXES, student_state_dict

__all__ = ["load_config", "validate_config", "build_runner", "build_test_runner", "error_message", "DictAction"]

def validate_config(cfg: Config, source: str = "config") -> None:
    """Reject top-level keys that look like misspellings of a known or inherited key (``data_rot``) and a config
    without ``model``.

    Args:
        cfg: the loaded config.
        source: its file, named in the error.
    """
    check_top_level_keys(cfg, source)
    if "model" not in cfg:
        raise ValueError(f"{source}: no 'model' key; a config needs model=dict(type=...)")


def load_config(path: str, cfg_options: Optional[dict] = None, data_root: Optional[str] = None) -> Config:
    """Read a config file, apply ``--cfg-options`` and ``--data-root``, validate it, and make its paths
    and dataloaders work from any folder and with any worker count.

    ``_base_`` entries spelt ``overhaul_det::<path under configs/>`` inherit the shipped configs from any folder
    (mmengine resolves ``pkg::`` only for OpenMMLab packages, so ``config_bases`` does it)."""
    path = find_config(path)
    with tempfile.TemporaryDirectory(prefix="overhaul_det_config_") as folder:
        cfg = Config.fromfile(resolve_bases(path, folder))
        if cfg_options:
            check_option_keys(cfg, path, cfg_options)
            cfg.merge_from_dict(cfg_options)
        if data_root is not None:
            cfg.data_root = data_root
        validate_config(cfg, path)
        check_config_keys(cfg)
        check_normalised_once(cfg, path)
        fill_data_root(cfg, required=data_root is not None)
        resolve_repo_paths(cfg, path)
        _fit_workers(cfg)
        share_train_classes(cfg)
    return cfg


def _fit_workers(cfg: Config) -> None:
    """Keep ``persistent_workers`` only where there are workers: torch refuses it with num_workers=0."""
    for key in DATALOADERS:
        loader = cfg.get(key)
        if isinstance(loader, dict) and not loader.get("num_workers", 0):
            loader.pop("persistent_workers", None)


def _set_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper
    if torch.cuda.is_available():
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("dtype", "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    else:
        wrapper.type = "CPUAutocastOptimWrapper"
        wrapper.setdefault("dtype", "bfloat16")


def build_runner(
    cfg: Config,
    config_path: str,
    work_dir: Optional[str] = None,
    resume: bool = False,
    amp: bool = False,
    launcher: str = "none",
    auto_scale_lr: bool = False,
) -> Runner:
    """A Runner from a loaded config with the CLI's overrides applied (mmengine's local file backend
    and checkpoint loader replaced by the safe ones: ``engine.install``)."""
    install()
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join("work_dirs", Path(config_path).stem)
    cfg.launcher = launcher
    if resume:
        cfg.resume = True
    if amp:
        _set_amp(cfg)
    if auto_scale_lr:
        enable_auto_scale_lr(cfg, config_path)
    prepare_resume(cfg)
    hooks = cfg.setdefault("custom_hooks", [])
    for name in ("FiniteInputHook", "InputSizeHook", "BatchLRHook"):
        if not any(hook.get("type") == name for hook in hooks):
            hooks.append(dict(type=name))
    prepare_distributed(cfg, launcher)
    return LoggingRunner.from_cfg(cfg)


def _student_only(model: dict) -> dict:
    """The model config with OFD and KD off and no teacher, so no teacher file is read."""
    model = dict(model, teacher=None, ofd=dict(model.get("ofd") or {}, alpha=0))
    if "kd_weight" in model:
        model["kd_weight"] = 0.0
    return model


def _student_weights(checkpoint: dict) -> dict:
    """The student's part of a training checkpoint, or the whole of an exported (prefix-free) state_dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if "state_dict" in checkpoint or any(key.startswith(STUDENT_PREFIXES) for key in state):
        return student_state_dict(checkpoint)
    return state


def _load_student(model: nn.Module, checkpoint: str) -> None:
    """Load the student's weights strictly from a checkpoint of any method (``distiller.student.``
    or ``student_model.`` keys) or from a file ``overhaul-det export`` wrote."""
    state = _student_weights(load_checkpoint_file(checkpoint))
    load_state_into(model.student, state, f"checkpoint {checkpoint}", "the config's student",
                    "test with the config the checkpoint was trained with")


def build_test_runner(cfg: Config, config_path: str, checkpoint: str, work_dir: Optional[str] = None,
                      launcher: str = "none") -> Runner:
    """A Runner that evaluates the student of ``checkpoint``; testing needs no teacher, so none is built."""
    cfg.model = _student_only(cfg.model)
    cfg.load_from = None
    cfg.resume = False
    runner = build_runner(cfg, config_path, work_dir, launcher=launcher)
    checkpoint = resolve_repo_path(checkpoint, config_path)
    _load_student(runner.model.module if is_model_wrapper(runner.model) else runner.model, checkpoint)
    return runner


def error_message(error: BaseException) -> str:
    """The message of ``error`` alone: for an error raised in a DataLoader worker, without the worker's traceback
    that torch puts before it (a bad image's one clear message, not buried under it).

    Args:
        error: the exception a run stopped with.
    """
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    marker = f"\n{type(error).__name__}: "
    start = text.rfind(marker)
    return text[start + len(marker):].strip() if start >= 0 else text
