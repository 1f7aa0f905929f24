"""One mmengine registry scope, ``overhaul_det``, for models, datasets, metrics and hooks.

Configs set ``default_scope = 'overhaul_det'``; names not found here fall back to mmengine's.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

__all__ = ["MODELS", "DATASETS", "METRICS", "HOOKS", "SCOPE"]

SCOPE = "overhaul_det"

MODELS = Registry("model", parent=MMENGINE_MODELS, scope=SCOPE, locations=["overhaul_det.tasks"])
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, scope=SCOPE, locations=["overhaul_det.datasets"])
METRICS = Registry("metric", parent=MMENGINE_METRICS, scope=SCOPE, locations=["overhaul_det.evaluation"])
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, scope=SCOPE, locations=["overhaul_det.engine"])
