"""Weights are data, not code: ``torch.load(weights_only=True)`` or safetensors, and a state_dict
loaded strictly with one error naming the file, the model and the fix.

Torch and safetensors only: building a model never imports or changes mmengine. The engine adds
the few mmengine types its own training checkpoints hold (``engine/checkpoint.py``).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import torch

__all__ = ["UnsafeCheckpointError", "classifier_key_candidates", "load_checkpoint_file", "load_state_dict_file", "load_weights_into",
           "load_state_into"]


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint needs objects outside the allow-list to load (possibly code)."""


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Any = "cpu", safe_globals: Sequence = ()) -> Any:
    """Load a ``.pth``/``.pt`` file with weights_only=True (tensors, containers, and ``safe_globals``)
    or a ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        return load_file(str(path), device=device)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        blocked = _blocked_globals(path, safe_globals)
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds Python objects outside the allow-list, which could run code "
            f"({blocked}). If you trust the file, convert it once to plain tensors: "
            "`python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=False); "
            "st.save_file({k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}, 'OUT.safetensors')\"`"
        ) from None


def _blocked_globals(path: Path, safe_globals: Sequence) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # an unreadable file still gets the refusal, without the list
        return "objects it needs could not be listed"
    allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" for g in safe_globals
               if not isinstance(g, tuple)} | {name for g in safe_globals if isinstance(g, tuple) for name in g[1:]}
    blocked = [n for n in names if n not in allowed]
    return "needs " + ", ".join(blocked[:5]) if blocked else "a restricted getattr was misused"


def load_state_dict_file(path: Union[str, os.PathLike], prefix: Optional[str] = None,
                         safe_globals: Sequence = ()) -> Dict[str, torch.Tensor]:
    """A plain state_dict from a file: unwraps ``state_dict``/``model`` keys and strips ``prefix``."""
    data = load_checkpoint_file(path, safe_globals=safe_globals)
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


def classifier_key_candidates(key: str) -> Iterator[str]:
    """Classifier keys that a detector's or segmenter's body key may come from: itself, under
    'features.' (torchvision MobileNets), or with timm's flattening of nested sequences undone
    ('stages_1' for 'stages.1')."""
    yield key
    yield "features." + key
    head, _, rest = key.partition(".")
    for split in (head.partition("_"), head.rpartition("_")):
        if split[1]:
            yield f"{split[0]}.{split[2]}.{rest}"
