"""The forward rewrite: a regenerated forward (one per train/eval mode) bound to the original
module, which stores the tensors at the taps while ``capture_taps`` is open; state_dict keys,
their order, outputs and numerics stay as they were."""
from __future__ import annotations

import contextlib
import operator
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .modules import attach_module_taps, detach_module_taps
from .predicates import ACTIVATION_FUNCTIONS, is_passthrough
from .tap import Tap
from .trace import closest_names, qualified_name, trace



_OUT_OF_PLACE_ACTIVATIONS: Dict[type, Callable[[nn.Module], Tuple[Callable, dict]]] = {
    nn.ReLU: lambda m: (torch.relu, {}),
    nn.ReLU6: lambda m: (F.relu6, {}),
    nn.SiLU: lambda m: (F.silu, {}),
    nn.Hardswish: lambda m: (F.hardswish, {}),
    nn.Hardsigmoid: lambda m: (F.hardsigmoid, {}),
    nn.Mish: lambda m: (F.mish, {}),
    nn.LeakyReLU: lambda m: (F.leaky_relu, {"negative_slope": m.negative_slope}),
    nn.ELU: lambda m: (F.elu, {"alpha": m.alpha}),
    nn.CELU: lambda m: (F.celu, {"alpha": m.alpha}),
    nn.Hardtanh: lambda m: (F.hardtanh, {"min_val": m.min_val, "max_val": m.max_val}),
}


_IN_PLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub,
                       operator.imul: operator.mul, operator.itruediv: operator.truediv}


_IN_PLACE_FUNCTIONS = {torch.relu_: torch.relu, F.relu_: torch.relu, F.leaky_relu_: F.leaky_relu,
                       F.elu_: F.elu, F.hardtanh_: F.hardtanh}


def locate(graph: fx.Graph, names: Sequence[str], mode: str) -> Dict[str, fx.Node]:
    """The nodes of ``graph`` (``model``'s graph in ``mode``) that carry the qualified ``names``."""
    by_name = {qualified_name(n): n for n in graph.nodes}
    lost = [name for name in names if name not in by_name]
    if lost:
        raise ValueError(
            f"tap node(s) {lost} are not in the {mode}-mode graph ("
            + "; ".join(closest_names(name, list(by_name)) for name in lost)
            + "); pick nodes that graph_node_names(model) lists in both modes")
    return {name: by_name[name] for name in names}


_ALIAS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "expand", "squeeze",
                  "unsqueeze", "view_as", "reshape_as"}


_ALIAS_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}


