"""Checkpoints are data, not code, in the engine too: mmengine's local checkpoint loader replaced
by a weights_only one that allows exactly the non-tensor objects mmengine's own checkpoints hold.

mmengine 0.10 calls ``torch.load`` with the default ``weights_only`` of the installed torch; its
checkpoints hold a few non-tensor objects (the message hub's HistoryBuffer, numpy scalars and
arrays). ``install`` (called when a Runner is built) replaces mmengine's local loader.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..models import weights
from ..models.weights import UnsafeCheckpointError, load_state_into, load_weights_into

__all__ = ["SAFE_GLOBALS", "install", "load_checkpoint_file", "load_state_dict_file", "load_weights_into",
           "load_state_into", "UnsafeCheckpointError"]


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
    """``models.weights.load_checkpoint_file`` allowing mmengine's checkpoint objects too."""
    return weights.load_checkpoint_file(path, map_location, SAFE_GLOBALS)


def load_state_dict_file(path: Union[str, os.PathLike], prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """``models.weights.load_state_dict_file`` allowing mmengine's checkpoint objects too."""
    return weights.load_state_dict_file(path, prefix, SAFE_GLOBALS)


def _load_from_local(filename: str, map_location: Any) -> Any:
    return load_checkpoint_file(filename, map_location)


def install() -> None:
    """Make mmengine load local checkpoints with ``load_checkpoint_file``."""
    CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
