"""Reproduce the comparison: baseline vs KD vs OFD vs OFD+KD over seeds, per task, from configs.

Each run trains the student with the task's config and one method's switches at a given thread
count, records the test metric after every epoch, the wall time and where it came from (commit,
code, config and weights hashes, threads, torch version, CPU; ``provenance.py``). A run whose result exists is
skipped while that record still matches the current code, so the command resumes; otherwise it
is trained again. Writes a JSON file, a markdown table and a plot per task.

The OFD teacher runs in the config's precision, 'auto' (bfloat16 on CPUs and GPUs that compute it natively, float32
elsewhere). ``--teacher-precision`` fixes it for every run that distils features; such a run is named '<method>,
<precision> teacher', and ``--methods`` takes that name too ('ofd, float32 teacher').
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .engine.history import read_val_history
from .provenance import code_hash, git_commit, stamp, stale_fields
from .teacher_mode import PRECISIONS

__all__ = ["TASKS", "METHODS", "ABLATIONS", "TASK_ABLATIONS", "main", "run_task"]

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

TASKS = {
    "classification": dict(
        config="configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py",
        metric="accuracy/top1", teacher_config="configs/classification/teacher_resnet18_fashionmnist.py",
        methods=["baseline", "kd", "ofd", "ofd+kd"]),
    "detection": dict(
        config="configs/detection/ofd_frcnn_fashion_scenes.py", metric="coco/bbox_mAP",
        methods=["baseline", "ofd", "ofd, body+fpn"]),
    "segmentation": dict(
        config="configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py", metric="seg/mIoU",
        methods=["baseline", "ofd"]),
}

METHODS: Dict[str, Dict] = {
    "baseline": {"model.ofd.alpha": 0},
    "kd": {"model.ofd.alpha": 0, "model.kd_weight": 1.0},
    "ofd": {},
    "ofd+kd": {"model.kd_weight": 1.0},
    # detection: the teacher's FPN outputs tapped besides its body's stage ends, alpha chosen against the task loss
    "ofd, body+fpn": {"model.feature_levels": "body+fpn", "model.ofd.alpha": "auto"},
}

ABLATIONS: Dict[str, Dict] = {
    "teacher BN eval": {"model.ofd.teacher_bn": "eval"},
    "post-ReLU position": {"model.ofd.position": "post"},
    "full L2 (not partial)": {"model.ofd.distance": "l2"},
    "no margin (identity teacher)": {"model.ofd.margin": "none"},
}
# Per task, the switches that --ablations runs: the paper's four on classification; on detection, the
# detector teacher's BN on batch statistics (as the classifier teacher needed on the scenes) and margins
# measured on the scenes instead of derived from the teacher's BN.
TASK_ABLATIONS: Dict[str, Dict[str, Dict]] = {
    "classification": ABLATIONS,
    "detection": {"teacher BN train": {"model.ofd.teacher_bn": "train"}, "data margins": {"model.ofd.margin": "data"}},
    "segmentation": {},
}


# How the curve of a run with each teacher precision is drawn, in the colour of its method.
LINE_STYLES = {"auto": "-", "float32": ":", "bfloat16": "--", "float16": "-."}


def with_teacher_precision(name: str, overrides: Dict, precision: str) -> Tuple[str, Dict]:
    """Run ``name`` with its OFD teacher in ``precision``: renamed '<name>, <precision> teacher', the override
    added. 'auto', and a run without OFD (alpha 0; KD's teacher runs as it is), leave the run as it is."""
    if precision == "auto" or overrides.get("model.ofd.alpha") == 0:
        return name, overrides
    fixed = overrides.get("model.ofd.teacher_precision")
    if fixed is not None:
        if fixed != precision:
            raise ValueError(f"method {name!r} runs its teacher in {fixed}; drop it from --methods or use "
                             f"--teacher-precision {fixed}")
        return name, overrides
    return f"{name}, {precision} teacher", {**overrides, "model.ofd.teacher_precision": precision}


def split_teacher_precision(method: str) -> Tuple[str, str]:
    """('ofd+kd', 'float32') for 'ofd+kd, float32 teacher'; (method, 'auto') for a name without a precision."""
    for precision in PRECISIONS:
        suffix = f", {precision} teacher"
        if method.endswith(suffix):
            return method[: -len(suffix)], precision
    return method, "auto"


def _is_alpha_run(method: str) -> bool:
    """Whether ``method`` is a run of the alpha sweep ('alpha 1e-3', 'alpha auto, bfloat16 teacher')."""
    return split_teacher_precision(method)[0].startswith("alpha ")


def _options(overrides: Dict, seed: int, epochs: Optional[int]) -> Dict[str, object]:
    options = {**overrides, "randomness.seed": seed}
    if epochs is not None:
        options["train_cfg.max_epochs"] = epochs
    return options


def _run(task: str, name: str, overrides: Dict, seed: int, threads: int, root: Path, epochs: Optional[int],
         code: str) -> Dict:
    """Train one (method, seed, threads); returns the recorded result (from disk while still current).
    ``code`` is the code hash, computed once for all runs."""
    spec = TASKS[task]
    work_dir = root / task / name.replace(" ", "_").replace("+", "_") / f"threads{threads}" / f"seed{seed}"
    result_file = work_dir / "result.json"
    options = _options(overrides, seed, epochs)
    current = stamp(REPO, REPO / spec["config"], options, threads, code)
    if result_file.exists():
        result = json.loads(result_file.read_text())
        stale = stale_fields(result.get("provenance", {}), current)
        if not stale:
            return result
        logger.info("%s / %s / seed %d / %d threads: rerun, the recorded run differs in %s", task, name, seed,
                    threads, ", ".join(stale))
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "overhaul_det.cli", "train", str(REPO / spec["config"]), "--work-dir",
               str(work_dir), "--cfg-options", *[f"{k}={v}" for k, v in options.items()]]
    logger.info("%s / %s / seed %d / %d threads: %s", task, name, seed, threads, " ".join(command))
    start = time.perf_counter()
    _train(command, work_dir / "train.log", threads)
    history = read_val_history(work_dir, spec["metric"])
    result = dict(task=task, method=name, seed=seed, threads=threads, metric=spec["metric"], final=history[-1],
                  history=history, seconds=round(time.perf_counter() - start, 1), overrides=overrides,
                  teacher=_teacher_mode(work_dir / "train.log"), provenance=current)
    if overrides.get("model.ofd.alpha") == "auto":
        result["alpha_auto"] = _auto_alpha(work_dir)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def _teacher_mode(log: Path) -> Optional[str]:
    """How the teacher ran ('bfloat16, channels-last', 'float32'), as the distiller logged it once; None
    where no teacher ran (alpha 0). 'ofd' resolves teacher_precision='auto' by the machine, so the record
    says which it was."""
    for line in log.read_text(errors="replace").splitlines():
        before, found, after = line.partition(" runs in ")
        if found and " teacher " in f" {before}" and " (teacher_precision=" in after:
            return after.split(" (teacher_precision=")[0]
    return None


