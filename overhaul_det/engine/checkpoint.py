"""Checkpoints are data, not code: weights_only loading, safetensors, an explicit allow-list.

mmengine 0.10 calls ``torch.load`` with the default ``weights_only`` of the installed torch;
its own checkpoints hold a few non-tensor objects (the message hub's HistoryBuffer, numpy
scalars and arrays). We load every local file with ``weights_only=True`` and allow exactly
those types, and replace mmengine's local loader with this one.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ["SAFE_GLOBALS", "load_checkpoint_file", "load_state_dict_file", "load_weights_into", "load_state_into",
           "UnsafeCheckpointError"]


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint needs objects outside the allow-list to load (possibly code)."""


_HISTORY_STATISTICS = frozenset({"min", "max", "mean", "current"})


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what mmengine pickles with it: a HistoryBuffer's statistic methods."""
    from mmengine.logging import HistoryBuffer

    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and name in _HISTORY_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


def _safe_globals() -> list:
    from mmengine.logging import HistoryBuffer

    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int8", "uint8", "bool")]
    return [HistoryBuffer, OrderedDict, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes,
            (_history_buffer_getattr, "builtins.getattr")]


SAFE_GLOBALS = _safe_globals()


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Any:
    """Load a ``.pth``/``.pt`` file with weights_only=True (allow-listed types) or a ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        return load_file(str(path), device=device)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        blocked = _blocked_globals(path)
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds Python objects outside the allow-list, which could run code "
            f"({blocked}). If you trust the file, convert it once to plain tensors: "
            "`python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=False); "
            "st.save_file({k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}, 'OUT.safetensors')\"`"
        ) from None


def _blocked_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # an unreadable file still gets the refusal, without the list
        return "objects it needs could not be listed"
    allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" for g in SAFE_GLOBALS
               if not isinstance(g, tuple)} | {"builtins.getattr"}
    blocked = [n for n in names if n not in allowed]
    return "needs " + ", ".join(blocked[:5]) if blocked else "a restricted getattr was misused"


def load_state_dict_file(path: Union[str, os.PathLike], prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """A plain state_dict from a file: unwraps ``state_dict``/``model`` keys and strips ``prefix``."""
    data = load_checkpoint_file(path)
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    if prefix:
        data = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
        if not data:
            raise ValueError(f"{path} has no key starting with '{prefix}'")
    return data


def load_weights_into(model: torch.nn.Module, path: Union[str, os.PathLike], prefix: Optional[str], what: str,
                      hint: str, ignore_missing: tuple = ()) -> None:
    """Load a weights file into ``model``; any shape or key mismatch is one ValueError naming
    the file, ``what`` it was meant for, an example key and ``hint`` (the fix)."""
    load_state_into(model, load_state_dict_file(path, prefix), f"checkpoint {path}", what, hint, ignore_missing)


def load_state_into(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, what: str, hint: str,
                    ignore_missing: tuple = ()) -> None:
    """``load_weights_into`` for a state_dict already read from ``source``."""
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(
            f"{source} does not match {what}: {len(wrong)} tensors have other shapes "
            f"(e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} in the "
            f"model); {hint}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(ignore_missing)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match {what}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}); {hint}"
        )


@CheckpointLoader.register_scheme(prefixes="", force=True)
def _load_from_local(filename: str, map_location: Any) -> Any:
    return load_checkpoint_file(filename, map_location)
