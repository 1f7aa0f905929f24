"""Stage ends -> Tap records: for each stride, the last node through which the whole computation
passes (a cut node), taken before the activation closing the stage; inputs small enough to
collapse stages are refused."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, fx, nn

from .modules import module_taps, named_module_taps, names_module
from .predicates import (consumer_activation, cut_nodes, feeding_norm, in_layer_norm, input_dependent,
                         is_global_reduction, layout_of, not_a_feature, pre_activation, shape_of)
from .tap import Tap
from .trace import SampleRunError, TraceFailure, closest_names, propagate_shapes, qualified_name, sample_input, trace

logger = logging.getLogger(__name__)


REFERENCE_SIZE = 224


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


def _candidates(root: nn.Module, nodes: Sequence[fx.Node], sample: Tensor, min_stride: int) -> List[Tuple[fx.Node, int]]:
    """(node, stride) of the feature nodes among ``nodes``, up to the classifier's global pooling."""
    candidates: List[Tuple[fx.Node, int]] = []
    for node in nodes:
        if is_global_reduction(root, node):
            break
        layout = layout_of(shape_of(node), sample)
        if layout is None or in_layer_norm(root, node) or layout[2] < min_stride or not_a_feature(node):
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
    cuts = cut_nodes(graph)
    attempts: Sequence[Callable[[], List[fx.Node]]] = (
        lambda: _ends_among(root, cuts, sample, min_stride),
        lambda: _ends_among(root, cut_nodes(graph, tensors_only=True), sample, min_stride),
        lambda: _ends_among(root, _in_order(graph, input_dependent(graph)), sample, min_stride),
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
    sample = sample_input(model, (REFERENCE_SIZE, REFERENCE_SIZE))
    try:
        propagate_shapes(model, graph, sample)
    except SampleRunError:
        logger.info("%s does not run at %d px; the given input size is taken as its own", type(model).__name__,
                    REFERENCE_SIZE)
        return None
    layouts = [layout_of(shape_of(end), sample) for end in _stage_ends(model, graph, sample, min_stride)]
    if not layouts or any(layout[0] != "nchw" for layout in layouts):
        return None
    return max(layout[2] for layout in layouts)


def check_input_size(model: nn.Module, input_size: Sequence[int], *, graph: Optional[fx.Graph] = None,
                     min_stride: int = 4, what: Optional[str] = None,
                     fix: str = "input_size / --input-size, ofd.input_size and the dataset's resize") -> None:
    """Refuse an input whose side is below ``model``'s deepest stage stride: its last stages would
    collapse to 1x1, and their taps merge, move mid-stage or get wrong strides.

    ``input_size`` ends with (H, W); ``graph`` is ``model``'s traced graph (traced if not given); ``what``
    names the model in the error (default: its class) and ``fix`` the settings that set the input size.
    """
    side = min(input_size[-2:])
    if side >= REFERENCE_SIZE:
        return
    smallest = smallest_input_size(model, graph if graph is not None else trace(model), min_stride)
    if smallest is not None and side < smallest:
        raise ValueError(
            f"input size {side} px is smaller than the deepest stage stride ({smallest}) of "
            f"{what or type(model).__name__}: its last stages would collapse and the taps be wrong. "
            f"Use an input of at least {smallest}x{smallest} ({fix})")


def _make_tap(root: nn.Module, node: fx.Node, sample: Tensor, activation: Optional[str]) -> Tap:
    shape = shape_of(node)
    layout = layout_of(shape, sample)
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
        norm=feeding_norm(root, node) if kind == "nchw" else None,
        activation=activation,
        module=node.meta.get("module_path", ""),
        shape=shape,
        layout=kind,
    )


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

    Where FX cannot trace ``model``, or finds fewer than three stage ends, the taps are the outputs of
    the modules in timm's ``feature_info`` (``source='module'``: stage outputs, not pre-activation
    points), and ``nodes`` names modules ('blocks.3', 'blocks.3[0]' for a tuple output's first).
    """
    if position not in ("pre", "post"):
        raise ValueError(f"position={position!r}; choose 'pre' (OFD) or 'post' (after the activation)")
    sample = sample_input(model, input_size)
    try:
        graph = trace(model, tracer_kwargs=tracer_kwargs)
    except TraceFailure as failure:
        return _taps_without_graph(model, nodes, sample, min_stride, failure)
    if nodes is None:
        check_input_size(model, sample.shape, graph=graph, min_stride=min_stride)
    propagate_shapes(model, graph, sample)
    if nodes is not None:
        return _named_taps(model, graph, nodes, sample)
    return _stage_end_taps(model, graph, sample, min_stride, position)


def _taps_without_graph(model: nn.Module, nodes: Optional[Sequence[str]], sample: Tensor, min_stride: int,
                        failure: TraceFailure) -> List[Tap]:
    """Where FX cannot trace ``model``: the named modules' outputs, or those of its feature_info modules."""
    if nodes is not None:
        return named_module_taps(model, nodes, sample)
    fallback = module_taps(model, sample, min_stride)
    if not fallback:
        raise failure
    logger.info("%s: %s; taps at the outputs of the modules in its feature_info instead (stage outputs, "
                "not pre-activation points): %s", type(model).__name__, failure.reason,
                [t.name for t in fallback])
    return fallback


def _named_taps(model: nn.Module, graph: fx.Graph, nodes: Sequence[str], sample: Tensor) -> List[Tap]:
    """The taps at the named graph nodes (or, where every name is a module and no node, at module outputs)."""
    by_name = {qualified_name(n): n for n in graph.nodes}
    missing = [name for name in nodes if name not in by_name]
    if len(missing) == len(nodes) and all(names_module(model, name) for name in nodes):
        logger.info("%s: %s are modules, not graph nodes: taps at their outputs", type(model).__name__, nodes)
        return named_module_taps(model, nodes, sample)
    if missing:
        valid = [qualified_name(n) for n in graph.nodes if layout_of(shape_of(n), sample) is not None]
        raise ValueError(
            f"unknown tap node(s) in {type(model).__name__}: "
            + "; ".join(closest_names(name, valid) for name in missing)
            + ". graph_node_names(model) lists every node."
        )
    return [_make_tap(model, by_name[n], sample, consumer_activation(model, by_name[n])) for n in nodes]


def _stage_end_taps(model: nn.Module, graph: fx.Graph, sample: Tensor, min_stride: int, position: str) -> List[Tap]:
    """One tap per stage end of the graph (before its activation with ``position='pre'``); the outputs of the
    feature_info modules instead where the graph has fewer than three stage ends and they are more."""
    taps = []
    for end in _stage_ends(model, graph, sample, min_stride):
        node, activation = pre_activation(model, end) if position == "pre" else (end, None)
        taps.append(_make_tap(model, node, sample, activation))
    if len(taps) < 3:
        fallback = module_taps(model, sample, min_stride)
        if len(fallback) > len(taps):
            logger.info("%s: its graph has %d stage end(s) (strides %s); taps at the outputs of the modules in its "
                        "feature_info instead (stage outputs, not pre-activation points): %s", type(model).__name__,
                        len(taps), [t.stride for t in taps], [t.name for t in fallback])
            return fallback
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
