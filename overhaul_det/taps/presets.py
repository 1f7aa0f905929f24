"""The preset tap choices of whole task models, in one place: segmenters (backbone stage ends, then the
head's pre-activation taps), SSD backbones (stage ends up to the neck) and FPN levels (named identities).

``find_taps`` picks a backbone's stage ends; these say which of a task model's nodes OFD taps beyond
or instead of them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, fx, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from .discover import find_taps
from .predicates import activation_name, applies_norm, is_passthrough
from .tap import Tap
from .trace import qualified_name, trace

__all__ = ["FPN_LEVEL_WEIGHT", "SSD_MAX_TAP_STRIDE", "PyramidOutputs", "head_tap_nodes", "pyramid_keys",
           "pyramid_taps", "segmenter_tap_groups", "segmenter_taps", "ssd_taps", "stage_end_nodes"]

# Every FPN level feeds the same RPN and box head, so none is the "deepest" that OFD's 2^-(n-1-i) favours:
# each gets the weight of the deepest body tap.
FPN_LEVEL_WEIGHT = 1.0
# SSD's extra layers past stride 32 are its neck (as an FPN is), and at small inputs they cannot run.
SSD_MAX_TAP_STRIDE = 32


# --------------------------------------------------------------------------------------------
# Segmenters


def _consumers(root: nn.Module, node: fx.Node) -> List[fx.Node]:
    """The nodes that use ``node``'s value, looking through identity/dropout."""
    found = []
    for user in node.users:
        found += _consumers(root, user) if is_passthrough(root, user) else [user]
    return found


def _expansion_norm(root: nn.Module, node: fx.Node) -> Optional[fx.Node]:
    """The BN output of a 1x1 conv + BN + activation that ``node`` feeds (the next block's expansion).

    The node returned is the activation's own input (an identity after the BN, if any), so that
    capture makes that activation out-of-place and the captured tensor keeps its negative half.
    """
    for conv in node.users:
        if conv.op != "call_module":
            continue
        module = root.get_submodule(conv.target)
        if not (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1):
            continue
        for norm in (user for user in conv.users if applies_norm(root, user)):
            after = _consumers(root, norm)
            if len(after) == 1 and activation_name(root, after[0]) is not None:
                return after[0].args[0]
    return None


def _stage_tap(root: nn.Module, node: fx.Node) -> fx.Node:
    """OFD's position for a stage output: the input of the activation that closes the stage; for a
    linear bottleneck, the next block's expansion conv + BN output (before its activation), if any."""
    while is_passthrough(root, node):
        node = node.args[0]
    if activation_name(root, node) is not None:
        return node.args[0]
    return _expansion_norm(root, node) or node


def _under(node: fx.Node, path: str) -> bool:
    own = node.meta.get("module_path", "")
    return not path or own == path or own.startswith(path + ".")


def stage_end_nodes(model: nn.Module, graph: Optional[fx.Graph] = None, tracer_kwargs: Optional[dict] = None
                    ) -> List[str]:
    """Qualified node names, in ``model``'s graph, of each backbone stage end before the activation closing it.

    Stages are the backbone outputs that ``model.stages`` picks, found in the backbone's own graph;
    a linear bottleneck's tap is the next block's expansion BN (the official MobileNetV2 position).

    Args:
        model: a segmenter with ``backbone`` (returning its stage ends) and ``stages`` (their indices).
        graph: ``model``'s traced graph; traced here when None.
        tracer_kwargs: passed to the FX tracer (see ``find_taps``).
    """
    body_graph = trace(model.backbone, tracer_kwargs=tracer_kwargs)
    returned = next(n for n in body_graph.nodes if n.op == "output").args[0]
    returned = list(returned.values()) if isinstance(returned, dict) else list(returned)
    ends = [f"backbone.{qualified_name(_stage_tap(model.backbone, returned[i]))}" for i in model.stages]
    graph = graph if graph is not None else trace(model, tracer_kwargs=tracer_kwargs)
    names = {qualified_name(node) for node in graph.nodes}
    missing = [name for name in ends if name not in names]
    if missing:
        raise ValueError(f"backbone nodes {missing} are not in {type(model).__name__}'s graph; the backbone must be "
                         "called once, as model.backbone(x); pick the taps by hand with ofd.student_taps=[...]")
    return ends


