"""A config's ``model``, dataset and loop (``train_cfg``, ``val_cfg``, ``test_cfg``) keys checked against the classes
they build, before anything is built: a misspelt key is named with its place in the config and the nearest key the
class takes."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.registry import Registry

from ..registry import DATASETS, LOOPS, MODELS
from .paths import DATALOADERS

__all__ = ["check_config_keys", "parameter_names", "refuse_unknown_keys", "unknown_key_error"]

# What mmengine's Runner hands a loop itself, and the keys it reads to choose the loop: none is the loop's to take.
_RUNNER_GIVES = ("runner", "dataloader", "evaluator")
_LOOP_CHOICE = ("type", "_scope_", "by_epoch")


def parameter_names(function: Callable) -> List[str]:
    """The names ``function`` itself takes (not those it passes on through ``*args`` or ``**kwargs``)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [name for name, p in inspect.signature(function).parameters.items() if p.kind not in kinds]


def _takes(cls: type) -> Optional[List[str]]:
    """The keyword names ``cls(...)`` takes; None where it takes any (``**kwargs``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [name for name in parameter_names(cls.__init__) if name != "self"]


def unknown_key_error(where: str, key: str, names: Sequence[str], owner: str, detail: str = "") -> TypeError:
    """A TypeError naming ``where.key``, ``detail`` in brackets, the nearest of ``names`` and all that ``owner``
    takes."""
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {where}.{close[0]}? " if close else "; "
    return TypeError(f"{where}.{key}: unknown key{f' ({detail})' if detail else ''}{hint}{owner} takes "
                     f"{', '.join(names)}")


def refuse_unknown_keys(given: Iterable[str], names: Sequence[str], where: str, owner: str) -> None:
    """TypeError naming ``where.key`` for the first of ``given`` not in ``names`` (what ``owner`` takes), with
    the nearest of them."""
    for key in given:
        if key not in names:
            raise unknown_key_error(where, key, names, owner)


def _check_spec(spec: Any, registry: Registry, where: str) -> None:
    """TypeError naming ``where.key`` for a key of ``spec`` that its registered ``type`` does not take."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return
    cls = registry.get(spec["type"])
    names = _takes(cls) if cls is not None else None
    if names is None:
        return
    refuse_unknown_keys([key for key in spec if key not in ("type", "_scope_")], names, where, cls.__name__)


def _datasets(spec: Any, where: str) -> Iterator[Tuple[Any, str]]:
    """Each dataset config inside ``spec`` with its place in the config, wrappers (``dataset=``,
    ``datasets=[...]``) included."""
    if not isinstance(spec, dict):
        return
    yield spec, where
    yield from _datasets(spec.get("dataset"), f"{where}.dataset")
    for index, inner in enumerate(spec.get("datasets") or []):
        yield from _datasets(inner, f"{where}.datasets[{index}]")


def _loop_class(where: str, spec: dict) -> Optional[type]:
    """The loop class mmengine's Runner builds from ``spec`` at ``where`` ('train_cfg', 'val_cfg', 'test_cfg'):
    its ``type``, else by ``by_epoch`` for training; None where it cannot tell (the Runner then says why)."""
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop, ValLoop

    if isinstance(spec.get("type"), str):
        return LOOPS.get(spec["type"])
    if where != "train_cfg":
        return {"val_cfg": ValLoop, "test_cfg": TestLoop}[where]
    if "by_epoch" not in spec:
        return None
    return EpochBasedTrainLoop if spec["by_epoch"] else IterBasedTrainLoop


def _check_loop(spec: Any, where: str) -> None:
    """TypeError naming ``where.key`` for a key of a loop config that its loop does not take."""
    if not isinstance(spec, dict):
        return
    cls = _loop_class(where, spec)
    names = _takes(cls) if cls is not None else None
    if names is None:
        return
    names = [name for name in names if name not in _RUNNER_GIVES]
    refuse_unknown_keys([key for key in spec if key not in _LOOP_CHOICE], names, where, cls.__name__)


def check_config_keys(cfg: Config) -> None:
    """Refuse a key of ``model``, of any dataloader's dataset or of a loop config that its class does not take."""
    _check_spec(cfg.get("model"), MODELS, "model")
    for loader in DATALOADERS:
        for spec, where in _datasets((cfg.get(loader) or {}).get("dataset"), f"{loader}.dataset"):
            _check_spec(spec, DATASETS, where)
    for where in ("train_cfg", "val_cfg", "test_cfg"):
        _check_loop(cfg.get(where), where)
