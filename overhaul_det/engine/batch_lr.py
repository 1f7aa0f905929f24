"""The learning rate that follows the batch: the total batch and the learning rate logged at the start of training,
and a warning where the batch differs from the one the config's learning rate was set for and nothing scales it.

mmengine's Runner scales the rate itself (``auto_scale_lr.enable``, the ``--auto-scale-lr`` switch, as in mmdet).
"""
from __future__ import annotations

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict

from ..registry import HOOKS

__all__ = ["BatchLRHook", "enable_auto_scale_lr"]


def enable_auto_scale_lr(cfg: Config, source: str) -> None:
    """Turn on mmengine's linear scaling of the learning rate by the total batch (``--auto-scale-lr``).

    Args:
        cfg: the loaded config; it must set ``auto_scale_lr.base_batch_size``.
        source: the config file, named in the error.
    """
    if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
        raise ValueError(f"--auto-scale-lr: {source} sets no auto_scale_lr.base_batch_size (the total batch its "
                         "learning rate is for); add auto_scale_lr = dict(base_batch_size=N) or "
                         "--cfg-options auto_scale_lr.base_batch_size=N")
    cfg.auto_scale_lr = dict(cfg.auto_scale_lr, enable=True)


def _learning_rates(optim_wrapper) -> list:
    """Each parameter group's learning rate before any schedule: warm-up factors are not the rate."""
    wrappers = optim_wrapper.values() if isinstance(optim_wrapper, OptimWrapperDict) else [optim_wrapper]
    return [group.get("initial_lr", group["lr"]) for wrapper in wrappers for group in wrapper.optimizer.param_groups]


@HOOKS.register_module()
class BatchLRHook(Hook):
    """Log the total batch (processes x images per process) and the learning rate at the start of training;
    warn where it differs from ``auto_scale_lr.base_batch_size`` and the rate was not scaled to it."""

    priority = "LOW"

    def before_train(self, runner) -> None:
        total = runner.world_size * runner.train_dataloader.batch_size
        scaling = runner.cfg.get("auto_scale_lr") or {}
        rates = sorted(set(_learning_rates(runner.optim_wrapper)))
        shown = ", ".join(f"{rate:.6g}" for rate in rates)
        scaled = " (scaled by --auto-scale-lr)" if scaling.get("enable") else ""
        runner.logger.info(f"total batch {total} ({runner.world_size} process(es) x "
                           f"{runner.train_dataloader.batch_size}); learning rate {shown}{scaled}")
        base = scaling.get("base_batch_size")
        if base and total != base and not scaling.get("enable"):
            runner.logger.warning(
                f"the config's learning rate is for a total batch of {base} (auto_scale_lr.base_batch_size) but this "
                f"run's is {total}: train with --auto-scale-lr to scale it by {total}/{base} (or set "
                "auto_scale_lr.enable=True), or keep it on purpose")
