"""The tap record: where a feature is taken, its shape, and what feeds and consumes it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Tap:
    """One tap point: the FX node (``source='fx'``), or a module's output captured by a forward hook
    (``source='module'``: a stage output, element ``output_index`` of a tuple output), with its
    feature shape and what feeds and consumes it."""

    name: str
    channels: int
    stride: int
    norm: Optional[str]
    activation: Optional[str]
    module: str = ""
    shape: Tuple[int, ...] = ()
    layout: str = "nchw"
    source: str = "fx"
    output_index: Optional[int] = None

    @property
    def channel_last(self) -> bool:
        """True for tokens (N, L, C) and channel-last maps (N, H, W, C)."""
        return self.layout != "nchw"
