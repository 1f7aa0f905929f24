"""The package's own log records (taps found, the teacher's precision, the alpha 'auto' chose) in
the run's log file, beside mmengine's: the Runner's file handlers are lent to the ``overhaul_det``
logger as soon as the Runner has built its logger, before it builds the model."""
from __future__ import annotations

import logging
from typing import List

from mmengine.runner import Runner

__all__ = ["LoggingRunner"]

_LENT: List[logging.Handler] = []


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
    """mmengine's Runner whose log file also receives the ``overhaul_det`` logger's records."""

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        _lend_file_handlers(logger)
        return logger
