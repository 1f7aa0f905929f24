"""Distributed training through ``torchrun ... --launcher pytorch`` on CPU (gloo) and GPU (NCCL).

mmengine 0.10 calls ``torch.cuda.set_device`` and passes ``device_ids`` to DDP even without CUDA;
here the gloo process group is started first and a wrapper drops ``device_ids`` for CPU modules.
"""
from __future__ import annotations

import datetime
import os
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel

from ..registry import MODEL_WRAPPERS

__all__ = ["CPUDistributedDataParallel", "prepare_distributed"]

_CPU_WRAPPABLE = ("MMDistributedDataParallel", "CPUDistributedDataParallel", "overhaul_det.CPUDistributedDataParallel")


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for a module on CPU: ``device_ids`` is dropped (DDP refuses it there)."""

    def __init__(self, module: torch.nn.Module, device_ids: Optional[List[int]] = None, **kwargs) -> None:
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def prepare_distributed(cfg: Config, launcher: str) -> None:
    """Set up ``cfg`` (and, on CPU, the gloo process group) for a distributed run; no-op for 'none'.

    Buffers (BatchNorm running statistics) are averaged across ranks before each validation, so
    every rank evaluates the same model.
    """
    if launcher == "none":
        return
    dist_cfg = cfg.env_cfg.setdefault("dist_cfg", {})
    if torch.cuda.is_available():
        dist_cfg["backend"] = "nccl"
    else:
        _check_cpu_launch(cfg, launcher)
        _use_cpu_wrapper(cfg)
        _init_gloo(dist_cfg)
    hooks = cfg.setdefault("custom_hooks", [])
    if not any(h.get("type") == "SyncBuffersHook" for h in hooks):
        hooks.append(dict(type="SyncBuffersHook"))


def _check_cpu_launch(cfg: Config, launcher: str) -> None:
    if launcher != "pytorch":
        raise ValueError(f"--launcher {launcher} needs CUDA; on CPU start with `torchrun ... --launcher pytorch`")
    if "RANK" not in os.environ:
        raise ValueError("--launcher pytorch needs RANK/WORLD_SIZE from torchrun: "
                         "`torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch`")
    if cfg.get("sync_bn"):
        raise ValueError(f"sync_bn={cfg.sync_bn!r}: torch's SyncBatchNorm runs on GPU only; "
                         "remove sync_bn for CPU training (BN statistics are averaged before validation)")


def _init_gloo(dist_cfg: dict) -> None:
    if dist.is_initialized():
        return
    kwargs = {k: v for k, v in dist_cfg.items() if k not in ("backend", "init_backend")}
    if kwargs.get("timeout") is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=kwargs["timeout"])
    dist.init_process_group(backend="gloo", **kwargs)


def _use_cpu_wrapper(cfg: Config) -> None:
    wrapper = cfg.get("model_wrapper_cfg") or {}
    if wrapper.get("type", "MMDistributedDataParallel") not in _CPU_WRAPPABLE:
        raise ValueError(f"model_wrapper_cfg.type={wrapper['type']!r} is not supported on CPU; "
                         "use MMDistributedDataParallel (run as CPUDistributedDataParallel there)")
    defaults = dict(broadcast_buffers=False, find_unused_parameters=cfg.get("find_unused_parameters", False))
    cfg.model_wrapper_cfg = {**defaults, **wrapper, "type": "overhaul_det.CPUDistributedDataParallel"}
