"""mmengine glue: safe checkpoint loading, hooks, CPU autocast, runner construction.

Importing it registers this package's hooks, wrappers and constructor under its own registry
scope; mmengine's own file backend and checkpoint loader are replaced only by ``install()``,
which building a Runner (or running the CLI) calls.
"""
from . import batch_lr, checkpoint, constructor, fileio, hooks, optim  # noqa: F401  (register hooks, wrappers, ...)
from . import reliability, resume, warmup  # noqa: F401  (CPU DDP wrapper, RNG resume hook, RegressorWarmupHook)

__all__ = ["install"]


def install() -> None:
    """Atomic local writes and weights-only checkpoint loading for mmengine (idempotent)."""
    fileio.install()
    checkpoint.install()
