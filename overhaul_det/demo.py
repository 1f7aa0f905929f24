"""The embedded demo: teacher, baseline student and OFD student on Fashion-MNIST, side by side.

Uses the project's teacher checkpoint when present (it is reproducible from
configs/classification/teacher_resnet18_fashionmnist.py), otherwise trains it first.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from mmengine.config import Config

from .cpuinfo import cpu_model
from .engine.history import read_val_history
from .engine.hooks import find_distiller
from .training import build_runner, load_config
from .export import export_student

__all__ = ["run_demo", "DemoProgress", "progress_text", "REPO", "TEACHER_CONFIG", "STUDENT_CONFIG",
           "TEACHER_CHECKPOINT"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = REPO / "configs/classification/teacher_resnet18_fashionmnist.py"
STUDENT_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"
TEACHER_CHECKPOINT = REPO / "checkpoints/fashionmnist_resnet18_teacher.safetensors"


def _train_teacher(work_dir: Path) -> Path:
    cfg = load_config(str(TEACHER_CONFIG))
    runner = build_runner(cfg, str(TEACHER_CONFIG), str(work_dir / "teacher"))
    runner.train()
    checkpoint = Path(runner.work_dir) / f"epoch_{runner.max_epochs}.pth"
    return export_student(checkpoint, TEACHER_CHECKPOINT)


def _evaluate_teacher(work_dir: Path, teacher: Path) -> float:
    cfg = load_config(str(TEACHER_CONFIG))
    cfg.model.student.checkpoint = str(teacher)
    runner = build_runner(cfg, str(TEACHER_CONFIG), str(work_dir / "teacher_eval"))
    return runner.test()["accuracy/top1"]


def _train_student(work_dir: Path, name: str, alpha: float, teacher: Path, epochs: Optional[int]) -> Dict:
    cfg: Config = load_config(str(STUDENT_CONFIG))
    cfg.model.ofd.alpha = alpha
    cfg.model.teacher.checkpoint = str(teacher)
    if epochs is not None:
        cfg.train_cfg.max_epochs = epochs
        cfg.param_scheduler[-1].T_max = epochs
        cfg.default_hooks.checkpoint.interval = epochs
    runner = build_runner(cfg, str(STUDENT_CONFIG), str(work_dir / name))
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    history = read_val_history(Path(runner.work_dir), "accuracy/top1")
    distiller = find_distiller(runner.model)
    teacher_mode = ", ".join(sorted(set(distiller.teacher_runs_in.values()))) if distiller else None
    return dict(method=name, top1=history[-1], history=history, seconds=seconds, alpha=alpha, teacher=teacher_mode)


def _git_commit(repo: Path) -> str:
    """The short commit of ``repo`` the demo ran from, for the reader of its results; 'unknown' outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _plot(results: List[Dict], teacher_top1: float, path: Path) -> bool:
    """Draw the students' accuracy per epoch and the teacher's into ``path``; False where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'overhaul-det[plot]'): no plot drawn")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        epochs = range(1, len(result["history"]) + 1)
        ax.plot(epochs, result["history"], marker="o", label=f"{result['method']} student")
    ax.axhline(teacher_top1, color="gray", linestyle="--", label="teacher")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("OFD vs baseline, mobilenetv3_small_050 student")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _table(teacher_top1: float, teacher_seconds: float, results: List[Dict], trained: bool) -> str:
    label = "teacher resnet18 (trained, tested)" if trained else "teacher resnet18 (shipped, tested)"
    rows = [("model", "top-1 (%)", "time (s)"), (label, f"{teacher_top1:.2f}", f"{teacher_seconds:.0f}")]
    rows += [(f"{r['method']} student" + (f" ({r['teacher']} teacher)" if r.get("teacher") else ""), f"{r['top1']:.2f}",
              f"{r['seconds']:.0f}") for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress_text(done: int, total: int, elapsed: float, seconds_left: Optional[float], now: datetime) -> str:
    """The overall progress line logged between the demo's runs: runs done, time spent, time left and the clock time
    the demo should end at (unknown until a run of each remaining kind has finished once).

    Args:
        done: runs finished.
        total: runs in the demo.
        elapsed: seconds since the demo started.
        seconds_left: estimated seconds for the remaining runs; None when not known yet.
        now: the current clock time, for the ETA.
    """
    spent = f"[demo {done}/{total} done] {timedelta(seconds=round(elapsed))} elapsed"
    if done == total:
        return f"{spent}, finished"
    if seconds_left is None:
        return f"{spent}; overall time left known once a run of each remaining kind has finished"
    end = now + timedelta(seconds=seconds_left)
    return f"{spent}; about {timedelta(seconds=round(seconds_left))} left, ETA {end:%H:%M:%S}"


class DemoProgress:
    """Logs each run of the demo as it starts and, as it ends, the overall progress with an ETA: a remaining run
    is expected to take as long as the finished runs of its kind took on average.

    Args:
        kinds: the kind of each run in order ('teacher training', 'teacher test', 'student').
        clock: seconds, monotonic.
    """

    def __init__(self, kinds: List[str], clock: Callable[[], float] = time.perf_counter) -> None:
        self.kinds = kinds
        self.clock = clock
        self.durations: List[float] = []
        self.started = clock()
        self._run_started = self.started

    def begin(self, what: str) -> None:
        logger.info("[demo %d/%d] %s", len(self.durations) + 1, len(self.kinds), what)
        self._run_started = self.clock()

    def end(self) -> None:
        self.durations.append(self.clock() - self._run_started)
        logger.info(progress_text(len(self.durations), len(self.kinds), self.clock() - self.started,
                                  self.seconds_left(), datetime.now()))

    def seconds_left(self) -> Optional[float]:
        """The remaining runs' expected seconds; None while a remaining kind has no finished run."""
        finished: Dict[str, List[float]] = {}
        for kind, seconds in zip(self.kinds, self.durations):
            finished.setdefault(kind, []).append(seconds)
        remaining = self.kinds[len(self.durations):]
        if any(kind not in finished for kind in remaining):
            return None
        return sum(sum(finished[kind]) / len(finished[kind]) for kind in remaining)


