"""One mmengine registry scope, ``overhaul_det``, children of mmengine's root registries.

Configs set ``default_scope = 'overhaul_det'``; names not found here fall back to mmengine's.
"""
from mmengine import registry as mm
from mmengine.registry import Registry

__all__ = ["SCOPE", "MODELS", "DATASETS", "METRICS", "HOOKS", "OPTIM_WRAPPERS"]

SCOPE = "overhaul_det"


def _child(name: str, parent: Registry, locations=()) -> Registry:
    return Registry(name, parent=parent, scope=SCOPE, locations=list(locations))


MODELS = _child("model", mm.MODELS, ["overhaul_det.tasks"])
DATASETS = _child("dataset", mm.DATASETS, ["overhaul_det.datasets"])
METRICS = _child("metric", mm.METRICS, ["overhaul_det.evaluation"])
HOOKS = _child("hook", mm.HOOKS, ["overhaul_det.engine"])
OPTIM_WRAPPERS = _child("optim_wrapper", mm.OPTIM_WRAPPERS, ["overhaul_det.engine"])
RUNNERS = _child("runner", mm.RUNNERS)
RUNNER_CONSTRUCTORS = _child("runner constructor", mm.RUNNER_CONSTRUCTORS)
LOOPS = _child("loop", mm.LOOPS)
DATA_SAMPLERS = _child("data sampler", mm.DATA_SAMPLERS)
TRANSFORMS = _child("transform", mm.TRANSFORMS)
MODEL_WRAPPERS = _child("model_wrapper", mm.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child("weight initializer", mm.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child("optimizer", mm.OPTIMIZERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child("optimizer wrapper constructor", mm.OPTIM_WRAPPER_CONSTRUCTORS, ["overhaul_det.engine"])
PARAM_SCHEDULERS = _child("parameter scheduler", mm.PARAM_SCHEDULERS)
EVALUATOR = _child("evaluator", mm.EVALUATOR)
TASK_UTILS = _child("task util", mm.TASK_UTILS)
VISUALIZERS = _child("visualizer", mm.VISUALIZERS)
VISBACKENDS = _child("vis_backend", mm.VISBACKENDS)
LOG_PROCESSORS = _child("log_processor", mm.LOG_PROCESSORS)
FUNCTIONS = _child("function", mm.FUNCTIONS)
