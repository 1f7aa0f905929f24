"""Find OFD tap points (pre-activation stage ends) in a model's FX graph, and capture them.

``find_taps`` traces a model with a tracer that records each node's module path, propagates a
sample input to learn every tensor's shape, and picks, for each stride, the last node through
which the whole computation passes (a cut node of the graph). If that node is an activation,
the tap is the activation's input; otherwise (linear bottleneck, ConvNeXt) it is the node.

``attach_taps`` binds a regenerated forward (one per train/eval mode) to the original module:
outputs, parameter names and numerics are unchanged; tensors at the taps are captured while a
``capture_taps`` context is open. ``TapExtractor`` runs a model only as far as its last tap.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import logging
import math
import operator
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

__all__ = [
    "Tap",
    "find_taps",
    "attach_taps",
    "detach_taps",
    "capture_taps",
    "TapExtractor",
    "graph_node_names",
    "qualified_name",
    "smallest_input_size",
    "trace",
]

logger = logging.getLogger(__name__)

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.Mish, nn.ELU,
    nn.PReLU, nn.Hardtanh, nn.CELU, nn.SELU, nn.Softplus,
)
ACTIVATION_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu,
    F.leaky_relu_, F.mish, F.elu, F.elu_, F.hardtanh, F.hardtanh_, F.celu, F.selu, F.softplus,
}
ACTIVATION_METHODS = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp_min", "clamp_min_"}
TIMM_ACTIVATIONS = {"swish", "swishme", "hardswish", "hardswishme", "mish", "mishme", "gelu", "gelutanh",
                    "quickgelu", "hardmish", "hardmishme", "prelu"}
REFERENCE_SIZE = 224
PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_NOT_LEAVES = ("Conv2dNormActivation", "Conv3dNormActivation", "BatchNormAct2d", "SyncBatchNormAct",
               "FrozenBatchNormAct2d", "MLP")
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


@dataclass(frozen=True)
class Tap:
    """One tap point: the FX node, its feature shape and what feeds and consumes it."""

    name: str
    channels: int
    stride: int
    norm: Optional[str]
    activation: Optional[str]
    module: str = ""
    shape: Tuple[int, ...] = ()
    layout: str = "nchw"

    @property
    def channel_last(self) -> bool:
        """True for tokens (N, L, C) and channel-last maps (N, H, W, C)."""
        return self.layout != "nchw"


# --------------------------------------------------------------------------------------------
# Tracing


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


def _concrete_defaults(model: nn.Module) -> Dict[str, Any]:
    signature = inspect.signature(type(model).forward)
    params = list(signature.parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def trace(model: nn.Module, training: bool = False, tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None
          ) -> fx.Graph:
    """Trace ``model``'s original forward in the given mode; nodes carry their module path."""
    was_training = model.training
    model.train()
    model.eval()
    model.train(training)
    try:
        tracer = _PathTracer(tracer_kwargs)
    except ValueError:
        model.train(was_training)
        raise
    try:
        return tracer.trace(model, concrete_args=_concrete_defaults(model) or None)
    except Exception as error:
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}. "
            "Pass a traceable part (e.g. the backbone, or model.backbone.body for a detector), "
            "or trace the failing submodule as one call: tracer_kwargs={'leaf_modules': [ItsClass]} "
            "(find_taps, FeatureDistiller, or ofd=dict(tracer_kwargs=...) in a config, with dotted paths there)."
        ) from error
    finally:
        model.train(was_training)


def _sample_input(model: nn.Module, input_size: Optional[Sequence[int]]) -> Tensor:
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


class SampleRunError(ValueError):
    """The model could not run on the sample input used to measure shapes (e.g. a fixed-size head)."""


def _propagate_shapes(model: nn.Module, graph: fx.Graph, sample: Tensor) -> None:
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


# --------------------------------------------------------------------------------------------
# Graph analysis