def _auto_alpha(work_dir: Path) -> float:
    """The alpha that alpha='auto' chose, from the run's last checkpoint."""
    from .engine.checkpoint import load_checkpoint_file

    checkpoint = (work_dir / "last_checkpoint").read_text().strip()
    return float(load_checkpoint_file(checkpoint)["state_dict"]["distiller.alpha_auto"])


def _train(command: List[str], log_path: Path, threads: int) -> None:
    """One training in its own process, with ``threads`` intra-op threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log_path.open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def _summary(results: List[Dict]) -> Dict[str, Dict]:
    by_method: Dict[str, List[float]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r["final"])
    return {m: dict(mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0, runs=v)
            for m, v in by_method.items()}


def _plot(task: str, results: List[Dict], metric: str, path: Path) -> None:
    """Test metric per epoch, mean and ±1 std band per method; ablations, if any, in a second panel beside OFD.
    A colour per method, a line style per teacher precision, so that a method's runs with each teacher share
    its colour and no two curves in a panel look alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    bases = {m: split_teacher_precision(m) for m in dict.fromkeys(r["method"] for r in results)}
    methods = [m for m in bases if not _is_alpha_run(m)]
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


def _plot_alpha(task: str, results: List[Dict], metric: str, own_alpha: float, path: Path) -> None:
    """Final test metric against alpha (log scale), mean ± std over runs, one curve per teacher precision
    the sweep ran with, the baseline as a band, alpha='auto' drawn at the alphas it chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, digits = _summary(results), _digits(results)
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
    ax.set_title(f"{task}: OFD against alpha, mean ± std over runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_method(ax, method: str, curves: List[List[float]], color: str, linestyle: str) -> None:
    import numpy as np

    length = min(len(c) for c in curves)
    values = np.array([c[:length] for c in curves])
    epochs = np.arange(1, length + 1)
    mean, std = values.mean(0), values.std(0)
    ax.plot(epochs, mean, marker="o", markersize=3, color=color, linestyle=linestyle,
            label=f"{method} (n={len(curves)})")
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)


def _alpha_runs(task: str, alphas: Sequence[str]) -> List:
    """('alpha A', overrides) per alpha in ``alphas`` ('auto' or a number); the config's own alpha is
    the 'ofd' method's run, so it is not trained twice."""
    from mmengine.config import Config

    own = Config.fromfile(str(REPO / TASKS[task]["config"])).model.ofd.alpha
    runs = []
    for text in alphas:
        value = text if text == "auto" else float(text)
        if value != own:
            runs.append((f"alpha {text}", {"model.ofd.alpha": value}))
    return runs


