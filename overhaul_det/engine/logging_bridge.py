"""The package's own log records (taps found, the teacher's precision, the alpha 'auto' chose) in
the run's log file, beside mmengine's: the Runner's file handlers are lent to the ``overhaul_det``
logger as soon as the Runner has built its logger, before it builds the model. The environment, config
and hook-order dumps mmengine prints at start go to files in the run's log folder instead, each named in
one line, and mmengine's notices about its own deprecated internals (FileClient) are dropped."""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import List

from mmengine.utils.dl_utils import collect_env

from mmengine.runner import Runner

__all__ = ["LoggingRunner"]

_LENT: List[logging.Handler] = []
# mmengine's notices about its own internals, repeated by every checkpoint save; nothing a user can change.
_MMENGINE_DEPRECATIONS = ("will be deprecated in future",)


def _not_an_mmengine_deprecation(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _MMENGINE_DEPRECATIONS)


def _lend_file_handlers(logger: logging.Logger) -> None:
    package = logging.getLogger("overhaul_det")
    while _LENT:
        package.removeHandler(_LENT.pop())
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            package.addHandler(handler)
            _LENT.append(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)


class LoggingRunner(Runner):
    """mmengine's Runner whose log file also receives the ``overhaul_det`` logger's records, and whose
    environment and config dump goes to ``<log_dir>/environment.txt``, not the screen."""

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        _lend_file_handlers(logger)
        if _not_an_mmengine_deprecation not in logger.filters:
            logger.addFilter(_not_an_mmengine_deprecation)
        return logger

    def get_hooks_info(self) -> str:
        path = Path(self.log_dir) / "hooks.txt"
        if self.rank == 0:
            path.write_text(super().get_hooks_info() + "\n")
        return f"written to {path}"

    def _log_env(self, env_cfg: dict) -> None:
        runtime = OrderedDict({**env_cfg, **self._randomness_cfg, "seed": self._seed, "launcher": self._launcher,
                               "distributed": self._distributed, "world_size": self._world_size})
        lines = ["System environment:", *(f"    {k}: {v}" for k, v in collect_env().items()),
                 "Runtime environment:", *(f"    {k}: {v}" for k, v in runtime.items())]
        if self.cfg._cfg_dict:
            lines += ["Config:", self.cfg.pretty_text]
        path = Path(self.log_dir) / "environment.txt"
        if self.rank == 0:
            path.write_text("\n".join(lines) + "\n")
        self.logger.info(f"environment and config written to {path}")