def head_tap_nodes(head: nn.Module, graph: Optional[fx.Graph] = None, path: str = "") -> List[str]:
    """Node names of the head's pre-activation taps: with an ASPP, its projection's BN output and the head's
    last conv+BN output; without one (FCN, LRASPP), every BN output that feeds an activation.

    Args:
        head: the head, or a whole model holding it at ``path``.
        graph: ``head``'s traced graph; traced here when None.
        path: the head's module path in ``head`` ('' for the head itself).
    """
    graph = graph if graph is not None else trace(head)
    aspps = [name for name, module in head.named_modules() if isinstance(module, ASPP) and (
        not path or name == path or name.startswith(path + "."))]
    activations = [n for n in graph.nodes if activation_name(head, n) is not None and _under(n, path)]
    if not aspps:
        return [qualified_name(n.args[0]) for n in activations
                if isinstance(n.args[0], fx.Node) and applies_norm(head, n.args[0])]
    if len(aspps) > 1:
        raise ValueError(f"expected one torchvision ASPP under '{path or type(head).__name__}', found {aspps}; "
                         "pick the head's tap nodes by hand with ofd.student_taps / ofd.teacher_taps")
    project = [n for n in activations if _under(n, f"{aspps[0]}.project")]
    if not project:
        raise ValueError(f"no activation in {aspps[0]}.project; pick the head's tap nodes by hand")
    return [qualified_name(project[-1].args[0]), qualified_name(activations[-1].args[0])]


def segmenter_taps(model: nn.Module, input_size: Sequence[int] = (3, 128, 128),
                   tracer_kwargs: Optional[dict] = None) -> List[Tap]:
    """The OFD taps of a ``Segmenter``: its backbone stage ends, then its head's taps (``head_tap_nodes``).

    Args:
        model: a ``Segmenter`` (``models.segmentation``).
        input_size: the (C, H, W) sample that measures channels and strides.
        tracer_kwargs: passed to the FX tracer (see ``find_taps``).
    """
    backbone, head = segmenter_tap_groups(model, input_size, tracer_kwargs)
    return backbone + head


def segmenter_tap_groups(model: nn.Module, input_size: Sequence[int] = (3, 128, 128),
                         tracer_kwargs: Optional[dict] = None) -> Tuple[List[Tap], List[Tap]]:
    """``segmenter_taps`` split into (backbone stage-end taps, head taps), for pairing heads of other shapes.

    Args:
        model, input_size, tracer_kwargs: as ``segmenter_taps`` takes them.
    """
    graph = trace(model, tracer_kwargs=tracer_kwargs)
    stages = stage_end_nodes(model, graph, tracer_kwargs)
    names = stages + head_tap_nodes(model, graph, "classifier")
    taps = find_taps(model, input_size=input_size, nodes=names, tracer_kwargs=tracer_kwargs)
    return taps[:len(stages)], taps[len(stages):]


# --------------------------------------------------------------------------------------------
# Detectors

class PyramidOutputs(nn.Module):
    """A detector backbone (body + FPN) whose FPN outputs pass through named identities, ``levels.<key>``.

    torchvision's FeaturePyramidNetwork is an FX leaf, so its outputs are no graph nodes of their own;
    these identities are, and OFD taps them. Same output as the backbone; no state of its own.
    """

    def __init__(self, backbone: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.levels = nn.ModuleDict((key, nn.Identity()) for key in keys)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.backbone(x)
        return OrderedDict((key, level(features[key])) for key, level in self.levels.items())


@torch.no_grad()
def pyramid_keys(backbone: nn.Module, input_size: Optional[Sequence[int]]) -> List[str]:
    """The names of the FPN maps ``backbone`` returns ('0', '1', ..., 'pool'), from one eval-mode sample.

    Args:
        backbone: a detector's backbone (body + FPN).
        input_size: the (C, H, W) of the sample; 224 px when None.
    """
    side = tuple(input_size or (224, 224))[-2:]
    was_training = backbone.training
    backbone.eval()
    try:
        return list(backbone(torch.zeros(1, 3, *side)).keys())
    finally:
        backbone.train(was_training)


def pyramid_taps(view: PyramidOutputs, body_taps: Sequence[Tap], input_size: Optional[Sequence[int]],
                 tracer_kwargs: Optional[dict]) -> List[Tap]:
    """``body_taps`` (found on the body alone) and the FPN levels, as taps of ``view``.

    Args:
        view: the backbone seen through ``PyramidOutputs``.
        body_taps: taps of ``view.backbone.body`` (none for FPN levels alone).
        input_size, tracer_kwargs: as ``find_taps`` takes them.
    """
    names = [f"backbone.body.{t.name}" for t in body_taps] + [f"levels.{key}" for key in view.levels]
    return find_taps(view, input_size=input_size, nodes=names, tracer_kwargs=tracer_kwargs)


def ssd_taps(extractor: nn.Module, probe_side: int, min_stride: int = 4, position: str = "pre",
             tracer_kwargs: Optional[dict] = None) -> List[Tap]:
    """An SSD backbone's stage ends up to ``SSD_MAX_TAP_STRIDE`` (its extra layers are its neck).

    Args:
        extractor: the SSD's backbone.
        probe_side: the side of the square sample the taps are found at (a multiple of 32 at least the
            SSD's own input size, so that strides come out as powers of two).
        min_stride, position, tracer_kwargs: as ``find_taps`` takes them.
    """
    taps = find_taps(extractor, input_size=(3, probe_side, probe_side), min_stride=min_stride, position=position,
                     tracer_kwargs=tracer_kwargs)
    return [tap for tap in taps if tap.stride <= SSD_MAX_TAP_STRIDE]
