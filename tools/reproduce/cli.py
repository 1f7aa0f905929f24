"""Reproduce the comparison: baseline vs KD vs OFD vs OFD+KD over seeds, per task, from configs.

Each run trains the student with the task's config and one method's switches at a given thread
count, records the test metric after every epoch, the wall time and where it came from (commit, the training
fingerprint of its task and method, config and weights hashes, threads, torch version, CPU; ``provenance.py``). A run
whose result exists is skipped while that record still matches, so the command resumes and an edit that keeps the
fingerprints reruns nothing; otherwise it is trained again. Writes a JSON file, a markdown table and a plot per task
(results_TASK.json, .md, .png) into the work dir, or where ``--out`` says (docs/results for the project's own).

The OFD teacher runs in the config's precision, 'auto' (bfloat16 on CPUs and GPUs that compute it natively, float32
elsewhere). ``--teacher-precision`` fixes it for every run that distils features; such a run is named '<method>,
<precision> teacher', and ``--methods`` takes that name too ('ofd, float32 teacher').
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Callable, List, Optional

from overhaul_det.teacher_mode import PRECISIONS
from .methods import TASK_ABLATIONS, TASKS, config_alpha, is_alpha_run
from .plots import plot_alpha, plot_curves, plot_precision_runs
from .report import collect_task, markdown, ofd_variants, write_index
from .runs import run_task


def _at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else an error naming ``what`` it should be."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not {what}; give {minimum} or more")
        return value
    return parse


_positive = _at_least(1, "a count")
_not_negative = _at_least(0, "a seed")
DEFAULT_WORK_DIR = Path("work_dirs/reproduce")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python tools/reproduce.py``."""
    parser = argparse.ArgumentParser(prog="python tools/reproduce.py", description=__doc__)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--seeds", type=_positive, help="seeds 0 .. N-1 of each run (default 3)")
    parser.add_argument("--first-seed", type=_not_negative, default=0,
                        help="start the seeds there: --first-seed 6 --seeds 6 trains seeds 6 .. 11 (default 0)")
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
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"where the runs train and their records stay (default {DEFAULT_WORK_DIR})")
    parser.add_argument("--out", type=Path,
                        help="where the report (results_TASK.md, .json, plots) goes (default: the work dir; the "
                             "project's results live in docs/results)")
    parser.add_argument("--fingerprints", type=Path,
                        help="this checkout's fingerprint file (python tools/fingerprint.py --out FILE); default: "
                             "computed into WORK_DIR/fingerprint and reused while the code is the same")
    parser.add_argument("--known-fingerprints", type=Path, nargs="+", default=[],
                        help="fingerprint files of older checkouts: a run recorded before fingerprints (with a code "
                             "hash) counts as current where the file of its code matches today's fingerprint")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Train (or with ``--report-only`` collect) a task's runs and write its report; returns the exit status.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or args.work_dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.report_only:
            _refuse_training_flags(args)
            report = collect_task(args.task, args.work_dir, args.methods, args.threads)
        else:
            report = run_task(args.task, 3 if args.seeds is None else args.seeds, args.work_dir, args.epochs,
                              args.ablations, args.methods, args.threads, args.jobs or 1, args.alphas,
                              args.teacher_precision or "auto", args.first_seed, args.fingerprints,
                              args.known_fingerprints)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    plot = args.out / f"results_{args.task}.png"
    plot_curves(args.task, report["results"], report["metric"], plot)
    if any(is_alpha_run(r["method"]) for r in report["results"]):
        plot_alpha(args.task, report["results"], report["metric"], config_alpha(args.task),
                   args.out / f"results_{args.task}_alpha.png")
    if len(ofd_variants(report["results"])) > 1:
        plot_precision_runs(args.task, report["results"], report["metric"],
                            args.out / f"results_{args.task}_precision.png")
    (args.out / f"results_{args.task}.json").write_text(json.dumps(report, indent=2))
    command = shlex.join(["python", "tools/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
    section = args.out / f"results_{args.task}.md"
    section.write_text(markdown(report, command, plot.name))
    write_index(args.out)
    sys.stdout.write(section.read_text())
    return 0


def _refuse_training_flags(args: argparse.Namespace) -> None:
    """--report-only trains nothing: a flag that only shapes trainings would be ignored, so it is refused."""
    flags = (("--seeds", args.seeds), ("--first-seed", args.first_seed), ("--epochs", args.epochs),
             ("--ablations", args.ablations), ("--jobs", args.jobs), ("--alphas", args.alphas),
             ("--teacher-precision", args.teacher_precision), ("--fingerprints", args.fingerprints),
             ("--known-fingerprints", args.known_fingerprints))
    given = [flag for flag, value in flags if value]
    if given:
        raise ValueError(f"{', '.join(given)} shape trainings, and --report-only trains none: drop them; choose the "
                         f"runs to report with --methods (the names in the table) and --threads")
