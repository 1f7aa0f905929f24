"""Human-readable reports of a model's taps: a table, and a picture of the values at each tap."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from .models.classifiers import build_classifier
from .ofd import DataMarginEstimator, bn_margin
from .taps import Tap, TapExtractor, find_taps

__all__ = ["taps_table", "taps_main", "plot_taps"]


def taps_table(model: torch.nn.Module, taps: Sequence[Tap]) -> str:
    """A fixed-width table: node, source (an FX node before the activation, or a module's output where
    FX cannot trace the model), shape, stride, feeding BN, activation, margin source and range."""
    rows = [("node", "source", "shape", "stride", "feeding BN", "activation", "margin")]
    for tap in taps:
        if tap.norm:
            m = bn_margin(model.get_submodule(tap.norm))
            margin = f"bn [{m.min():.2f}, {m.max():.2f}]"
        else:
            margin = "data"
        source = "fx node" if tap.source == "fx" else "module output"
        rows.append((tap.name, source, "x".join(map(str, tap.shape[1:])), str(tap.stride), tap.norm or "-",
                     tap.activation or "-", margin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _margin(model: torch.nn.Module, tap: Tap, feature: torch.Tensor) -> torch.Tensor:
    """The per-channel margin OFD would use at ``tap``: from its BatchNorm, else from the data."""
    if tap.norm:
        return bn_margin(model.get_submodule(tap.norm))
    return DataMarginEstimator.from_features([feature], -1 if tap.channel_last else 1)


def _tap_context(tap: Tap) -> str:
    """What surrounds the tap: '<norm> -> [tap] -> <activation>', or the tokens' block output."""
    if tap.source == "module":
        return f"output of module {tap.module} (FX fallback)"
    if tap.layout == "tokens":
        return "block output (tokens), no activation after it"
    return f"{tap.norm or 'no norm'} -> [tap] -> {tap.activation or 'no activation'}"


def plot_taps(model: torch.nn.Module, model_name: str, taps: Sequence[Tap], input_size: Sequence[int],
              path: str) -> None:
    """One panel per tap: the block around it, its shape and stride, and the distribution of its
    values on a random batch in eval mode with the per-channel margin range OFD clips the teacher to.

    Args:
        model: the model the taps were found in.
        model_name: its name, for the title.
        taps: the taps to draw, one panel each.
        input_size: (channels, height, width) of the random batch.
        path: the PNG to write.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ValueError(f"drawing {path} needs matplotlib: pip install 'overhaul-det[plot]'") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = TapExtractor(model, taps, batch_stats=False)(sample)
    fig, axes = plt.subplots(1, len(taps), figsize=(3.4 * len(taps), 3.4), squeeze=False)
    for ax, tap in zip(axes[0], taps):
        values = features[tap.name].float()
        margin = _margin(model, tap, values)
        ax.hist(values.flatten()[:200_000].numpy(), bins=80, color="#9ecae1", log=True)
        ax.axvspan(float(margin.min()), float(margin.max()), color="#d62728", alpha=0.15, label="margin range")
        ax.axvline(float(margin.mean()), color="#d62728", lw=1, label=f"mean margin {float(margin.mean()):.2f}")
        ax.axvline(0.0, color="black", lw=0.6)
        negative = float((values < 0).float().mean())
        ax.set_title(f"{tap.name}\n{_tap_context(tap)}\n{'x'.join(map(str, tap.shape[1:]))}, stride {tap.stride}, "
                     f"{negative:.0%} < 0", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(f"{model_name} at {input_size[-1]} px: values at each OFD tap (random batch, eval mode) "
                 "and the margins the teacher's are clipped to", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def taps_main(args: argparse.Namespace) -> int:
    model = build_classifier(args.model)
    taps = find_taps(model, input_size=(3, args.input_size, args.input_size), min_stride=args.min_stride)
    sys.stdout.write(f"{args.model}: {len(taps)} taps at input {args.input_size}x{args.input_size}\n")
    sys.stdout.write(taps_table(model, taps) + "\n")
    if args.png:
        plot_taps(model, args.model, taps, (3, args.input_size, args.input_size), args.png)
        sys.stdout.write(f"wrote {args.png}\n")
    return 0