def _is_alias(root: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` may return (a view of) its first input's storage."""
    if node.op == "call_module":
        return is_passthrough(root, node)
    if node.op == "call_method":
        return node.target in _ALIAS_METHODS
    return node.op == "call_function" and node.target in _ALIAS_FUNCTIONS


def make_consumers_out_of_place(root: nn.Module, graph: fx.Graph, node: fx.Node) -> None:
    """Rewrite every in-place op that would overwrite ``node``'s tensor (directly or through an
    identity, dropout or view of it) into its out-of-place form."""
    for user in list(node.users):
        if not user.args or user.args[0] is not node:
            continue
        if _is_alias(root, user):
            make_consumers_out_of_place(root, graph, user)
            continue
        if user.op == "call_module":
            module = root.get_submodule(user.target)
            if not getattr(module, "inplace", False):
                continue
            factory = _OUT_OF_PLACE_ACTIVATIONS.get(type(module))
            with graph.inserting_before(user):
                if factory is not None:
                    fn, kwargs = factory(module)
                    replacement = graph.call_function(fn, (node,), kwargs)
                    replacement.meta = dict(user.meta)
                    user.replace_all_uses_with(replacement)
                    graph.erase_node(user)
                else:
                    copy = graph.call_method("clone", (node,))
                    user.replace_input_with(node, copy)
        elif user.op == "call_function":
            if user.target in _IN_PLACE_OPERATORS:
                user.target = _IN_PLACE_OPERATORS[user.target]
            elif user.target in _IN_PLACE_FUNCTIONS:
                user.target = _IN_PLACE_FUNCTIONS[user.target]
            elif user.kwargs.get("inplace"):
                user.kwargs = {**user.kwargs, "inplace": False}
            elif len(user.args) > 1 and user.args[-1] is True and user.target in ACTIVATION_FUNCTIONS:
                user.args = (*user.args[:-1], False)
        elif user.op == "call_method" and user.target.endswith("_") and hasattr(Tensor, user.target[:-1]):
            user.target = user.target[:-1]


class _CaptureStore:
    """Plain (non-module) holder of captured tensors; lives as ``model._ofd_capture``."""

    def __init__(self) -> None:
        self.active = False
        self.features: Dict[str, Tensor] = {}

    def put(self, tensor: Tensor, name: str) -> Tensor:
        if self.active:
            self.features[name] = tensor
        return tensor


def _insert_captures(root: nn.Module, graph: fx.Graph, nodes: Dict[str, fx.Node]) -> None:
    first = next(iter(graph.nodes))
    with graph.inserting_after(first):
        store = graph.get_attr("_ofd_capture")
    for name, node in nodes.items():
        make_consumers_out_of_place(root, graph, node)
        with graph.inserting_after(node):
            graph.call_method("put", (store, node, name))
    graph.lint()


def compile_graph(root: nn.Module, graph: fx.Graph, prune: bool = False) -> Callable:
    """Generate the forward function of ``graph`` (dead nodes pruned), to be bound to ``root``."""
    module = fx.GraphModule(root, graph)
    if prune:
        module.graph.eliminate_dead_code()
        module.recompile()
    return type(module).forward


def attach_taps(model: nn.Module, taps: Sequence[Tap],
                tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None) -> nn.Module:
    """Make ``model`` capture ``taps`` (see ``capture_taps``); returns the same module.

    The forward is regenerated from the FX graph of each mode and bound to ``model`` itself,
    so state_dict keys, their order, and outputs stay as they were. Trace ``model`` with the
    ``tracer_kwargs`` the taps were found with. Module taps (``source='module'``, the fallback for
    models FX cannot trace) are captured by forward hooks instead; the forward is left as it is.
    """
    sources = {t.source for t in taps}
    if len(sources) > 1:
        raise ValueError(f"taps {[t.name for t in taps]} mix FX nodes and module outputs; give taps of one source")
    model._ofd_capture = _CaptureStore()
    if sources == {"module"}:
        attach_module_taps(model, taps, model._ofd_capture)
        model._ofd_taps = tuple(taps)
        return model
    names = [t.name for t in taps]
    functions, called = {}, set()
    for training in (False, True):
        graph = trace(model, training=training, tracer_kwargs=tracer_kwargs)
        nodes = locate(graph, names, "train" if training else "eval")
        _insert_captures(model, graph, nodes)
        called |= {node.target for node in graph.nodes if node.op == "call_module"}
        functions[training] = compile_graph(model, graph)
    eval_fn, train_fn = functions[False], functions[True]
    model._ofd_inlined_norms = _inlined_batch_norms(model, called)

    def forward(self, *args, **kwargs):
        _check_inlined_batch_norms(self)
        return (train_fn if self.training else eval_fn)(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    model._ofd_taps = tuple(taps)
    return model


def _inlined_batch_norms(model: nn.Module, called: set) -> List[Tuple[str, nn.Module, Any]]:
    """(name, module, momentum) of the BatchNorms whose forward the graphs traced through (timm's BatchNormAct2d):
    their mode and momentum were read at trace time, the graph of the model's own mode applies to them. Kept on the
    model (``_ofd_inlined_norms``), so that a deep copy holds its own modules."""
    def inside_called(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in called for i in range(1, len(parts) + 1))
    return [(name, module, module.momentum) for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not inside_called(name)]


def _check_inlined_batch_norms(model: nn.Module) -> None:
    """Refuse a forward where such a BatchNorm was given its own mode or momentum: the graph would ignore it."""
    for name, module, momentum in model._ofd_inlined_norms:
        if module.training != model.training or module.momentum != momentum:
            mode = "train" if module.training else "eval"
            raise RuntimeError(
                f"{type(module).__name__} {name} is in {mode} mode with momentum {module.momentum}, but "
                f"{type(model).__name__} is in {'train' if model.training else 'eval'} mode and its taps' graphs were "
                f"traced through this BatchNorm with momentum {momentum}: the change would be ignored. Set modes on the "
                "whole model; to freeze BatchNorm, convert it before building the distiller "
                "(timm.layers.freeze_batch_norm_2d, torchvision.ops.FrozenBatchNorm2d), and set momentum there too")


def detach_taps(model: nn.Module) -> nn.Module:
    """Undo ``attach_taps``: the class's own forward is used again, hooks are removed."""
    detach_module_taps(model)
    for attribute in ("forward", "_ofd_capture", "_ofd_taps", "_ofd_inlined_norms"):
        model.__dict__.pop(attribute, None)
    return model


@contextlib.contextmanager
def capture_taps(model: nn.Module) -> Iterator[Dict[str, Tensor]]:
    """Within the context, forwards of ``model`` fill the yielded dict {tap name: tensor}."""
    store = getattr(model, "_ofd_capture", None)
    if store is None:
        raise ValueError(f"{type(model).__name__} has no taps attached; call attach_taps(model, taps) first")
    store.features = {}
    store.active = True
    try:
        yield store.features
    finally:
        store.active = False
        store.features = {}
