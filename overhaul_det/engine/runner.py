"""Load, check and run configs with mmengine's Runner (train, test), as the CLI and tools do."""
from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import overhaul_det.datasets  # noqa: F401  (registers datasets)
import overhaul_det.engine  # noqa: F401  (safe loader, hooks, optim wrappers)
import overhaul_det.evaluation  # noqa: F401  (registers metrics)
import overhaul_det.tasks  # noqa: F401  (registers task models)
from overhaul_det.engine.reliability import prepare_distributed
from overhaul_det.engine.resume import prepare_resume

__all__ = ["load_config", "validate_config", "build_runner", "DictAction"]

_KNOWN_KEYS = set(inspect.signature(Runner.__init__).parameters) | {
    "_base_", "default_scope", "launcher", "randomness", "env_cfg", "log_level", "log_processor",
    "visualizer", "custom_hooks", "default_hooks", "resume", "load_from", "work_dir", "data_preprocessor",
    "model_wrapper_cfg", "custom_imports", "auto_scale_lr", "vis_backends",
}


def validate_config(cfg: Config, source: str = "config") -> None:
    """Reject top-level keys that look like misspellings of a known key (e.g. ``train_dataloder``)."""
    for key in cfg.keys():
        if key in _KNOWN_KEYS:
            continue
        close = difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1, cutoff=0.85)
        if close:
            raise ValueError(f"{source}: unknown key '{key}'; did you mean '{close[0]}'?")
    if "model" not in cfg:
        raise ValueError(f"{source}: no 'model' key; a config needs model=dict(type=...)")


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file, apply ``--cfg-options`` overrides and validate it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    validate_config(cfg, path)
    return cfg


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
) -> Runner:
    """A Runner from a loaded config with the CLI's overrides applied."""
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join("work_dirs", Path(config_path).stem)
    cfg.launcher = launcher
    if resume:
        cfg.resume = True
    if amp:
        _set_amp(cfg)
    prepare_resume(cfg)
    prepare_distributed(cfg, launcher)
    return Runner.from_cfg(cfg)
