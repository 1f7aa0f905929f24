"""``_base_ = ['overhaul_det::_base_/datasets/fashion_mnist.py']``: a user's config inherits a shipped one from any
folder.

mmengine resolves ``pkg::path`` only for the OpenMMLab packages it lists, through a ``.mim`` folder, so the
``overhaul_det::`` entries are turned into absolute paths here, in a copy of the config that mmengine then reads.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List

__all__ = ["SCOPE", "shipped_configs_dir", "resolve_bases"]

SCOPE = "overhaul_det::"
_PREDEFINED = {
    "fileDirname": lambda path: str(path.parent),
    "fileBasename": lambda path: path.name,
    "fileBasenameNoExtension": lambda path: path.stem,
    "fileExtname": lambda path: path.suffix,
}


def shipped_configs_dir() -> Path:
    """The configs this package ships: ``overhaul_det/configs`` (in a clone, a link to the clone's ``configs/``)."""
    return Path(__file__).resolve().parent / "configs"


def _base_literals(source: str, path: Path) -> List[ast.Constant]:
    """The string literals of the module-level ``_base_`` assignment (a string or a list/tuple of them)."""
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError:
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return [value for value in values if isinstance(value, ast.Constant) and isinstance(value.value, str)]
    return []


def _suggestion(base: str) -> str:
    """The ``overhaul_det::`` spelling of a relative base when the shipped configs hold a file of that name."""
    parts = [part for part in Path(base).parts if part not in ("..", ".")]
    shipped = shipped_configs_dir()
    for start in range(len(parts)):
        if (shipped / Path(*parts[start:])).is_file():
            return f"'{SCOPE}{Path(*parts[start:]).as_posix()}'"
    return f"'{SCOPE}<path under configs/>'"


def _base_path(base: str, config: Path) -> Path:
    """The file one ``_base_`` entry of ``config`` names; a missing one is refused with the spelling to use."""
    if base.startswith(SCOPE):
        target = shipped_configs_dir() / base[len(SCOPE):]
        if not target.is_file():
            raise FileNotFoundError(f"{config}: _base_ {base!r} is not a shipped config (looked in "
                                    f"{shipped_configs_dir()}); the shipped configs are the .py files there")
        return target
    target = config.parent / base
    if not target.is_file():
        raise FileNotFoundError(f"{config}: _base_ {base!r} does not exist next to this file ({target.resolve()}); "
                                f"to inherit a shipped config from any folder, write {_suggestion(base)}")
    return target


def _with_predefined_vars(source: str, config: Path) -> str:
    """``source`` with mmengine's ``{{ fileDirname }}`` and friends filled from the original file, not the copy."""
    for name, value in _PREDEFINED.items():
        source = re.sub(r"\{\{\s*" + name + r"\s*\}\}", value(config).replace("\\", "/"), source)
    return source


def _prepare(config: Path, folder: Path, done: Dict[Path, Path]) -> Path:
    """``config`` itself, or a copy in ``folder`` whose bases are absolute paths when it or a base of it uses
    ``overhaul_det::``; every base is checked to exist."""
    config = config.resolve()
    if config in done:
        return done[config]
    done[config] = config
    if config.suffix != ".py":
        return config
    source = config.read_text()
    replacements = {}
    for literal in _base_literals(source, config):
        target = _prepare(_base_path(literal.value, config), folder, done)
        if literal.value.startswith(SCOPE) or target != (config.parent / literal.value).resolve():
            replacements[ast.get_source_segment(source, literal)] = repr(str(target))
    if not replacements:
        return config
    for segment, absolute in replacements.items():
        source = source.replace(segment, absolute)
    copy = folder / str(len(done)) / config.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(_with_predefined_vars(source, config))
    done[config] = copy
    return copy


def resolve_bases(path: str, folder: str) -> str:
    """The file to give mmengine for the config at ``path``: ``path`` itself, or a copy of the same name with
    ``overhaul_det::`` bases made absolute. Every ``_base_`` of the chain is checked, so a missing one names its file.

    Args:
        path: the user's config file.
        folder: where copies are written (a temporary folder the caller removes once the config is loaded).
    """
    return str(_prepare(Path(path), Path(folder), {}))
