"""mmengine glue: safe checkpoint loading, hooks, CPU autocast, runner construction."""
from . import checkpoint, constructor, hooks, optim  # noqa: F401  (registers the loader, hooks, wrappers, constructor)
from . import fileio, reliability, resume  # noqa: F401  (atomic local writes, CPU DDP wrapper, RNG resume hook)
from . import warmup  # noqa: F401  (registers RegressorWarmupHook)
