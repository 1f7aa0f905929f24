"""The report's plots: test metric per epoch per method, the final metric against alpha, and OFD run by run
with each teacher precision beside the baseline."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from overhaul_det.teacher_mode import PRECISIONS
from .methods import TASK_ABLATIONS, is_alpha_run, split_teacher_precision
from .report import decimals, finals_by_run, ofd_variants, summarise

# How the curve of a run with each teacher precision is drawn, in the colour of its method.
LINE_STYLES = {"auto": "-", "float32": ":", "bfloat16": "--", "float16": "-."}


def plot_curves(task: str, results: List[Dict], metric: str, path: Path) -> None:
    """Test metric per epoch, mean and ±1 std band per method; ablations, if any, in a second panel beside OFD.
    A colour per method, a line style per teacher precision, so that a method's runs with each teacher share
    its colour and no two curves in a panel look alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    bases = {m: split_teacher_precision(m) for m in dict.fromkeys(r["method"] for r in results)}
    methods = [m for m in bases if not is_alpha_run(m)]
    colors = {base: f"C{i % 10}" for i, base in enumerate(dict.fromkeys(bases[m][0] for m in methods))}
    switches = {f"ofd, {name}" for name in TASK_ABLATIONS[task]}
    ablations = [m for m in methods if bases[m][0] in switches]
    precisions = {bases[m][1] for m in ablations}
    references = [m for m in methods if bases[m][0] == "ofd" and bases[m][1] in precisions]
    panels = [("methods", [m for m in methods if m not in ablations]),
              ("ablations (one switch away from OFD)", references + ablations)]
    panels = [panel for panel in panels if panel[1]] or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for method in names:
            base, precision = bases[method]
            _plot_method(ax, method, [r["history"] for r in results if r["method"] == method], colors[base],
                         LINE_STYLES[precision])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task}, {title}: mean and ±1 std over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"test {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_alpha(task: str, results: List[Dict], metric: str, own_alpha: float, path: Path) -> None:
    """Final test metric against alpha (log scale), mean ± std over runs, one curve per teacher precision
    the sweep ran with, the baseline as a band, alpha='auto' drawn at the alphas it chose. Every point, the
    band and the config's own alpha average the same runs: those at a seed and thread count the sweep ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = {(r["seed"], r["threads"]) for r in results if is_alpha_run(r["method"])}
    results = [r for r in results if (r["seed"], r["threads"]) in swept]
    summary, digits = summarise(results), decimals(results)
    by_precision: Dict[str, Dict[str, str]] = {}
    for method in summary:
        base, precision = split_teacher_precision(method)
        by_precision.setdefault(precision, {})[base] = method
    fig, ax = plt.subplots(figsize=(6, 4))
    sweeps = [(p, named) for p, named in sorted(by_precision.items(), key=lambda item: PRECISIONS.index(item[0]))
              if any(base.startswith("alpha ") for base in named)]
    for i, (precision, named) in enumerate(sweeps):
        teacher = "" if precision == "auto" else f", {precision} teacher"
        grid = sorted((float(base.split()[1]), m) for base, m in named.items()
                      if base.startswith("alpha ") and base != "alpha auto")
        grid = sorted(grid + [(own_alpha, named["ofd"])] * ("ofd" in named))
        ax.errorbar([a for a, _ in grid], [summary[m]["mean"] for _, m in grid], [summary[m]["std"] for _, m in grid],
                    marker="o", capsize=3, color=f"C{2 * i}", label=f"OFD at a fixed alpha{teacher}")
        auto = [r for r in results if r["method"] == named.get("alpha auto") and "alpha_auto" in r]
        if auto:
            ax.scatter([r["alpha_auto"] for r in auto], [r["final"] for r in auto], marker="*", s=120,
                       color=f"C{2 * i + 1}", zorder=3,
                       label=f"alpha='auto'{teacher} (mean {summary[named['alpha auto']]['mean']:.{digits}f})")
    if "baseline" in summary:
        base = summary["baseline"]
        ax.axhspan(base["mean"] - base["std"], base["mean"] + base["std"], color="grey", alpha=0.25,
                   label=f"baseline {base['mean']:.{digits}f} ± {base['std']:.{digits}f}")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"final test {metric}")
    ax.set_title(f"{task}: OFD against alpha\nmean ± std over {_runs_named(swept)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_precision_runs(task: str, results: List[Dict], metric: str, path: Path) -> None:
    """Final metric run by run (seed/threads on the x axis): the baseline and OFD with each teacher precision, each
    with its mean as a dashed line, so a run OFD loses to its baseline and a precision that ends lower stand out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = finals_by_run(results)
    keys = sorted({(threads, seed) for _, seed, threads in finals})
    digits = decimals(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(keys) + 2) + 3, 4))
    for i, (method, marker) in enumerate(zip(["baseline"] + ofd_variants(results), "xosd^")):
        xs = [x for x, (threads, seed) in enumerate(keys) if (method, seed, threads) in finals]
        ys = [finals[(method, seed, threads)] for threads, seed in keys if (method, seed, threads) in finals]
        if not ys:
            continue
        color = "grey" if method == "baseline" else f"C{i - 1}"
        mean = sum(ys) / len(ys)
        ax.scatter(xs, ys, marker=marker, color=color, zorder=3,
                   label=f"{method} (n={len(ys)}, mean {mean:.{digits}f})")
        ax.axhline(mean, color=color, linestyle="--", linewidth=1)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"s{seed}/{threads}t" for threads, seed in keys], rotation=90, fontsize=7)
    ax.set_xlabel("seed / threads")
    ax.set_ylabel(f"final test {metric}")
    ax.set_title(f"{task}: each run's final {metric}, OFD by teacher precision", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no run
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _runs_named(keys) -> str:
    """'seeds 0, 1, 2 at 1 thread' for (seed, threads) keys; each thread count's seeds where they differ."""
    by_threads: Dict[int, List[int]] = {}
    for seed, threads in sorted(keys):
        by_threads.setdefault(threads, []).append(seed)
    parts = [f"seeds {', '.join(map(str, seeds))} at {threads} thread{'s' * (threads != 1)}"
             for threads, seeds in sorted(by_threads.items())]
    return "; ".join(parts)


def _plot_method(ax, method: str, curves: List[List[float]], color: str, linestyle: str) -> None:
    import numpy as np

    length = min(len(c) for c in curves)
    values = np.array([c[:length] for c in curves])
    epochs = np.arange(1, length + 1)
    mean, std = values.mean(0), values.std(0)
    ax.plot(epochs, mean, marker="o", markersize=3, color=color, linestyle=linestyle,
            label=f"{method} (n={len(curves)})")
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
