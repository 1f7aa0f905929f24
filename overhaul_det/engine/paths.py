"""Paths in configs: the clone's ``checkpoints/`` and ``data/`` from any folder, and one ``data_root``.

Shipped configs name files relative to the repository root. A path that exists relative to the
current folder is kept; otherwise it is taken relative to the clone the config file lives in (or the
clone this package runs from). Checkpoints come with a clone only; configs also with the package
(``overhaul_det/configs``), where ``find_config`` looks last.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

from mmengine.config import Config

from ..config_bases import shipped_configs_dir

__all__ = ["REPO_FOLDERS", "DATALOADERS", "clone_roots", "find_config", "resolve_repo_path", "resolve_repo_paths",
           "fill_data_root"]

logger = logging.getLogger(__name__)

REPO_FOLDERS = ("checkpoints", "data")
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def _package_clone() -> Optional[Path]:
    """The clone this package runs from; None when it is installed from a wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "configs").is_dir() else None


def clone_roots(config_path: str) -> List[Path]:
    """The clones a config can mean: the folder above the nearest ``configs`` holding the file, then the
    clone this package runs from (none when installed from a wheel)."""
    roots = [parent.parent for parent in Path(config_path).resolve().parents if parent.name == "configs"][:1]
    package_clone = _package_clone()
    if package_clone is not None and package_clone not in roots:
        roots.append(package_clone)
    return roots


def find_config(path: str) -> str:
    """``path``, or, when a relative path is not found here, the same path in this package's clone or, for
    ``configs/...``, among the configs the package ships (logged).

    A config found in none of these places is refused with the nearest file name in its folder.
    """
    given = Path(path)
    if given.is_file():
        return path
    clone = _package_clone()
    shipped = shipped_configs_dir()
    under_configs = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) and len(given.parts) > 1 else None
    folders = [given.parent]
    for root, relative, whose in ((clone, given, "the clone's"), (shipped, under_configs, "the package's")):
        if root is None or relative is None or given.is_absolute():
            continue
        if (root / relative).is_file():
            logger.info("config %s is not in %s; using %s %s", path, Path.cwd(), whose, root / relative)
            return str(root / relative)
        folders.append(root / relative.parent)
    names = sorted({file.name for folder in folders if folder.is_dir() for file in folder.glob("*.py")})
    close = difflib.get_close_matches(given.name, names, n=1, cutoff=0.8)
    hint = f"; did you mean {given.parent / close[0]}?" if close else f"; the shipped configs are under {shipped}"
    raise FileNotFoundError(f"config {path} does not exist{hint}")


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` with ``fn`` applied to every string inside it (dicts, lists and tuples rebuilt)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_strings(item, fn) for item in value)
    return value


def _from_clone(value: str, roots: List[Path]) -> str:
    path = Path(value)
    if path.is_absolute() or len(path.parts) < 2 or path.parts[0] not in REPO_FOLDERS or path.exists():
        return value
    found = next((root / path for root in roots if (root / path).exists()), None)
    return str(found) if found is not None else value


def resolve_repo_path(value: str, config_path: str) -> str:
    """``value`` (a ``checkpoints/...`` or ``data/...`` path given on the command line) found as a config's paths
    are: here if it exists here, else in the clone of ``config_path`` or of this package.

    Args:
        value: the path as given.
        config_path: the config it goes with.
    """
    return _from_clone(value, clone_roots(config_path))


def resolve_repo_paths(cfg: Config, config_path: str) -> None:
    """Point ``checkpoints/...`` and ``data/...`` values that do not exist here at the clone's files."""
    roots = clone_roots(config_path)
    if roots:
        for key in list(cfg.keys()):
            cfg[key] = _map_strings(cfg[key], lambda value: _from_clone(value, roots))


def _leaf_datasets(spec: Any) -> Iterator[dict]:
    """The dataset configs inside a dataset config, through wrappers (``dataset=``, ``datasets=[...]``)."""
    if not isinstance(spec, dict):
        return
    if "dataset" in spec or "datasets" in spec:
        for inner in [spec.get("dataset"), *(spec.get("datasets") or [])]:
            yield from _leaf_datasets(inner)
    else:
        yield spec


def fill_data_root(cfg: Config, required: bool = False) -> None:
    """Give every dataset without its own ``data_root`` the config's top-level one, so one value (in the
    config, ``--cfg-options data_root=...`` or ``--data-root``) points all splits at a folder; evaluators
    take their ground truth (a COCO ``ann_file``) from their dataset. ``required`` (``--data-root``):
    a dataset with a data_root of its own is an error, not left behind."""
    data_root = cfg.get("data_root")
    if data_root is None:
        return
    for key in DATALOADERS:
        for dataset in _leaf_datasets((cfg.get(key) or {}).get("dataset")):
            if dataset.get("data_root") is None:
                dataset["data_root"] = data_root
            elif required and dataset["data_root"] != data_root:
                raise ValueError(
                    f"--data-root {data_root}: a dataset of {key} sets its own data_root {dataset['data_root']!r}; "
                    "remove it from the config (datasets take the top-level data_root) or leave out --data-root"
                )
