"""A config's ``model``, dataset, dataloader, loop (``train_cfg``, ``val_cfg``, ``test_cfg``), hook and optimizer keys
checked against the classes they build, before anything is built: a misspelt key is named with its place in the config
and the nearest key the class takes."""
from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.registry import Registry
from mmengine.runner import Runner

from ..registry import DATASETS, HOOKS, LOOPS, MODELS, OPTIM_WRAPPERS, OPTIMIZERS
from .paths import DATALOADERS

__all__ = ["check_config_keys", "check_option_keys", "check_top_level_keys", "parameter_names", "refuse_unknown_keys",
           "unknown_key_error", "RUNNER_KEYS"]

# What mmengine's Runner hands a loop itself, and the keys it reads to choose the loop: none is the loop's to take.
_RUNNER_GIVES = ("runner", "dataloader", "evaluator")
_LOOP_CHOICE = ("type", "_scope_", "by_epoch")
# What mmengine's Runner.build_dataloader reads itself before it hands the rest to torch's DataLoader.
_DATALOADER_OWN = ("num_batch_per_epoch", "disable_subprocess_warning")
# What mmengine's optimizer wrapper constructors read from ``optim_wrapper`` besides the wrapper's own arguments.
_CONSTRUCTOR_KEYS = ("optimizer", "constructor", "paramwise_cfg")


def parameter_names(function: Callable) -> List[str]:
    """The names ``function`` itself takes (not those it passes on through ``*args`` or ``**kwargs``)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [name for name, p in inspect.signature(function).parameters.items() if p.kind not in kinds]


# The top-level keys mmengine's Runner (and this package's assembly) reads; a config may add helper variables.
RUNNER_KEYS = frozenset(parameter_names(Runner.__init__)) - {"self"} | {
    "_base_", "default_scope", "launcher", "randomness", "env_cfg", "log_level", "log_processor", "visualizer",
    "custom_hooks", "default_hooks", "resume", "load_from", "work_dir", "data_preprocessor", "model_wrapper_cfg",
    "custom_imports", "auto_scale_lr", "vis_backends", "data_root",
}


def _kwargs_take_nothing(cls: type) -> bool:
    """Whether ``cls`` takes ``**kwargs`` but no name of them works: mmengine's CheckpointHook hands them to
    ``Runner.save_checkpoint`` beside every argument that method has, so any key there fails at the first save."""
    from mmengine.hooks import CheckpointHook

    return issubclass(cls, CheckpointHook)


def _takes(cls: type, through_bases: bool = False) -> Optional[List[str]]:
    """The keyword names ``cls(...)`` takes; None where it takes any (``**kwargs``). ``through_bases``: ``**kwargs``
    go to the base class's ``__init__`` (as optimizer wrappers pass them), whose names are added."""
    names: List[str] = []
    for owner in cls.__mro__:
        if "__init__" not in vars(owner):
            continue
        init = owner.__init__
        names += [name for name in parameter_names(init) if name not in ("self", *names)]
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            return names
        if _kwargs_take_nothing(owner):
            return names
        if not through_bases:
            return None
    return None


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


def _check_spec(spec: Any, registry: Registry, where: str, also: Sequence[str] = (),
                through_bases: bool = False) -> None:
    """TypeError naming ``where.key`` for a key of ``spec`` that its registered ``type`` does not take (nor is one
    of ``also``, the keys read before the class is built)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return
    cls = registry.get(spec["type"])
    names = _takes(cls, through_bases) if cls is not None else None
    if names is None:
        return
    names += [name for name in also if name not in names]
    refuse_unknown_keys([key for key in spec if key not in ("type", "_scope_")], names, where, cls.__name__)


def _check_dataloader(spec: Any, where: str) -> None:
    """TypeError naming ``where.key`` for a dataloader key that neither mmengine nor torch's DataLoader reads."""
    from torch.utils.data import DataLoader

    if not isinstance(spec, dict):
        return
    names = [name for name in parameter_names(DataLoader.__init__) if name != "self"] + list(_DATALOADER_OWN)
    refuse_unknown_keys([key for key in spec if key != "_scope_"], names, where, "DataLoader")