def run_task(task: str, seeds: int, root: Path, epochs: Optional[int], ablations: bool,
             methods: Optional[List[str]] = None, threads: Sequence[int] = (), jobs: int = 1,
             alphas: Sequence[str] = (), teacher_precision: str = "auto") -> Dict:
    """All methods (and, with ``ablations``, the task's ablations; with ``alphas``, OFD at each
    alpha) over ``seeds`` seeds at each thread count (default: torch's), ``jobs`` trainings at a time;
    every run that distils features with its teacher in ``teacher_precision``."""
    spec = TASKS[task]
    _check_methods(task, methods or [])
    runs = [with_teacher_precision(base, METHODS[base], precision)
            for base, precision in map(split_teacher_precision, methods or spec["methods"])]
    if ablations:
        runs += [(f"ofd, {name}", o) for name, o in TASK_ABLATIONS[task].items()]
    runs += _alpha_runs(task, alphas)
    runs = [with_teacher_precision(name, overrides, teacher_precision) for name, overrides in runs]
    if not threads:
        import torch

        threads = [torch.get_num_threads()]
    _warn_if_oversubscribed(jobs, max(threads))
    todo = [(name, overrides, seed, n) for n in threads for seed in range(seeds) for name, overrides in runs]
    code = code_hash(REPO)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda run: _run(task, *run, root, epochs, code), todo))
    return _report(task, results, seeds, epochs)


def _warn_if_oversubscribed(jobs: int, threads: int) -> None:
    """Warn when ``jobs`` trainings of ``threads`` threads each ask for more cores than this process may use:
    their OpenMP threads then spin against each other and each training runs several times slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jobs > 1 and jobs * threads > cores:
        fits = [f"--jobs {max(1, cores // threads)} --threads {threads}"]
        if cores >= jobs:
            fits.insert(0, f"--jobs {jobs} --threads {cores // jobs}")
        logger.warning("--jobs %d x --threads %d asks for %d threads on %d CPU cores: the trainings will contend "
                       "and each runs several times slower; fits the cores: %s",
                       jobs, threads, jobs * threads, cores, " or ".join(fits))


def _check_methods(task: str, methods: Sequence[str]) -> None:
    """Refuse a method the task does not run, or a teacher precision spelled out for one without an OFD teacher."""
    known = TASKS[task]["methods"]
    unknown = [m for m in methods if split_teacher_precision(m)[0] not in known]
    if unknown:
        raise ValueError(f"methods {unknown} are not run for {task}; choose from {known}, each with an OFD teacher "
                         f"also as '<method>, <precision> teacher' (precisions: {', '.join(PRECISIONS[1:])})")
    no_teacher = [m for m in methods if split_teacher_precision(m)[1] != "auto"
                  and METHODS[split_teacher_precision(m)[0]].get("model.ofd.alpha") == 0]
    if no_teacher:
        raise ValueError(f"methods {no_teacher} distil no features, so they have no OFD teacher to set the precision "
                         f"of; drop the precision from their names")


def _alpha_order(method: str) -> float:
    """Runs of the alpha sweep by alpha, 'auto' last; 0 for every other method."""
    if not method.startswith("alpha "):
        return 0.0
    value = method.split(" ", 1)[1]
    return float("inf") if value == "auto" else float(value)


def collect_task(task: str, root: Path, methods: Sequence[str] = (), threads: Sequence[int] = ()) -> Dict:
    """The report of every finished run of ``task`` under ``root`` (of ``methods`` and at ``threads`` alone, if
    given), whatever seeds ran: by method, each method's teacher precisions together, then threads and seed."""
    order = {m: i for i, m in enumerate(list(METHODS) + [f"ofd, {a}" for a in TASK_ABLATIONS[task]])}
    results = [json.loads(p.read_text()) for p in (root / task).glob("*/threads*/seed*/result.json")]
    if not results:
        raise FileNotFoundError(f"no finished run under {root / task}; run `overhaul-det reproduce {task}` first")
    results = _select(results, methods, threads, root / task)

    def key(result: Dict) -> Tuple:
        base, precision = split_teacher_precision(result["method"])
        return (order.get(base, len(order)), _alpha_order(base), PRECISIONS.index(precision), result["threads"],
                result["seed"])

    results.sort(key=key)
    return _report(task, results, max(r["seed"] for r in results) + 1, None)


