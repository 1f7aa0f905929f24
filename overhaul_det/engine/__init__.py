"""mmengine glue: safe checkpoint loading, hooks, CPU autocast, runner construction."""
from . import checkpoint, hooks, optim  # noqa: F401  (registers the loader, hooks and wrappers)
from . import warmup  # noqa: F401  (registers RegressorWarmupHook)
