"""The tracer: one FX graph per model, train/eval mode and tracer options, cached while the
model's modules stay the same; nodes carry their module path and a qualified name
(``layer1.2.add``, as torchvision's ``get_graph_node_names``)."""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import math
import re
import weakref
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp



_NOT_LEAVES = ("Conv2dNormActivation", "Conv3dNormActivation", "BatchNormAct2d", "SyncBatchNormAct",
               "FrozenBatchNormAct2d", "MLP")


def _leaf_types() -> Tuple[type, ...]:
    leaves = set()
    try:
        from timm.layers import get_notrace_modules

        leaves.update(get_notrace_modules())
    except ImportError:
        pass
    from torchvision.models.feature_extraction import _get_leaf_modules_for_ops

    leaves.update(_get_leaf_modules_for_ops())
    return tuple(t for t in leaves if t.__name__ not in _NOT_LEAVES)


def _autowrap_functions() -> Tuple[Callable, ...]:
    try:
        from timm.layers import get_notrace_functions

        return tuple(get_notrace_functions())
    except ImportError:
        return ()


TRACER_KEYS = ("leaf_modules", "autowrap_functions", "autowrap_modules")


def _resolve(item: Any) -> Any:
    """A class or function, or its dotted import path (for configs): 'timm.layers.PatchEmbed'."""
    if not isinstance(item, str):
        return item
    module_name, _, attribute = item.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"tracer_kwargs names {item!r}, which cannot be imported ({error}); "
                         "give the class or function itself, or its full dotted path") from error


class _PathTracer(fx.Tracer):
    """FX tracer that stores the module path of every node in ``node.meta['module_path']`` and its
    qualified name (``layer1.2.add``, as torchvision's ``get_graph_node_names``) in ``node.meta['qualname']``.

    ``tracer_kwargs`` follows torchvision's feature extraction: ``leaf_modules`` (module types
    traced as single calls), ``autowrap_functions`` and ``autowrap_modules`` (functions and
    modules whose calls are not traced into); classes and functions or their dotted paths.
    """

    proxy_buffer_attributes = True

    def __init__(self, tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None) -> None:
        options = dict(tracer_kwargs or {})
        unknown = sorted(set(options) - set(TRACER_KEYS))
        if unknown:
            raise ValueError(f"tracer_kwargs keys {unknown} are unknown; valid keys: {', '.join(TRACER_KEYS)}")
        functions = _autowrap_functions() + tuple(_resolve(f) for f in options.get("autowrap_functions", ()))
        extra = {}
        if "autowrap_modules" in options:
            extra["autowrap_modules"] = (math, *(_resolve(m) for m in options["autowrap_modules"]))
        super().__init__(autowrap_functions=functions, param_shapes_constant=True, **extra)
        self.leaves = _leaf_types() + tuple(_resolve(m) for m in options.get("leaf_modules", ()))
        self.current_path = ""
        self._qualnames: set = set()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        previous = self.current_path
        self.current_path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.current_path = previous

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        proxy.node.meta["module_path"] = self.current_path
        proxy.node.meta["qualname"] = self._qualname(proxy.node)
        return proxy

    def _qualname(self, node: fx.Node) -> str:
        """A module call is named by its module path, any other op by ``path.op``; the n-th repeat of
        a name within its module gets ``_n`` (FX's own suffixes count across the whole graph)."""
        if node.op == "call_module":
            base = str(node.target)
        else:
            op = re.sub(r"_\d+$", "", node.name)
            base = f"{self.current_path}.{op}" if self.current_path else op
        name, repeat = base, 0
        while name in self._qualnames:
            repeat += 1
            name = f"{base}_{repeat}"
        self._qualnames.add(name)
        return name


def qualified_name(node: fx.Node) -> str:
    """The name a tap or ``nodes=[...]`` uses for ``node``: stable when upstream adds ops elsewhere."""
    return node.meta.get("qualname", node.name)


def closest_names(name: str, candidates: Sequence[str]) -> str:
    """'name' (closest: a, b, c), for an error about an unknown node name."""
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return f"'{name}' (closest: {', '.join(close)})" if close else f"'{name}'"


def _concrete_defaults(model: nn.Module) -> Dict[str, Any]:
    signature = inspect.signature(type(model).forward)
    params = list(signature.parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, fx.Graph]]" = weakref.WeakKeyDictionary()


def _cache_key(model: nn.Module, training: bool, tracer_kwargs: Optional[Dict[str, Sequence[Any]]]) -> tuple:
    """What a graph depends on: the mode, the tracer options, and the model's module tree."""
    options = tuple(sorted((key, tuple(map(str, values))) for key, values in (tracer_kwargs or {}).items()))
    modules = tuple((name, type(module)) for name, module in model.named_modules())
    return training, options, type(model), modules


def _copy(graph: fx.Graph) -> fx.Graph:
    """A copy whose nodes (and their meta dicts) the caller may change."""
    copy = fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    return copy


def trace(model: nn.Module, training: bool = False, tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None
          ) -> fx.Graph:
    """``model``'s original forward traced in the given mode; nodes carry their module path and
    qualified name. Traced once per model, mode and tracer options; each call gets its own copy."""
    key = _cache_key(model, training, tracer_kwargs)
    cached = _GRAPHS.get(model, {})
    if key not in cached:
        cached[key] = _trace(model, training, _PathTracer(tracer_kwargs))
        _GRAPHS[model] = cached
    return _copy(cached[key])


def _trace(model: nn.Module, training: bool, tracer: fx.Tracer) -> fx.Graph:
    was_training = model.training
    model.train()
    model.eval()
    model.train(training)
    try:
        return tracer.trace(model, concrete_args=_concrete_defaults(model) or None)
    except Exception as error:
        raise TraceFailure(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}. "
            "Pass a traceable part (e.g. the backbone, or model.backbone.body for a detector), "
            "or trace the failing submodule as one call: tracer_kwargs={'leaf_modules': [ItsClass]} "
            "(find_taps, FeatureDistiller, or ofd=dict(tracer_kwargs=...) in a config, with dotted paths there).",
            reason=f"torch.fx cannot trace it ({type(error).__name__})",
        ) from error
    finally:
        model.train(was_training)


def sample_input(model: nn.Module, input_size: Optional[Sequence[int]]) -> Tensor:
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = cfg.get("input_size", (3, 224, 224))
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if len(input_size) == 2:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 3
        input_size = (channels, *input_size)
    return torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))


class TraceFailure(ValueError):
    """torch.fx could not trace the model; ``reason`` says so in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SampleRunError(ValueError):
    """The model could not run on the sample input used to measure shapes (e.g. a fixed-size head)."""


def propagate_shapes(model: nn.Module, graph: fx.Graph, sample: Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback
            ShapeProp(fx.GraphModule(model, graph)).propagate(sample)
    except Exception as error:
        cause = error.__cause__ or error
        raise SampleRunError(
            f"{type(model).__name__} does not run on a sample of shape {tuple(sample.shape)}: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''} "
            "Give an input size the model accepts (input_size=(C, H, W) in Python, --input-size in the CLI)."
        ) from error
    finally:
        model.train(was_training)