def run_demo(work_dir: str = "work_dirs/demo", epochs: Optional[int] = None, retrain_teacher: bool = False,
             threads: Optional[int] = None) -> int:
    """Teacher (shipped or trained), then baseline and OFD students with the same schedule.

    Args:
        work_dir: where the runs, the plot and the results go.
        epochs: the students' epochs; the config's when None.
        retrain_teacher: train the teacher even where its checkpoint is shipped.
        threads: torch threads for the demo's runs (restored after); torch's default when None.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads}: give 1 or more torch threads")
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(work_dir), epochs, retrain_teacher)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(out: Path, epochs: Optional[int], retrain_teacher: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    trained = retrain_teacher or not TEACHER_CHECKPOINT.exists()
    progress = DemoProgress((["teacher training"] if trained else []) + ["teacher test", "student", "student"])
    if trained:
        progress.begin(f"training the teacher ({TEACHER_CONFIG.name})")
        _train_teacher(out)
        progress.end()
    progress.begin("evaluating the teacher on the 10,000 test images")
    teacher_top1 = _evaluate_teacher(out, TEACHER_CHECKPOINT)
    progress.end()
    teacher_seconds = time.perf_counter() - progress.started
    alpha = load_config(str(STUDENT_CONFIG)).model.ofd.alpha
    progress.begin("training the baseline student")
    baseline = _train_student(out, "baseline", 0.0, TEACHER_CHECKPOINT, epochs)
    progress.end()
    progress.begin(f"training the OFD student (alpha={alpha:g})")
    ofd = _train_student(out, "ofd", alpha, TEACHER_CHECKPOINT, epochs)
    progress.end()
    results = [baseline, ofd]
    plotted = _plot(results, teacher_top1, out / "demo_accuracy.png")
    origin = dict(commit=_git_commit(REPO), torch=torch.__version__, cpu=cpu_model(), threads=torch.get_num_threads(),
                  seed=load_config(str(STUDENT_CONFIG)).randomness.seed)
    summary = dict(teacher_top1=teacher_top1, results=results, total_seconds=time.perf_counter() - progress.started,
                   **origin)
    (out / "demo_results.json").write_text(json.dumps(summary, indent=2))
    sys.stdout.write("\n" + _table(teacher_top1, teacher_seconds, results, trained) + "\n")
    sys.stdout.write("commit {commit}, torch {torch}, {cpu}, {threads} thread(s), seed {seed}\n".format(**origin))
    plot = f"plot: {out / 'demo_accuracy.png'}   " if plotted else ""
    sys.stdout.write(f"{plot}results: {out / 'demo_results.json'}\n")
    return 0