def _select(results: List[Dict], methods: Sequence[str], threads: Sequence[int], where: Path) -> List[Dict]:
    """The runs of ``methods`` at ``threads`` (all, where empty); a method or thread count no run has is refused
    with those that ran."""
    for flag, asked, key in (("--methods", methods, "method"), ("--threads", threads, "threads")):
        ran = list(dict.fromkeys(r[key] for r in results))
        absent = [value for value in asked if value not in ran]
        if absent:
            raise ValueError(f"{flag} {', '.join(map(repr, absent))}: no finished run under {where}; "
                             f"runs there: {', '.join(map(repr, sorted(ran, key=str)))}")
    return [r for r in results if (not methods or r["method"] in methods) and (not threads or r["threads"] in threads)]


_ORIGIN = (("commit", "unrecorded"), ("code", "-"), ("torch", "-"), ("cpu", "unrecorded"))


def _report(task: str, results: List[Dict], seeds: int, epochs: Optional[int]) -> Dict:
    spec = TASKS[task]
    stamps = sorted({tuple(r.get("provenance", {}).get(key, default) for key, default in _ORIGIN) for r in results})
    return dict(task=task, config=spec["config"], metric=spec["metric"], seeds=seeds, epochs=epochs,
                commit=git_commit(REPO), runs_from=[dict(zip((k for k, _ in _ORIGIN), s)) for s in stamps],
                results=results, summary=_summary(results))


def _markdown(report: Dict, command: str, plot: str) -> str:
    origins = "; ".join(f"commit `{o['commit']}` (code `{o['code']}`, torch {o['torch']}, CPU {o.get('cpu', 'unrecorded')})"
                        for o in report["runs_from"])
    lines = [f"## {report['task']}", "", f"Table written by `{command}` at commit `{report['commit']}` from runs "
             f"of `overhaul-det reproduce {report['task']}` on `{report['config']}` that ran at {origins} (each run's "
             f"options, history, wall time, thread count and stamp: `results_{report['task']}.json`); metric: test "
             f"`{report['metric']}` after the last epoch.", "",
             "| method | mean ± std | runs (seed/threads) | mean time (s) |", "|---|---|---|---|"]
    digits = _digits(report["results"])
    for method, s in report["summary"].items():
        mine = [r for r in report["results"] if r["method"] == method]
        runs = ", ".join(f"{r['final']:.{digits}f} (s{r['seed']}/{r.get('threads', '?')}t)" for r in mine)
        seconds = statistics.mean(r["seconds"] for r in mine)
        lines.append(f"| {method} | {s['mean']:.{digits}f} ± {s['std']:.{digits}f} | {runs} | {seconds:.0f} |")
    lines += _paired_lines(report["results"], digits)
    chosen = [f"{r['alpha_auto']:.3g} (s{r['seed']}/{r.get('threads', '?')}t)" for r in report["results"]
              if "alpha_auto" in r]
    if chosen:
        lines += ["", "alpha='auto' chose: " + ", ".join(chosen) + "."]
    lines += ["", f"![{report['task']}]({plot})", ""]
    if any(_is_alpha_run(r["method"]) for r in report["results"]):
        lines += [f"![{report['task']} against alpha](results_{report['task']}_alpha.png)", ""]
    return "\n".join(lines)


def _digits(results: List[Dict]) -> int:
    """Decimals that show a metric's runs apart: 4 for fractions (mAP, mIoU), 2 for percentages."""
    return 4 if all(r["final"] <= 1 for r in results) else 2


