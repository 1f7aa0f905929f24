"""What a node of a traced graph is: an activation, a norm, a pass-through, a cut node, a
feature map or token sequence. The one set of graph predicates every caller uses."""
from __future__ import annotations

import operator
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import TensorMetadata



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


PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)


def shape_of(node: fx.Node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def module_of(root: nn.Module, node: fx.Node) -> Optional[nn.Module]:
    if node.op != "call_module":
        return None
    return root.get_submodule(node.target)


def activation_name(root: nn.Module, node: fx.Node) -> Optional[str]:
    """Name of the activation this node applies, or None."""
    module = module_of(root, node)
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


def is_passthrough(root: nn.Module, node: fx.Node) -> bool:
    module = module_of(root, node)
    if module is not None:
        return isinstance(module, PASSTHROUGH_MODULES) or type(module).__name__ in {"DropPath", "StochasticDepth"}
    return node.op == "call_method" and node.target in {"contiguous", "clone"}


def is_norm(module: Optional[nn.Module]) -> bool:
    from torchvision.ops.misc import FrozenBatchNorm2d

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))


def applies_norm(root: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` applies a BatchNorm: a BatchNorm or FrozenBatchNorm2d module, or F.batch_norm."""
    return is_norm(module_of(root, node)) or (node.op == "call_function" and node.target is F.batch_norm)


def feeding_norm(root: nn.Module, node: fx.Node, depth: int = 0) -> Optional[str]:
    """Module path of the BatchNorm whose output feeds ``node`` (through an add, dropout)."""
    if depth > 4:
        return None
    module = module_of(root, node)
    if is_norm(module):
        return node.target
    if node.op == "call_function" and node.target is F.batch_norm:
        path = node.meta.get("module_path", "")
        return path if is_norm(root.get_submodule(path) if path else None) else None
    if is_passthrough(root, node):
        return feeding_norm(root, node.args[0], depth + 1)
    is_add = (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    if is_add:
        for arg in _residual_branch_first(node):
            found = feeding_norm(root, arg, depth + 1)
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


def input_dependent(graph: fx.Graph) -> set:
    dependent = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _carries_tensors(node: fx.Node) -> bool:
    """False for nodes whose value holds no tensor (sizes, shapes, flags) once shapes are known."""
    return node.op == "placeholder" or node.meta.get("tensor_meta") is not None


def cut_nodes(graph: fx.Graph, tensors_only: bool = False) -> List[fx.Node]:
    """Nodes through which all later computation passes (a use by the output node alone keeps
    a node alive to the end; other uses by the output node are ignored). ``tensors_only``
    ignores values that hold no tensor, e.g. a batch size computed once and used in every stage."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    dependent = {n for n in input_dependent(graph) if not tensors_only or _carries_tensors(n)}
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


def is_global_reduction(root: nn.Module, node: fx.Node) -> bool:
    """A node that pools a spatial map down to 1x1 (the start of a classifier head)."""
    module = module_of(root, node)
    if module is not None and "Adaptive" in type(module).__name__:
        return True
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return True
    shape = shape_of(node)
    if shape is None or len(shape) not in (2, 4) or (len(shape) == 4 and shape[2] * shape[3] != 1):
        return False
    if isinstance(module, nn.Conv2d):
        return False
    return any((shape_of(a) or ())[2:3] and shape_of(a)[2] * shape_of(a)[3] > 1
               for a in node.all_input_nodes if len(shape_of(a) or ()) == 4)


def in_layer_norm(root: nn.Module, node: fx.Node) -> bool:
    path = node.meta.get("module_path", "")
    if not path:
        return False
    name = type(root.get_submodule(path)).__name__
    return "LayerNorm" in name or name == "GroupNorm"


def _spatial_stride(h: int, w: int, sample: Tensor) -> Optional[int]:
    """The stride if (h, w) is the input's spatial size divided by one stride, else None."""
    if h < 1 or w < 1:
        return None
    sy, sx = sample.shape[-2] / h, sample.shape[-1] / w
    if sy < 1 or abs(sy - sx) > 0.25 * sy + 0.5:
        return None
    return max(1, round(sy))


def layout_of(shape: Optional[Tuple[int, ...]], sample: Tensor) -> Optional[Tuple[str, int, int]]:
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


_PRODUCTS = {torch.matmul, operator.matmul, torch.bmm, torch.einsum, "matmul", "bmm"}


def not_a_feature(node: fx.Node) -> bool:
    """Tensors with a feature's shape that are not features: attention maps (N, heads, L, L) and
    channel-first sequences (N, C, H*W)."""
    shape = shape_of(node)
    if shape is not None and len(shape) == 4 and node.target in _PRODUCTS:
        return True
    return _channel_first_sequence(node)


def _channel_first_sequence(node: fx.Node, depth: int = 0) -> bool:
    """(N, C, H*W): an (N, C, H, W) map flattened, or tokens (N, H*W, C) transposed."""
    shape = shape_of(node)
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    before = shape_of(source) if source is not None else None
    if shape is None or before is None or len(shape) != 3 or depth > 8:
        return False
    if len(before) == 4:
        return shape[:2] == before[:2] and shape[2] == before[2] * before[3]
    transposed = len(before) == 3 and shape == (before[0], before[2], before[1]) and shape[1] != shape[2]
    return transposed and not _channel_first_sequence(source, depth + 1)


def pre_activation(root: nn.Module, node: fx.Node) -> Tuple[fx.Node, Optional[str]]:
    while is_passthrough(root, node) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    activation = activation_name(root, node)
    if activation is not None and isinstance(node.args[0], fx.Node) and shape_of(node.args[0]) is not None:
        return node.args[0], activation
    return node, None


def consumer_activation(root: nn.Module, node: fx.Node) -> Optional[str]:
    for user in node.users:
        name = activation_name(root, user)
        if name is not None and user.args and user.args[0] is node:
            return name
    return None
