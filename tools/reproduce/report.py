"""The report of finished runs: mean ± std per method, baseline and OFD run by run, as JSON and markdown."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..provenance import git_commit
from overhaul_det.teacher_mode import PRECISIONS
from .methods import METHODS, REPO, TASK_ABLATIONS, TASKS, alpha_order, is_alpha_run, split_teacher_precision


def collect_task(task: str, root: Path, methods: Sequence[str] = (), threads: Sequence[int] = ()) -> Dict:
    """The report of every finished run of ``task`` under ``root`` (of ``methods`` and at ``threads`` alone, if
    given), whatever seeds ran: by method, each method's teacher precisions together, then threads and seed."""
    order = {m: i for i, m in enumerate(list(METHODS) + [f"ofd, {a}" for a in TASK_ABLATIONS[task]])}
    results = [json.loads(p.read_text()) for p in (root / task).glob("*/threads*/seed*/result.json")]
    if not results:
        raise FileNotFoundError(f"no finished run under {root / task}; run `python tools/reproduce.py {task}` first")
    results = _select(results, methods, threads, root / task)

    def key(result: Dict) -> Tuple:
        base, precision = split_teacher_precision(result["method"])
        return (order.get(base, len(order)), alpha_order(base), PRECISIONS.index(precision), result["threads"],
                result["seed"])

    results.sort(key=key)
    return build_report(task, results, max(r["seed"] for r in results) + 1, None)


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


# What the report names of where its runs come from; a run recorded before fingerprints has its code hash instead.
_ORIGIN = (("commit", "unrecorded"), ("fingerprint", "-"), ("code", "-"), ("torch", "-"), ("cpu", "unrecorded"))


def build_report(task: str, results: List[Dict], seeds: int, epochs: Optional[int]) -> Dict:
    """The task's report: its config and metric, the commit writing it, the stamps its runs ran at, runs, summary."""
    spec = TASKS[task]
    stamps = sorted({tuple(r.get("provenance", {}).get(key, default) for key, default in _ORIGIN) for r in results})
    return dict(task=task, config=spec["config"], metric=spec["metric"], seeds=seeds, epochs=epochs,
                commit=git_commit(REPO), runs_from=[dict(zip((k for k, _ in _ORIGIN), s)) for s in stamps],
                results=results, summary=summarise(results))


