"""The teacher runner: a model run only as far as its last tap, returning {tap name: tensor},
optionally with every BatchNorm on batch statistics and no running statistic updated."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .capture import compile_graph, locate, make_consumers_out_of_place
from .modules import ModuleTapRunner
from .predicates import module_of
from .tap import Tap
from .trace import trace



_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _batch_statistics(root: nn.Module, graph: fx.Graph) -> None:
    """Make every trainable BatchNorm in ``graph`` normalise with batch statistics, updating nothing."""
    for node in list(graph.nodes):
        module = module_of(root, node)
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
    batch's statistics (OFD's teacher mode) and no running statistic is updated. Module taps
    (``source='module'``) are read by forward hooks, the forward stopped after the last.
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap], batch_stats: bool = True,
                 tracer_kwargs: Optional[Dict[str, Sequence[Any]]] = None) -> None:
        self.model = model
        self.names = [t.name for t in taps]
        if any(t.source == "module" for t in taps):
            runner = ModuleTapRunner(model, taps, batch_stats)
            self._fn = lambda module, *args, **kwargs: runner(*args, **kwargs)
            return
        graph = trace(model, training=False, tracer_kwargs=tracer_kwargs)
        nodes = locate(graph, self.names, "eval")
        for node in nodes.values():
            make_consumers_out_of_place(model, graph, node)
        output = next(n for n in graph.nodes if n.op == "output")
        graph.erase_node(output)
        graph.output({name: node for name, node in nodes.items()})
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target in (torch._assert, getattr(torch, "_assert_async", None)):
                graph.erase_node(node)
        if batch_stats:
            _batch_statistics(model, graph)
        graph.lint()
        self._fn = compile_graph(model, graph, prune=True)

    def __call__(self, *args, **kwargs) -> Dict[str, Tensor]:
        return self._fn(self.model, *args, **kwargs)
