"""Human-readable reports of a model's taps: a table, and optionally a picture of the stages."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

import torch

from .models.classifiers import build_classifier
from .ofd import bn_margin
from .taps import Tap, find_taps

__all__ = ["taps_table", "taps_main", "plot_taps"]


def taps_table(model: torch.nn.Module, taps: Sequence[Tap]) -> str:
    """A fixed-width table: node, shape, stride, feeding BN, activation, margin source and range."""
    rows = [("node", "shape", "stride", "feeding BN", "activation", "margin")]
    for tap in taps:
        if tap.norm:
            m = bn_margin(model.get_submodule(tap.norm))
            margin = f"bn [{m.min():.2f}, {m.max():.2f}]"
        else:
            margin = "data"
        rows.append((tap.name, "x".join(map(str, tap.shape[1:])), str(tap.stride), tap.norm or "-",
                     tap.activation or "-", margin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_taps(model_name: str, taps: Sequence[Tap], path: str) -> None:
    """Draw the stages as boxes sized by channels, at their strides, with each tap marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(taps), 3.2))
    top = max(t.channels for t in taps)
    for i, tap in enumerate(taps):
        height = 0.3 + 0.7 * tap.channels / top
        ax.add_patch(plt.Rectangle((i * 2.2, 0), 1.6, height, color="#9ecae1"))
        ax.text(i * 2.2 + 0.8, height + 0.05, f"stride {tap.stride}\n{tap.channels} ch", ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{tap.name}\n({tap.activation or 'no act'})", (i * 2.2 + 1.6, height / 2), (i * 2.2 + 1.9, -0.45),
                    fontsize=7, ha="center", color="#d62728", arrowprops=dict(arrowstyle="->", color="#d62728"))
    ax.set_xlim(-0.3, 2.2 * len(taps))
    ax.set_ylim(-0.7, 1.5)
    ax.axis("off")
    ax.set_title(f"{model_name}: OFD taps (pre-activation stage ends)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def taps_main(args: argparse.Namespace) -> int:
    model = build_classifier(args.model)
    taps = find_taps(model, input_size=(3, args.input_size, args.input_size), min_stride=args.min_stride)
    sys.stdout.write(f"{args.model}: {len(taps)} taps at input {args.input_size}x{args.input_size}\n")
    sys.stdout.write(taps_table(model, taps) + "\n")
    if args.png:
        plot_taps(args.model, taps, args.png)
        sys.stdout.write(f"wrote {args.png}\n")
    return 0