def summarise(results: List[Dict]) -> Dict[str, Dict]:
    """Mean, standard deviation and final values per method, and the share of its mean history's gain made in
    the last quarter of its epochs (``last_quarter``: a run has plateaued at 0.1 or less)."""
    by_method: Dict[str, List[Dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    summary = {}
    for method, runs in by_method.items():
        finals = [r["final"] for r in runs]
        summary[method] = dict(mean=statistics.mean(finals), std=statistics.stdev(finals) if len(finals) > 1 else 0.0,
                               runs=finals, last_quarter=last_quarter_share([r["history"] for r in runs]))
    return summary


def last_quarter_share(histories: List[List[float]]) -> Optional[float]:
    """The gain of the mean history (over the epochs every run has) in its last quarter of epochs, as a share of
    its gain from the first epoch to the last; None under 4 epochs or without a gain.

    Args:
        histories: the metric after every epoch, one list per run.
    """
    length = min(len(h) for h in histories)
    if length < 4:
        return None
    mean = [statistics.mean(h[i] for h in histories) for i in range(length)]
    gain = mean[-1] - mean[0]
    if gain <= 0:
        return None
    return (mean[-1] - mean[-1 - length // 4]) / gain


def _origin(stamp: Dict) -> str:
    """'commit `abc` (fingerprint `f00`, torch 2.x, CPU ...)', or the code hash for a run recorded before
    fingerprints (and for reports written then)."""
    fingerprint = stamp.get("fingerprint", "-")
    code = f"fingerprint `{fingerprint[:12]}`" if fingerprint != "-" else f"code `{stamp.get('code', '-')}`"
    return f"commit `{stamp['commit']}` ({code}, torch {stamp['torch']}, CPU {stamp.get('cpu', 'unrecorded')})"


def markdown(report: Dict, command: str, plot: str) -> str:
    origins = "; ".join(_origin(o) for o in report["runs_from"])
    lines = [f"## {report['task']}", "", f"Table written by `{command}` at commit `{report['commit']}` from runs "
             f"of `python tools/reproduce.py {report['task']}` on `{report['config']}` that ran at {origins} (each run's "
             f"options, history, wall time, thread count and stamp: `results_{report['task']}.json`); metric: test "
             f"`{report['metric']}` after the last epoch.", "",
             "| method | mean ± std | runs (seed/threads) | last quarter's share of the gain | mean time (s) |",
             "|---|---|---|---|---|"]
    digits = decimals(report["results"])
    for method, s in report["summary"].items():
        mine = [r for r in report["results"] if r["method"] == method]
        runs = ", ".join(f"{r['final']:.{digits}f} (s{r['seed']}/{r.get('threads', '?')}t)" for r in mine)
        seconds = statistics.mean(r["seconds"] for r in mine)
        share = "-" if s.get("last_quarter") is None else f"{s['last_quarter']:.0%}"
        lines.append(f"| {method} | {s['mean']:.{digits}f} ± {s['std']:.{digits}f} | {runs} | {share} | {seconds:.0f} |")
    lines += _paired_lines(report["results"], digits)
    lines += _auto_alpha_lines(report["results"])
    lines += ["", f"![{report['task']}]({plot})", ""]
    if any(is_alpha_run(r["method"]) for r in report["results"]):
        lines += [f"![{report['task']} against alpha](results_{report['task']}_alpha.png)", ""]
    if len(ofd_variants(report["results"])) > 1:
        lines += [f"![{report['task']}, OFD by teacher precision](results_{report['task']}_precision.png)", ""]
    return "\n".join(lines)


def _auto_alpha_lines(results: List[Dict]) -> List[str]:
    """What alpha='auto' chose in each run, named by method where more than one method chose."""
    chosen: Dict[str, List[str]] = {}
    for r in results:
        if "alpha_auto" in r:
            run = f"{r['alpha_auto']:.3g} (s{r['seed']}/{r.get('threads', '?')}t)"
            chosen.setdefault(r["method"], []).append(run)
    if not chosen:
        return []
    named = [", ".join(runs) if len(chosen) == 1 else f"{method}: {', '.join(runs)}" for method, runs in chosen.items()]
    return ["", "alpha='auto' chose: " + "; ".join(named) + "."]


def decimals(results: List[Dict]) -> int:
    """Decimals that show a metric's runs apart: 4 for fractions (mAP, mIoU), 2 for percentages."""
    return 4 if all(r["final"] <= 1 for r in results) else 2


def finals_by_run(results: List[Dict]) -> Dict[Tuple[str, int, Optional[int]], float]:
    """{(method, seed, threads): final metric} of every run."""
    return {(r["method"], r["seed"], r.get("threads")): r["final"] for r in results}


def _paired_lines(results: List[Dict], digits: int) -> List[str]:
    """Baseline and OFD run by run (same seed and thread count), with OFD's gain; a column pair per
    teacher precision OFD ran with ('ofd', 'ofd, float32 teacher', ...)."""
    by_key = finals_by_run(results)
    variants = ofd_variants(results)
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
    return lines + _precision_difference_lines(by_key, variants, digits)


def _precision_difference_lines(by_key: Dict, variants: List[str], digits: int) -> List[str]:
    """Each later teacher precision against the first, run by run (same seed and thread count): the mean and
    standard deviation of the differences, and on how many runs it ends higher; then by seed, each seed's
    differences averaged over its thread counts, since the runs of one seed move together."""
    lines = []
    for variant in variants[1:]:
        by_seed: Dict[int, List[float]] = {}
        for (method, seed, threads), final in by_key.items():
            if method == variant and (variants[0], seed, threads) in by_key:
                by_seed.setdefault(seed, []).append(final - by_key[(variants[0], seed, threads)])
        runs = [d for differences in by_seed.values() for d in differences]
        if len(runs) > 1:
            line = f"{variant} minus {variants[0]}, run by run: {_spread(runs, digits)} over {len(runs)} runs, " \
                   f"higher on {sum(d > 0 for d in runs)}"
            seeds = [statistics.mean(differences) for differences in by_seed.values()]
            if 1 < len(seeds) < len(runs):
                line += f"; by seed: {_spread(seeds, digits)} over {len(seeds)} seeds, higher on " \
                        f"{sum(d > 0 for d in seeds)}"
            if len(seeds) > 2 and statistics.stdev(seeds) > 0:
                line += f"; over seeds, {_paired_t(seeds, digits)}"
            lines += ["", line + "."]
    return lines


def _paired_t(differences: List[float], digits: int) -> str:
    """Student's t test of the mean of paired differences against 0: t, degrees of freedom, two-sided p and the 95%
    interval of the mean. Student's t distribution from mpmath (a dependency; torch brings it too, through sympy):
    neither ``statistics`` nor numpy has it."""
    import mpmath

    n, mean = len(differences), statistics.mean(differences)
    error, df = statistics.stdev(differences) / math.sqrt(n), n - 1

    def beyond(t: float):  # P(|T| > t) for T with df degrees of freedom
        return mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True)

    quantile = float(mpmath.findroot(lambda t: beyond(t) - 0.05, (1.9, 64.0), solver="illinois"))
    return (f"t = {mean / error:+.2f} ({df} df), two-sided p = {float(beyond(mean / error)):.2g}, 95% interval "
            f"{mean - quantile * error:+.{digits}f} to {mean + quantile * error:+.{digits}f}")


def _spread(values: List[float], digits: int) -> str:
    return f"{statistics.mean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ofd_variants(results: List[Dict]) -> List[str]:
    """The names OFD ran under, one per teacher precision ('ofd', 'ofd, bfloat16 teacher'), in PRECISIONS order."""
    names = {r["method"] for r in results if split_teacher_precision(r["method"])[0] == "ofd"}
    return sorted(names, key=lambda m: PRECISIONS.index(split_teacher_precision(m)[1]))


def write_index(out: Path) -> None:
    """``out``/results.md: every task's section, in a fixed order, under one header; a hand-written
    ``results_TASK_notes.md`` (the reading of the numbers) follows its task's table."""
    sections = [out / f"results_{task}{part}.md" for task in ("classification", "detection", "segmentation")
                for part in ("", "_notes")]
    body = "\n".join(p.read_text() for p in sections if p.exists())
    header = ("# Results: baseline vs KD vs OFD on real images (CPU)\n\n"
              "Every number below comes from `python tools/reproduce.py TASK`; each section names its command, the "
              "commit that wrote it, its config, and the commit, training fingerprint (or, before fingerprints, code "
              "hash) and CPU its runs ran at. Per-run values, histories and wall times are in `results_TASK.json`."
              "\n\n")
    (out / "results.md").write_text(header + body)