def _shape(node: fx.Node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _module(root: nn.Module, node: fx.Node) -> Optional[nn.Module]:
    if node.op != "call_module":
        return None
    return root.get_submodule(node.target)


def _activation_name(root: nn.Module, node: fx.Node) -> Optional[str]:
    """Name of the activation this node applies, or None."""
    module = _module(root, node)
    if module is not None:
        name = type(module).__name__
        if isinstance(module, ACTIVATION_MODULES) or name.lower() in TIMM_ACTIVATIONS:
            return name
        return None
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return node.target
    return None


def _is_passthrough(root: nn.Module, node: fx.Node) -> bool:
    module = _module(root, node)
    if module is not None:
        return isinstance(module, PASSTHROUGH_MODULES) or type(module).__name__ in {"DropPath", "StochasticDepth"}
    return node.op == "call_method" and node.target in {"contiguous", "clone"}


def _is_norm(module: Optional[nn.Module]) -> bool:
    from torchvision.ops.misc import FrozenBatchNorm2d

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))


def _feeding_norm(root: nn.Module, node: fx.Node, depth: int = 0) -> Optional[str]:
    """Module path of the BatchNorm whose output feeds ``node`` (through an add, dropout)."""
    if depth > 4:
        return None
    module = _module(root, node)
    if _is_norm(module):
        return node.target
    if node.op == "call_function" and node.target is F.batch_norm:
        path = node.meta.get("module_path", "")
        return path if _is_norm(root.get_submodule(path) if path else None) else None
    if _is_passthrough(root, node):
        return _feeding_norm(root, node.args[0], depth + 1)
    is_add = (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    if is_add:
        for arg in _residual_branch_first(node):
            found = _feeding_norm(root, arg, depth + 1)
            if found:
                return found
    return None


def _ancestors(node: fx.Node) -> set:
    seen, stack = set(), [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _residual_branch_first(add: fx.Node) -> List[fx.Node]:
    """The inputs of a residual add, the longer (residual) branch before the shortcut."""
    branches = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    if len(branches) != 2:
        return branches
    first, second = ({a} | _ancestors(a) for a in branches)
    exclusive = [len(first - second), len(second - first)]
    return branches if exclusive[0] >= exclusive[1] else branches[::-1]


def _input_dependent(graph: fx.Graph) -> set:
    dependent = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _carries_tensors(node: fx.Node) -> bool:
    """False for nodes whose value holds no tensor (sizes, shapes, flags) once shapes are known."""
    return node.op == "placeholder" or node.meta.get("tensor_meta") is not None


def _cut_nodes(graph: fx.Graph, tensors_only: bool = False) -> List[fx.Node]:
    """Nodes through which all later computation passes (a use by the output node alone keeps
    a node alive to the end; other uses by the output node are ignored). ``tensors_only``
    ignores values that hold no tensor, e.g. a batch size computed once and used in every stage."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    dependent = {n for n in _input_dependent(graph) if not tensors_only or _carries_tensors(n)}
    last_use = {}
    for n in nodes:
        if n in dependent:
            uses = [index[u] for u in n.users if u.op != "output"]
            last_use[n] = max(uses, default=len(nodes) if n.users else -1)
    cuts, live = [], set()
    for i, n in enumerate(nodes):
        live = {m for m in live if last_use[m] > i}
        if n in dependent and last_use[n] > i:
            live.add(n)
            if live == {n}:
                cuts.append(n)
    return cuts


def _is_global_reduction(root: nn.Module, node: fx.Node) -> bool:
    """A node that pools a spatial map down to 1x1 (the start of a classifier head)."""
    module = _module(root, node)
    if module is not None and "Adaptive" in type(module).__name__:
        return True
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return True
    shape = _shape(node)
    if shape is None or len(shape) not in (2, 4) or (len(shape) == 4 and shape[2] * shape[3] != 1):
        return False
    if isinstance(module, nn.Conv2d):
        return False
    return any((_shape(a) or ())[2:3] and _shape(a)[2] * _shape(a)[3] > 1
               for a in node.all_input_nodes if len(_shape(a) or ()) == 4)


def _in_layer_norm(root: nn.Module, node: fx.Node) -> bool:
    path = node.meta.get("module_path", "")
    if not path:
        return False
    name = type(root.get_submodule(path)).__name__
    return "LayerNorm" in name or name == "GroupNorm"


def _stride(shape: Tuple[int, ...], sample: Tensor) -> int:
    return max(1, round(sample.shape[-2] / shape[2]))


def _spatial_stride(h: int, w: int, sample: Tensor) -> Optional[int]:
    """The stride if (h, w) is the input's spatial size divided by one stride, else None."""
    if h < 1 or w < 1:
        return None
    sy, sx = sample.shape[-2] / h, sample.shape[-1] / w
    if sy < 1 or abs(sy - sx) > 0.25 * sy + 0.5:
        return None
    return max(1, round(sy))


def _layout(shape: Optional[Tuple[int, ...]], sample: Tensor) -> Optional[Tuple[str, int, int]]:
    """(layout, channels, stride) of a feature: 'nchw', 'nhwc' map, or 'tokens' (N, L, C)."""
    if shape is None:
        return None
    if len(shape) == 4:
        stride = _spatial_stride(shape[2], shape[3], sample)
        if stride is not None:
            return "nchw", shape[1], stride
        stride = _spatial_stride(shape[1], shape[2], sample)
        if stride is not None:
            return "nhwc", shape[3], stride
        return None
    if len(shape) == 3 and shape[1] > 1:
        for extra in range(0, 9):  # class / distillation / register tokens before the patches
            stride = _token_stride(shape[1] - extra, sample)
            if stride is not None:
                return "tokens", shape[2], stride
    return None


def _token_stride(patches: int, sample: Tensor) -> Optional[int]:
    """The stride at which the input splits into ``patches`` square patches (2 to 64), else None."""
    if patches < 4:
        return None
    stride = (sample.shape[-2] * sample.shape[-1] / patches) ** 0.5
    return round(stride) if abs(stride - round(stride)) < 1e-6 and 1 < round(stride) <= 64 else None


def _block_id(node: fx.Node) -> str:
    """The repeated block a node belongs to: its module path up to the first numeric part."""
    parts = node.meta.get("module_path", "").split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ""


def _isotropic_ends(candidates: List[Tuple[fx.Node, int]], count: int = 4) -> List[fx.Node]:
    """For nets with one stride throughout (ViT, Mixer): evenly spaced block outputs."""
    last_of_block: Dict[str, fx.Node] = {}
    for node, _ in candidates:
        block = _block_id(node)
        if block:
            last_of_block.pop(block, None)
            last_of_block[block] = node
    blocks = list(last_of_block.values())
    if len(blocks) < count:
        return blocks
    return [blocks[round(len(blocks) * (i + 1) / count) - 1] for i in range(count)]


_PRODUCTS = {torch.matmul, operator.matmul, torch.bmm, torch.einsum, "matmul", "bmm"}


def _not_a_feature(node: fx.Node) -> bool:
    """Tensors with a feature's shape that are not features: attention maps (N, heads, L, L) and
    channel-first sequences (N, C, H*W)."""
    shape = _shape(node)
    if shape is not None and len(shape) == 4 and node.target in _PRODUCTS:
        return True
    return _channel_first_sequence(node)


def _channel_first_sequence(node: fx.Node, depth: int = 0) -> bool:
    """(N, C, H*W): an (N, C, H, W) map flattened, or tokens (N, H*W, C) transposed."""
    shape = _shape(node)
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    before = _shape(source) if source is not None else None
    if shape is None or before is None or len(shape) != 3 or depth > 8:
        return False
    if len(before) == 4:
        return shape[:2] == before[:2] and shape[2] == before[2] * before[3]
    transposed = len(before) == 3 and shape == (before[0], before[2], before[1]) and shape[1] != shape[2]
    return transposed and not _channel_first_sequence(source, depth + 1)


def _candidates(root: nn.Module, nodes: Sequence[fx.Node], sample: Tensor, min_stride: int) -> List[Tuple[fx.Node, int]]:
    """(node, stride) of the feature nodes among ``nodes``, up to the classifier's global pooling."""
    candidates: List[Tuple[fx.Node, int]] = []
    for node in nodes:
        if _is_global_reduction(root, node):
            break
        layout = _layout(_shape(node), sample)
        if layout is None or _in_layer_norm(root, node) or layout[2] < min_stride or _not_a_feature(node):
            continue
        candidates.append((node, layout[2]))
    return candidates


def _ends_among(root: nn.Module, nodes: Sequence[fx.Node], sample: Tensor, min_stride: int,
                isotropic_tail: bool = False) -> List[fx.Node]:
    """The last feature node per stride among ``nodes`` (in graph order), or evenly spaced block
    outputs when all share one stride. ``isotropic_tail``: hybrids whose last stride spans many
    blocks (a conv stem before a ViT, VOLO) get evenly spaced block outputs there, to three taps."""
    candidates = _candidates(root, nodes, sample, min_stride)
    by_stride: Dict[int, fx.Node] = {}
    for node, stride in candidates:
        by_stride[stride] = node
    if len(by_stride) == 1:
        return _isotropic_ends(candidates)
    strides = sorted(by_stride)
    ends = [by_stride[s] for s in strides]
    if isotropic_tail and len(ends) < 3:
        tail = _isotropic_ends([c for c in candidates if c[1] == strides[-1]], count=3 - len(ends) + 1)
        if len(tail) > 1:
            return ends[:-1] + tail
    return ends


def _in_order(graph: fx.Graph, nodes: set) -> List[fx.Node]:
    return [n for n in graph.nodes if n in nodes]


def _stage_ends(root: nn.Module, graph: fx.Graph, sample: Tensor, min_stride: int) -> List[fx.Node]:
    """Stage ends are cut nodes (all later computation passes through them). Where that finds
    fewer than three: cuts of the tensor computation alone (CoaT, Twins carry sizes through every
    stage), then, for multi-branch nets (HRNet), the deepest feature of each stride on any branch,
    then, for hybrids, several block outputs of the last stride."""
    cuts = _cut_nodes(graph)
    attempts: Sequence[Callable[[], List[fx.Node]]] = (
        lambda: _ends_among(root, cuts, sample, min_stride),
        lambda: _ends_among(root, _cut_nodes(graph, tensors_only=True), sample, min_stride),
        lambda: _ends_among(root, _in_order(graph, _input_dependent(graph)), sample, min_stride),
        lambda: _ends_among(root, cuts, sample, min_stride, isotropic_tail=True),
    )
    ends: List[fx.Node] = []
    for attempt in attempts:
        found = attempt()
        ends = found if len(found) > len(ends) else ends
        if len(ends) >= 3:
            break
    return ends


def smallest_input_size(model: nn.Module, graph: fx.Graph, min_stride: int = 4) -> Optional[int]:
    """The smallest side at which no stage of ``model`` collapses: its deepest stage stride measured
    at the reference size (224 px). None where that does not apply: token models, and models that
    cannot run at the reference size (fixed-size networks, e.g. CIFAR's AvgPool2d(8) + fc), whose
    given input size is their own."""
    sample = _sample_input(model, (REFERENCE_SIZE, REFERENCE_SIZE))
    try:
        _propagate_shapes(model, graph, sample)
    except SampleRunError:
        logger.info("%s does not run at %d px; the given input size is taken as its own", type(model).__name__,
                    REFERENCE_SIZE)
        return None
    layouts = [_layout(_shape(end), sample) for end in _stage_ends(model, graph, sample, min_stride)]
    if not layouts or any(layout[0] != "nchw" for layout in layouts):
        return None
    return max(layout[2] for layout in layouts)


def _check_input_size(model: nn.Module, graph: fx.Graph, sample: Tensor, min_stride: int) -> None:
    """Refuse an input whose side is below the model's deepest stage stride: its last stages would
    collapse to 1x1, and their taps merge, move mid-stage or get wrong strides."""
    side = min(sample.shape[-2:])
    if side >= REFERENCE_SIZE:
        return
    smallest = smallest_input_size(model, graph, min_stride)
    if smallest is not None and side < smallest:
        raise ValueError(
            f"input size {side} px is smaller than the deepest stage stride ({smallest}) of {type(model).__name__}: "
            f"its last stages would collapse and the taps be wrong. Use an input of at least {smallest}x{smallest} "
            "(input_size / --input-size, ofd.input_size and the dataset's resize)")


def _pre_activation(root: nn.Module, node: fx.Node) -> Tuple[fx.Node, Optional[str]]:
    while _is_passthrough(root, node) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    activation = _activation_name(root, node)
    if activation is not None and isinstance(node.args[0], fx.Node) and _shape(node.args[0]) is not None:
        return node.args[0], activation
    return node, None


def _consumer_activation(root: nn.Module, node: fx.Node) -> Optional[str]:
    for user in node.users:
        name = _activation_name(root, user)
        if name is not None and user.args and user.args[0] is node:
            return name
    return None


def _make_tap(root: nn.Module, node: fx.Node, sample: Tensor, activation: Optional[str]) -> Tap:
    shape = _shape(node)
    layout = _layout(shape, sample)
    if layout is None:
        raise TypeError(
            f"tap node '{qualified_name(node)}' has output {shape if shape else type(node.meta.get('tensor_meta')).__name__}; "
            "OFD taps must be feature maps (N, C, H, W) / (N, H, W, C) or tokens (N, L, C). Pick another node."
        )
    kind, channels, stride = layout
    return Tap(
        name=qualified_name(node),
        channels=channels,
        stride=stride,
        norm=_feeding_norm(root, node) if kind == "nchw" else None,
        activation=activation,
        module=node.meta.get("module_path", ""),
        shape=shape,
        layout=kind,
    )


def _closest(name: str, candidates: Sequence[str]) -> str:
    """'name' (closest: a, b, c), for an error about an unknown node name."""
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return f"'{name}' (closest: {', '.join(close)})" if close else f"'{name}'"


def graph_node_names(model: nn.Module, tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None
                     ) -> Tuple[List[str], List[str]]:
    """Qualified names of the nodes of ``model``'s train-mode and eval-mode graphs, as torchvision's
    ``get_graph_node_names``; ``find_taps(nodes=...)`` takes eval names that the train graph also has."""
    return tuple(
        [qualified_name(n) for n in trace(model, training=training, tracer_kwargs=tracer_kwargs).nodes
         if n.op not in ("placeholder", "output", "get_attr")]
        for training in (True, False))


def find_taps(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    min_stride: int = 4,
    nodes: Optional[Sequence[str]] = None,
    position: str = "pre",
    tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None,
) -> List[Tap]:
    """Return the OFD taps of ``model``: one per stage end, before the activation closing it.

    ``nodes`` picks taps by qualified node name instead (see ``graph_node_names``); ``input_size`` is
    the (C, H, W) or (H, W) of the sample used to measure shapes and strides;
    ``position='post'`` takes the stage outputs after their activation (the paper's ablation);
    ``tracer_kwargs`` reaches the FX tracer (``leaf_modules``, ``autowrap_functions``, ...).
    """
    if position not in ("pre", "post"):
        raise ValueError(f"position={position!r}; choose 'pre' (OFD) or 'post' (after the activation)")
    graph = trace(model, tracer_kwargs=tracer_kwargs)
    sample = _sample_input(model, input_size)
    if nodes is None:
        _check_input_size(model, graph, sample, min_stride)
    _propagate_shapes(model, graph, sample)
    if nodes is not None:
        by_name = {qualified_name(n): n for n in graph.nodes}
        missing = [name for name in nodes if name not in by_name]
        if missing:
            valid = [qualified_name(n) for n in graph.nodes if _layout(_shape(n), sample) is not None]
            raise ValueError(
                f"unknown tap node(s) in {type(model).__name__}: "
                + "; ".join(_closest(name, valid) for name in missing)
                + ". graph_node_names(model) lists every node."
            )
        return [_make_tap(model, by_name[n], sample, _consumer_activation(model, by_name[n])) for n in nodes]
    taps = []
    for end in _stage_ends(model, graph, sample, min_stride):
        node, activation = _pre_activation(model, end) if position == "pre" else (end, None)
        taps.append(_make_tap(model, node, sample, activation))
    if not taps:
        raise ValueError(
            f"no stage end of stride >= {min_stride} found in {type(model).__name__} "
            f"(sample input {tuple(sample.shape[1:])}); pass a larger input_size, a smaller min_stride, "
            "or tap nodes by hand with nodes=[...] (see graph_node_names)."
        )
    if len(taps) < 3:
        logger.warning(
            "only %d stage end(s) found in %s (strides %s): its branches or stages do not meet at single "
            "nodes; to distil at more positions pass nodes=[...] (see graph_node_names)",
            len(taps), type(model).__name__, [t.stride for t in taps])
    return taps


# --------------------------------------------------------------------------------------------
# Rewriting


def _locate(graph: fx.Graph, names: Sequence[str], mode: str) -> Dict[str, fx.Node]:
    """The nodes of ``graph`` (``model``'s graph in ``mode``) that carry the qualified ``names``."""
    by_name = {qualified_name(n): n for n in graph.nodes}
    lost = [name for name in names if name not in by_name]
    if lost:
        raise ValueError(
            f"tap node(s) {lost} are not in the {mode}-mode graph ("
            + "; ".join(_closest(name, list(by_name)) for name in lost)
            + "); pick nodes that graph_node_names(model) lists in both modes")
    return {name: by_name[name] for name in names}


_ALIAS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "expand", "squeeze",
                  "unsqueeze", "view_as", "reshape_as"}
_ALIAS_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}


