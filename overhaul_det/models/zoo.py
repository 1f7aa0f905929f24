"""The one place a model name becomes a zoo and a model: ``timm/x``, ``torchvision/x`` or a bare ``x``.

A bare name both zoos have is torchvision's (``resnet18`` is ``torchvision.models.resnet18``; write
``timm/resnet18`` for timm's); a bare name one zoo has is that zoo's. timm's hub ids
(``hf-hub:org/name``) go to timm as they are. Every builder of this package resolves names here.
"""
from __future__ import annotations

import difflib
import functools
import logging
from typing import FrozenSet, List, Optional, Tuple

import timm
import torchvision
from torch import nn

from .hub import existing_weights_file, timm_pretrained_file, torchvision_state_dict
from .weights import load_state_into

__all__ = ["ZOOS", "create_model", "resolve_model_name"]

logger = logging.getLogger(__name__)

ZOOS = ("torchvision", "timm")  # a bare name goes to the first zoo that has it
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_announced: set = set()


@functools.lru_cache(maxsize=None)
def _names(zoo: str) -> FrozenSet[str]:
    """The classification architectures ``zoo`` builds by name."""
    if zoo == "torchvision":
        return frozenset(torchvision.models.list_models(module=torchvision.models))
    return frozenset(timm.list_models())


def _has(zoo: str, name: str) -> bool:
    if zoo == "timm":
        return name.startswith(_HUB_PREFIXES) or timm.is_model(name)
    return name in _names(zoo)


def _suggestions(name: str) -> List[str]:
    """Up to five close names, each with the prefix of every zoo that has it."""
    candidates = sorted(set().union(*(_names(zoo) for zoo in ZOOS)))
    close = difflib.get_close_matches(name, candidates, n=5)
    return [f"{zoo}/{match}" for match in close for zoo in ZOOS if match in _names(zoo)]


def _zoo_of(name: str, bare: str, zoos: Tuple[str, ...]) -> str:
    """The first of ``zoos`` that has ``bare``; ValueError naming ``name``, with close names from both zoos."""
    zoo = next((z for z in zoos if _has(z, bare)), None)
    if zoo is None:
        close = _suggestions(bare)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name '{name}': not a {' nor a '.join(zoos)} classification model{hint}")
    return zoo


def _announce(name: str, zoo: str, bare: str) -> None:
    """Log once per name which zoo builds it (and, for a bare name both zoos have, how to get the other's)."""
    if name in _announced:
        return
    _announced.add(name)
    other = [z for z in ZOOS if z != zoo and name == bare and _has(z, bare)]
    note = f" (a bare name is {zoo}'s; write {other[0]}/{bare} for {other[0]}'s)" if other else ""
    target = f"torchvision.models.{bare}" if zoo == "torchvision" else f"timm.create_model('{bare}')"
    logger.info("%s -> %s%s", name, target, note)


def resolve_model_name(name: str) -> Tuple[str, str]:
    """``(zoo, bare name)`` for ``timm/x``, ``torchvision/x``, a timm hub id ``hf-hub:...`` or a bare ``x``.

    A bare name both zoos have is torchvision's. ValueError, with close names from both zoos, if
    the zoo named (or neither zoo) has it.
    """
    prefix, slash, bare = name.partition("/")
    if name.startswith(_HUB_PREFIXES) or not slash:
        prefix, bare = "", name
    elif prefix not in ZOOS:
        raise ValueError(f"model name '{name}': unknown zoo prefix '{prefix}/'; write timm/{bare}, "
                         f"torchvision/{bare} or a bare {bare} (torchvision's if it has one)")
    zoo = _zoo_of(name, bare, (prefix,) if prefix else ZOOS)
    _announce(name, zoo, bare)
    return zoo, bare


def create_model(name: str, pretrained: bool = False, weights: Optional[str] = None, **kwargs) -> nn.Module:
    """``name``'s model (see ``resolve_model_name``): random init, or its zoo's weights from the zoo's cache.

    torchvision's weights come from torch.hub's cache (``weights`` names them, ``pretrained`` means
    ``'DEFAULT'``); timm's from the Hugging Face cache, or the file of ``pretrained_cfg_overlay=dict(file=...)``.
    An absent file is a ``MissingWeightsError`` naming where it was looked for; nothing is downloaded
    (a timm hub id, ``hf-hub:org/name``, goes to timm as it is, which may download).

    Args:
        name: ``timm/x``, ``torchvision/x`` or a bare name.
        pretrained: load the zoo's default weights.
        weights: torchvision only: a weights name of the model (``'IMAGENET1K_V2'``, ``'DEFAULT'``).
        kwargs: go to ``torchvision.models.get_model`` or ``timm.create_model``.
    """
    zoo, bare = resolve_model_name(name)
    if zoo == "torchvision":
        if not (pretrained or weights):
            return torchvision.models.get_model(bare, weights=None, **kwargs)
        return _torchvision_pretrained(bare, weights or "DEFAULT", kwargs)
    if weights is not None:
        raise ValueError(f"weights={weights!r} names torchvision weights; {name} is a timm model: use "
                         "pretrained=True (timm's default tag, or name.tag) or pretrained_cfg_overlay=dict(file=PATH)")
    if pretrained and not bare.startswith(_HUB_PREFIXES):
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["file"] = (timm_pretrained_file(bare) if not overlay.get("file")
                           else existing_weights_file(bare, overlay["file"]))
        kwargs["pretrained_cfg_overlay"] = overlay
    return timm.create_model(bare, pretrained=pretrained, **kwargs)


def _torchvision_pretrained(bare: str, weights: str, kwargs: dict) -> nn.Module:
    """torchvision's ``bare`` with the named weights from torch.hub's cache, loaded weights_only and strictly
    (built with the weights' number of categories, as torchvision's builders do)."""
    state, member = torchvision_state_dict(bare, weights)
    categories = member.meta.get("categories")
    if categories and kwargs.setdefault("num_classes", len(categories)) != len(categories):
        raise ValueError(f"torchvision weights {member} have {len(categories)} classes, not "
                         f"num_classes={kwargs['num_classes']}; leave num_classes out (the head is replaced after)")
    model = torchvision.models.get_model(bare, weights=None, **kwargs)
    load_state_into(model, state, f"torchvision weights {member}", bare,
                    "the file in torch.hub's cache under that name holds another model's weights: replace it")
    logger.info("loaded torchvision weights %s for %s from torch.hub's cache", member, bare)
    return model
