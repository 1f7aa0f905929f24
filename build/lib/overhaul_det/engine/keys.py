"""A config's ``model`` and dataset keys checked against the classes they build, before anything is built: a
misspelt key is named with its place in the config and the nearest key the class takes."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.registry import Registry

from ..registry import DATASETS, MODELS
from .paths import DATALOADERS

__all__ = ["check_config_keys", "refuse_unknown_keys"]


def _takes(cls: type) -> Optional[List[str]]:
    """The keyword names ``cls(...)`` takes; None where it takes any (``**kwargs``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_POSITIONAL]


def refuse_unknown_keys(given: Iterable[str], names: Sequence[str], where: str, owner: str) -> None:
    """TypeError naming ``where.key`` for the first of ``given`` not in ``names`` (what ``owner`` takes), with
    the nearest of them."""
    for key in given:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where}.{close[0]}? " if close else "; "
            raise TypeError(f"{where}.{key}: unknown key{hint}{owner} takes {', '.join(names)}")


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


def check_config_keys(cfg: Config) -> None:
    """Refuse a key of ``model`` or of any dataloader's dataset that its class does not take."""
    _check_spec(cfg.get("model"), MODELS, "model")
    for loader in DATALOADERS:
        for spec, where in _datasets((cfg.get(loader) or {}).get("dataset"), f"{loader}.dataset"):
            _check_spec(spec, DATASETS, where)