def _is_alias(root: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` may return (a view of) its first input's storage."""
    if node.op == "call_module":
        return _is_passthrough(root, node)
    if node.op == "call_method":
        return node.target in _ALIAS_METHODS
    return node.op == "call_function" and node.target in _ALIAS_FUNCTIONS


def _make_consumers_out_of_place(root: nn.Module, graph: fx.Graph, node: fx.Node) -> None:
    """Rewrite every in-place op that would overwrite ``node``'s tensor (directly or through an
    identity, dropout or view of it) into its out-of-place form."""
    for user in list(node.users):
        if not user.args or user.args[0] is not node:
            continue
        if _is_alias(root, user):
            _make_consumers_out_of_place(root, graph, user)
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
        _make_consumers_out_of_place(root, graph, node)
        with graph.inserting_after(node):
            graph.call_method("put", (store, node, name))
    graph.lint()


def _compile(root: nn.Module, graph: fx.Graph, prune: bool = False) -> Callable:
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
    ``tracer_kwargs`` the taps were found with.
    """
    names = [t.name for t in taps]
    functions = {}
    model._ofd_capture = _CaptureStore()
    for training in (False, True):
        graph = trace(model, training=training, tracer_kwargs=tracer_kwargs)
        nodes = _locate(graph, names, "train" if training else "eval")
        _insert_captures(model, graph, nodes)
        functions[training] = _compile(model, graph)
    eval_fn, train_fn = functions[False], functions[True]

    def forward(self, *args, **kwargs):
        return (train_fn if self.training else eval_fn)(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    model._ofd_taps = tuple(taps)
    return model


def detach_taps(model: nn.Module) -> nn.Module:
    """Undo ``attach_taps``: the class's own forward is used again."""
    for attribute in ("forward", "_ofd_capture", "_ofd_taps"):
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


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _batch_statistics(root: nn.Module, graph: fx.Graph) -> None:
    """Make every trainable BatchNorm in ``graph`` normalise with batch statistics, updating nothing."""
    for node in list(graph.nodes):
        module = _module(root, node)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with graph.inserting_before(node):
                weight = graph.get_attr(f"{node.target}.weight") if module.affine else None
                bias = graph.get_attr(f"{node.target}.bias") if module.affine else None
                replacement = graph.call_function(
                    F.batch_norm, (node.args[0], None, None, weight, bias, True, 0.0, module.eps))
            replacement.meta = dict(node.meta)
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is F.batch_norm:
            values = {**dict(zip(_BATCH_NORM_ARGS, node.args)), **node.kwargs}
            values.update(running_mean=None, running_var=None, training=True)
            node.args = (values.pop("input"),)
            node.kwargs = values


class TapExtractor:
    """Runs a model only as far as its taps need and returns {tap name: tensor}.

    The model is not modified. With ``batch_stats=True`` every BatchNorm normalises with the
    batch's statistics (OFD's teacher mode) and no running statistic is updated.
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap], batch_stats: bool = True,
                 tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None) -> None:
        self.model = model
        self.names = [t.name for t in taps]
        graph = trace(model, training=False, tracer_kwargs=tracer_kwargs)
        nodes = _locate(graph, self.names, "eval")
        for node in nodes.values():
            _make_consumers_out_of_place(model, graph, node)
        output = next(n for n in graph.nodes if n.op == "output")
        graph.erase_node(output)
        graph.output({name: node for name, node in nodes.items()})
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target in (torch._assert, getattr(torch, "_assert_async", None)):
                graph.erase_node(node)
        if batch_stats:
            _batch_statistics(model, graph)
        graph.lint()
        self._fn = _compile(model, graph, prune=True)

    def __call__(self, *args, **kwargs) -> Dict[str, Tensor]:
        return self._fn(self.model, *args, **kwargs)