def _check_hooks(cfg: Config) -> None:
    """TypeError naming ``default_hooks.NAME.key`` or ``custom_hooks[i].key`` for a key its hook does not take."""
    for name, spec in (cfg.get("default_hooks") or {}).items():
        _check_spec(spec, HOOKS, f"default_hooks.{name}")
    for index, spec in enumerate(cfg.get("custom_hooks") or []):
        _check_spec(spec, HOOKS, f"custom_hooks[{index}]")


def _check_optimizer(spec: Any) -> None:
    """TypeError naming ``optim_wrapper.key`` or ``optim_wrapper.optimizer.key`` for a key nobody takes."""
    if not isinstance(spec, dict):
        return
    _check_spec(spec, OPTIM_WRAPPERS, "optim_wrapper", also=_CONSTRUCTOR_KEYS, through_bases=True)
    _check_spec(spec.get("optimizer"), OPTIMIZERS, "optim_wrapper.optimizer")


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
    """Refuse a key of ``model``, of any dataloader or its dataset, of a loop config, a hook or the optimizer
    that its class does not take."""
    _check_spec(cfg.get("model"), MODELS, "model")
    _check_hooks(cfg)
    _check_optimizer(cfg.get("optim_wrapper"))
    for loader in DATALOADERS:
        _check_dataloader(cfg.get(loader), loader)
        for spec, where in _datasets((cfg.get(loader) or {}).get("dataset"), f"{loader}.dataset"):
            _check_spec(spec, DATASETS, where)
    for where in ("train_cfg", "val_cfg", "test_cfg"):
        _check_loop(cfg.get(where), where)


def _base_keys(cfg: Config) -> set:
    """The top-level keys the ``_base_`` files of ``cfg``'s file define (none for a config built in code)."""
    filename = cfg.filename
    if not filename or not Path(filename).is_file():
        return set()
    keys = set()
    for base in Config._get_base_files(filename):
        if "::" not in base:
            keys |= set(Config.fromfile(str(Path(filename).parent / base)).keys())
    return keys


def check_top_level_keys(cfg: Config, source: str) -> None:
    """ValueError for a top-level key of ``cfg`` that is neither read by the Runner nor inherited but lies
    within a letter or two of one that is (``data_rot`` for ``data_root``, ``trian_cfg``): helper variables pass."""
    known = RUNNER_KEYS | _base_keys(cfg)
    for key in cfg.keys():
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.85)
        if close:
            raise ValueError(f"{source}: unknown key '{key}'; did you mean '{close[0]}'?")


def check_option_keys(cfg: Config, source: str, options: dict) -> None:
    """ValueError for a ``--cfg-options`` key whose top level the config does not have and the Runner does not
    read: merged in, it would be a new variable nothing uses, and the run would go on with the config's value."""
    for option in options:
        key = option.split(".")[0]
        if key in RUNNER_KEYS:
            continue
        if key in cfg:
            _refuse_helper_variable(cfg, source, option, key)
            continue
        close = difflib.get_close_matches(key, sorted(set(cfg.keys()) | RUNNER_KEYS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"--cfg-options {option}: {source} has no key '{key}' and nothing reads it; {hint}"
                         f"the config's keys are {', '.join(sorted(cfg.keys()))}")


def _refuse_helper_variable(cfg: Config, source: str, option: str, key: str) -> None:
    """ValueError for a ``--cfg-options`` key on a helper variable (``max_epochs=3``): the file copied its value
    where it uses it when it was read, so the override would change nothing; the error names those keys."""
    tree = cfg.to_dict()
    value = tree[key]
    uses = [] if isinstance(value, (bool, type(None))) else _keys_holding(tree, value, skip=key)
    where = (f"set the keys that took its value instead: {', '.join(uses[:6])}" if uses else
             "set the keys that read it instead")
    raise ValueError(f"--cfg-options {option}: '{key}' is a variable of {source} whose value the file copied "
                     f"where it uses it when it was read, so changing it now changes nothing; {where}")


def _keys_holding(tree, value, skip: str, prefix: str = "") -> List[str]:
    """Dotted paths in ``tree`` (dicts and lists) whose value equals ``value``, the top-level ``skip`` left out."""
    found: List[str] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for name, child in items:
        path = f"{prefix}{name}"
        if path == skip:
            continue
        if type(child) is type(value) and child == value:
            found.append(path)
        else:
            found += _keys_holding(child, value, skip, path + ".")
    return found