def _paired_lines(results: List[Dict], digits: int) -> List[str]:
    """Baseline and OFD run by run (same seed and thread count), with OFD's gain; a column pair per
    teacher precision OFD ran with ('ofd', 'ofd, float32 teacher', ...)."""
    by_key = {(r["method"], r["seed"], r.get("threads")): r["final"] for r in results}
    variants = sorted({m for m, _, _ in by_key if split_teacher_precision(m)[0] == "ofd"},
                      key=lambda m: PRECISIONS.index(split_teacher_precision(m)[1]))
    keys = sorted({(seed, threads) for method, seed, threads in by_key if method in variants
                   and ("baseline", seed, threads) in by_key}, key=lambda k: (k[1] or 0, k[0]))
    if not keys:
        return []
    lines = ["", "| seed | threads | baseline | " + " | ".join(f"{v} | gain" for v in variants) + " |",
             "|---|---|---|" + "---|---|" * len(variants)]
    for seed, threads in keys:
        base = by_key[("baseline", seed, threads)]
        cells = []
        for variant in variants:
            ofd = by_key.get((variant, seed, threads))
            cells += ["–", "–"] if ofd is None else [f"{ofd:.{digits}f}", f"{ofd - base:+.{digits}f}"]
        lines.append(f"| {seed} | {threads} | {base:.{digits}f} | " + " | ".join(cells) + " |")
    return lines


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count; give 1 or more")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="overhaul-det reproduce", description=__doc__)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--seeds", type=_positive, help="seeds 0 .. N-1 of each run (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--ablations", action="store_true",
                        help="also the task's ablations: " + "; ".join(
                            f"{task}: {', '.join(switches)}" for task, switches in TASK_ABLATIONS.items() if switches))
    parser.add_argument("--methods", nargs="+", default=[],
                        help="a subset of the task's methods; with --report-only, the recorded runs to report")
    parser.add_argument("--threads", type=_positive, nargs="+", default=[],
                        help="torch threads per run; several values run each (default: torch's own count); with "
                             "--report-only, the thread counts to report")
    parser.add_argument("--jobs", type=_positive,
                        help="trainings at a time (default 1), each with --threads threads: keep jobs x threads "
                             "within the CPU cores")
    parser.add_argument("--alphas", nargs="+", default=[],
                        help="also OFD at each alpha (numbers, or auto); the config's own alpha is the ofd run")
    parser.add_argument("--teacher-precision", choices=PRECISIONS,
                        help="the OFD teacher's precision in every run that distils features, named '<method>, "
                             "<precision> teacher' (default: the config's 'auto', bfloat16 where the CPU or GPU "
                             "computes it natively, else float32); float32 trains what README's tables trained")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; report the finished runs in the work dir (methods may differ in seeds)")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/reproduce"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.report_only:
            _refuse_training_flags(args)
            report = collect_task(args.task, args.work_dir, args.methods, args.threads)
        else:
            report = run_task(args.task, 3 if args.seeds is None else args.seeds, args.work_dir, args.epochs,
                              args.ablations, args.methods, args.threads, args.jobs or 1, args.alphas,
                              args.teacher_precision or "auto")
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    plot = args.out / f"results_{args.task}.png"
    _plot(args.task, report["results"], report["metric"], plot)
    if any(_is_alpha_run(r["method"]) for r in report["results"]):
        from mmengine.config import Config

        own_alpha = Config.fromfile(str(REPO / TASKS[args.task]["config"])).model.ofd.alpha
        _plot_alpha(args.task, report["results"], report["metric"], own_alpha,
                    args.out / f"results_{args.task}_alpha.png")
    (args.out / f"results_{args.task}.json").write_text(json.dumps(report, indent=2))
    command = shlex.join(["overhaul-det", "reproduce", *(argv if argv is not None else sys.argv[1:])])
    section = args.out / f"results_{args.task}.md"
    section.write_text(_markdown(report, command, plot.name))
    _write_index(args.out)
    sys.stdout.write(section.read_text())
    return 0


def _refuse_training_flags(args: argparse.Namespace) -> None:
    """--report-only trains nothing: a flag that only shapes trainings would be ignored, so it is refused."""
    flags = (("--seeds", args.seeds), ("--epochs", args.epochs), ("--ablations", args.ablations), ("--jobs", args.jobs),
             ("--alphas", args.alphas), ("--teacher-precision", args.teacher_precision))
    given = [flag for flag, value in flags if value]
    if given:
        raise ValueError(f"{', '.join(given)} shape trainings, and --report-only trains none: drop them; choose the "
                         f"runs to report with --methods (the names in the table) and --threads")


def _write_index(out: Path) -> None:
    """docs/results.md: every task's section, in a fixed order, under one header; a hand-written
    ``results_TASK_notes.md`` (the reading of the numbers) follows its task's table."""
    sections = [out / f"results_{task}{part}.md" for task in ("classification", "detection", "segmentation")
                for part in ("", "_notes")]
    body = "\n".join(p.read_text() for p in sections if p.exists())
    header = ("# Results: baseline vs KD vs OFD on real images (CPU)\n\n"
              "Every number below comes from `overhaul-det reproduce TASK`; each section names its command, the "
              "commit that wrote it, its config, and the commit, code hash and CPU its runs ran at. Per-run values, "
              "histories and wall times are in `results_TASK.json`.\n\n")
    (out / "results.md").write_text(header + body)


if __name__ == "__main__":
    sys.exit(main())
