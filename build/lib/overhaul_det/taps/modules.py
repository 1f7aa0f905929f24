"""Module-output taps: the fallback for models FX cannot trace (timm's EVA-based ViTs with rotary
embeddings) or where the graph holds fewer than three stage ends (CrossViT's two token branches).

The positions are the modules timm lists in ``model.feature_info`` (what its ``forward_intermediates``
returns); their outputs are captured by forward hooks. These are stage outputs, not the
pre-activation points the FX path finds: such taps carry ``source='module'``."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tap import Tap
from .predicates import layout_of

logger = logging.getLogger(__name__)


def feature_modules(model: nn.Module) -> List[dict]:
    """timm's ``feature_info`` entries ({'module', 'num_chs', 'reduction'}) of ``model``; [] without."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    return [dict(entry) for entry in info if isinstance(entry, dict) and entry.get("module")]


def _tensors(output) -> List[Optional[Tensor]]:
    """A module's output as a list: a tensor alone, or the tensors of a tuple / list (others as None)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [o if isinstance(o, Tensor) else None for o in output]
    return [None]


def _pick(output, tap: Tap) -> Tensor:
    return output if tap.output_index is None else output[tap.output_index]


def _record_outputs(model: nn.Module, modules: Sequence[str], sample: Tensor) -> Dict[str, List[Optional[Tensor]]]:
    """One eval-mode, no-grad forward of ``sample`` with hooks on ``modules``: their outputs."""
    outputs: Dict[str, List[Optional[Tensor]]] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda module, args, output, name=name: outputs.__setitem__(name, _tensors(output)))
        for name in modules]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return outputs


def _entry_tap(entry: dict, outputs: List[Optional[Tensor]], sample: Tensor, single: bool) -> Optional[Tap]:
    """The tap of one ``feature_info`` entry: the output (or element of a tuple output) whose channels
    are the entry's ``num_chs`` and whose shape is a feature map or tokens at the sample's size."""
    for index, tensor in enumerate(outputs):
        layout = layout_of(tuple(tensor.shape), sample) if tensor is not None else None
        if layout is None or layout[1] != entry.get("num_chs", layout[1]):
            continue
        kind, channels, stride = layout
        name = entry["module"] if single else f"{entry['module']}[{index}]"
        return Tap(name=name, channels=channels, stride=stride, norm=None, activation=None, module=entry["module"],
                   shape=tuple(tensor.shape), layout=kind, source="module", output_index=None if single else index)
    return None


def names_module(model: nn.Module, name: str) -> bool:
    """Whether ``name`` ('blocks.3', 'blocks.3[0]') is the path of a submodule of ``model``."""
    try:
        model.get_submodule(name.partition("[")[0])
    except AttributeError:
        return False
    return True


def named_module_taps(model: nn.Module, names: Sequence[str], sample: Tensor) -> List[Tap]:
    """Taps at the modules named in ``names`` ('blocks.3', or 'blocks.3[0]' for element 0 of a tuple
    output), in that order."""
    parsed = []
    for name in names:
        module, _, index = name.partition("[")
        if not names_module(model, name):
            raise ValueError(f"tap {name!r}: {type(model).__name__} has no module {module!r} (FX cannot trace "
                             "it, so taps are module outputs: give module paths, as in model.named_modules())")
        parsed.append((name, module, int(index.rstrip("]")) if index else None))
    outputs = _record_outputs(model, list(dict.fromkeys(m for _, m, _ in parsed)), sample)
    taps = []
    for name, module, index in parsed:
        tensors = outputs.get(module, [None])
        if index is None and len(tensors) > 1:
            raise ValueError(f"tap {name!r}: module {module!r} returns {len(tensors)} values; name one, "
                             f"e.g. '{module}[0]'")
        tensor = tensors[index or 0] if (index or 0) < len(tensors) else None
        layout = layout_of(tuple(tensor.shape), sample) if tensor is not None else None
        if layout is None:
            raise ValueError(f"tap {name!r}: the output of {module!r} is "
                             f"{tuple(tensor.shape) if tensor is not None else 'not a tensor'}, not a feature map "
                             "(N, C, H, W) / (N, H, W, C) or tokens (N, L, C); pick another module")
        taps.append(Tap(name=name, channels=layout[1], stride=layout[2], norm=None, activation=None, module=module,
                        shape=tuple(tensor.shape), layout=layout[0], source="module", output_index=index))
    return taps


def _spread(taps: List[Tap], count: int = 4) -> List[Tap]:
    """``count`` evenly spaced taps of one stride (the last included), as for ViTs on the FX path."""
    if len(taps) <= count:
        return taps
    return [taps[round(len(taps) * (i + 1) / count) - 1] for i in range(count)]


def module_taps(model: nn.Module, sample: Tensor, min_stride: int = 4) -> List[Tap]:
    """Taps at the outputs of the modules in ``model.feature_info``: the last of each stride, or, where
    all share one stride (ViTs), four evenly spaced blocks. [] if the model has no ``feature_info``."""
    entries = feature_modules(model)
    if not entries:
        return []
    outputs = _record_outputs(model, list(dict.fromkeys(e["module"] for e in entries)), sample)
    found = [_entry_tap(e, outputs.get(e["module"], [None]), sample, len(outputs.get(e["module"], [])) == 1)
             for e in entries]
    taps = [t for t in dict.fromkeys(found) if t is not None and t.stride >= min_stride]
    taps.sort(key=lambda t: t.stride)
    by_stride: Dict[int, List[Tap]] = {}
    for tap in taps:
        by_stride.setdefault(tap.stride, []).append(tap)
    if len(by_stride) == 1:
        return _spread(next(iter(by_stride.values())))
    return [group[-1] for group in by_stride.values()]


class _Recorder:
    """Forward hook storing a module's (picked) output under the taps' names while its store is active."""

    def __init__(self, store, taps: Sequence[Tap]) -> None:
        self.store = store
        self.taps = list(taps)

    def __call__(self, module: nn.Module, args, output) -> None:
        for tap in self.taps:
            self.store.put(_pick(output, tap), tap.name)


def attach_module_taps(model: nn.Module, taps: Sequence[Tap], store) -> None:
    """Register forward hooks that put the outputs at ``taps`` into ``store`` (see ``capture_taps``)."""
    by_module: Dict[str, List[Tap]] = {}
    for tap in taps:
        by_module.setdefault(tap.module, []).append(tap)
    model._ofd_hooks = [model.get_submodule(name).register_forward_hook(_Recorder(store, group))
                        for name, group in by_module.items()]


def detach_module_taps(model: nn.Module) -> None:
    for handle in model.__dict__.pop("_ofd_hooks", []):
        handle.remove()


class _StopForward(Exception):
    """Raised by the last tap's hook: nothing after it is computed."""


