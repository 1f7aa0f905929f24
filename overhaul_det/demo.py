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
from pathlib import Path
from typing import Dict, List, Optional

import torch
from mmengine.config import Config

from .cpuinfo import cpu_model
from .engine.history import read_val_history
from .engine.hooks import find_distiller
from .training import build_runner, load_config
from .export import export_student

__all__ = ["run_demo", "REPO", "TEACHER_CONFIG", "STUDENT_CONFIG", "TEACHER_CHECKPOINT"]

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


def run_demo(work_dir: str = "work_dirs/demo", epochs: Optional[int] = None, retrain_teacher: bool = False) -> int:
    """Teacher (shipped or trained), then baseline and OFD students with the same schedule."""
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trained = retrain_teacher or not TEACHER_CHECKPOINT.exists()
    if trained:
        logger.info("[demo 1/4] training the teacher (%s)", TEACHER_CONFIG.name)
        _train_teacher(out)
    logger.info("[demo 2/4] evaluating the teacher on the 10,000 test images")
    teacher_top1 = _evaluate_teacher(out, TEACHER_CHECKPOINT)
    teacher_seconds = time.perf_counter() - start
    alpha = load_config(str(STUDENT_CONFIG)).model.ofd.alpha
    logger.info("[demo 3/4] training the baseline student")
    baseline = _train_student(out, "baseline", 0.0, TEACHER_CHECKPOINT, epochs)
    logger.info("[demo 4/4] training the OFD student (alpha=%g)", alpha)
    ofd = _train_student(out, "ofd", alpha, TEACHER_CHECKPOINT, epochs)
    results = [baseline, ofd]
    plotted = _plot(results, teacher_top1, out / "demo_accuracy.png")
    origin = dict(commit=_git_commit(REPO), torch=torch.__version__, cpu=cpu_model(), threads=torch.get_num_threads(),
                  seed=load_config(str(STUDENT_CONFIG)).randomness.seed)
    summary = dict(teacher_top1=teacher_top1, results=results, total_seconds=time.perf_counter() - start, **origin)
    (out / "demo_results.json").write_text(json.dumps(summary, indent=2))
    sys.stdout.write("\n" + _table(teacher_top1, teacher_seconds, results, trained) + "\n")
    sys.stdout.write("commit {commit}, torch {torch}, {cpu}, {threads} thread(s), seed {seed}\n".format(**origin))
    plot = f"plot: {out / 'demo_accuracy.png'}   " if plotted else ""
    sys.stdout.write(f"{plot}results: {out / 'demo_results.json'}\n")
    return 0