def _batch_norm_with_batch_statistics(module: nn.Module, args, output) -> Tensor:
    """Replace a BatchNorm's output by its batch-statistics normalisation, updating no running statistic."""
    return F.batch_norm(args[0], None, None, module.weight, module.bias, True, 0.0, module.eps)


class ModuleTapRunner:
    """Runs a model only as far as its last module tap (the forward is stopped there) and returns
    {tap name: tensor}; with ``batch_stats`` every BatchNorm normalises with the batch's statistics
    and no running statistic is updated. The model is not modified (hooks live for one call)."""

    def __init__(self, model: nn.Module, taps: Sequence[Tap], batch_stats: bool = True) -> None:
        self.model = model
        self.taps = list(taps)
        self.batch_stats = batch_stats

    def __call__(self, *args, **kwargs) -> Dict[str, Tensor]:
        features: Dict[str, Tensor] = {}
        pending = {t.module for t in self.taps}

        def record(name: str, taps: List[Tap]):
            def hook(module, hook_args, output):
                for tap in taps:
                    features[tap.name] = _pick(output, tap)
                pending.discard(name)
                if not pending:
                    raise _StopForward
            return hook

        by_module: Dict[str, List[Tap]] = {}
        for tap in self.taps:
            by_module.setdefault(tap.module, []).append(tap)
        handles = [self.model.get_submodule(name).register_forward_hook(record(name, group))
                   for name, group in by_module.items()]
        if self.batch_stats:
            handles += [m.register_forward_hook(_batch_norm_with_batch_statistics) for m in self.model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        try:
            self.model(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [t.name for t in self.taps if t.name not in features]
        if missing:
            raise RuntimeError(f"{type(self.model).__name__}'s forward never ran the module(s) of taps {missing}")
        return features

