"""Performance benchmark of OFD: what distillation adds to a student's training step.

The ``python tools/benchmark.py`` command line: options -> BenchConfig -> run -> table on stdout (and JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .allocator import FREED_MEMORY
from .config import AMP_DTYPES, REDUCED_PRECISIONS, TASK_DEFAULTS, BenchConfig, validate
from .profile import UnknownStepError
from .report import format_table
from .run import run_benchmark

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python tools/benchmark.py``; the task-dependent ones default to None (the task's)."""
    parser = argparse.ArgumentParser(prog="python tools/benchmark.py", description=__doc__.split("\n")[0])
    defaults = BenchConfig()
    parser.add_argument("--task", choices=tuple(TASK_DEFAULTS), default=defaults.task,
                        help="which pair: classifiers (default), Faster R-CNNs or DeepLabV3s")
    task_default = "(default: the task's, see TASK_DEFAULTS in tools/bench/config.py)"
    parser.add_argument("--teacher", default=None, help=f"teacher model {task_default}")
    parser.add_argument("--student", default=None, help=f"student model {task_default}")
    parser.add_argument("--batch-size", type=int, default=None, help=task_default)
    parser.add_argument("--input-size", type=int, default=None, help=task_default)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default=defaults.amp)
    parser.add_argument("--channels-last", action="store_true", help="every model and batch channels-last")
    parser.add_argument("--teacher-precisions", nargs="+", choices=REDUCED_PRECISIONS,
                        default=list(defaults.teacher_precisions),
                        help="reduced teacher precisions timed besides float32: teacher_forward_P and ofd_step_P "
                             "(classification only; default: %(default)s)")
    parser.add_argument("--student-channels-last", action="store_true",
                        help="also time the student channels-last (model.student_channels_last=True), alone and "
                             "in the OFD step (classification: with each teacher precision)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the student, alone and in the float32 OFD step, under torch.compile; the "
                             "first call's seconds are reported apart (classification only)")
    parser.add_argument("--loss-shape", type=int, nargs="+", default=list(defaults.loss_shape),
                        help="shape of the tensors for the ofd_loss comparison (N C H W; classification only)")
    parser.add_argument("--rewrite-model", default=defaults.rewrite_model,
                        help="model whose plain and taps-attached eval forwards are compared (classification only)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--freed-memory", choices=FREED_MEMORY, default=defaults.freed_memory,
                        help="keep: this process keeps freed memory, so no step pays page faults for memory another "
                             "step freed; return: glibc's default (default: %(default)s)")
    parser.add_argument("--profile", nargs="+", default=[], metavar="STEP",
                        help="after timing, run these steps (names as in the JSON's 'order', e.g. regressor_step "
                             "ofd_step_bfloat16) under torch.profiler and list each one's ops by self time")
    parser.add_argument("--profile-calls", type=int, default=defaults.profile_calls,
                        help="calls of each profiled step (default: %(default)s)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig that parsed options ask for."""
    return BenchConfig(task=args.task, teacher=args.teacher, student=args.student, batch_size=args.batch_size,
                       input_size=args.input_size, repeats=args.repeats, warmup=args.warmup, device=args.device,
                       amp=args.amp, channels_last=args.channels_last,
                       teacher_precisions=tuple(args.teacher_precisions),
                       student_channels_last=args.student_channels_last, compile=args.compile,
                       loss_shape=tuple(args.loss_shape),
                       rewrite_model=args.rewrite_model, measure_memory=not args.no_memory,
                       threads=args.threads, seed=args.seed, freed_memory=args.freed_memory,
                       profile=tuple(args.profile), profile_calls=args.profile_calls)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python tools/benchmark.py`: run the benchmark, print the table, optionally write JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        validate(cfg)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    try:
        result = run_benchmark(cfg)
    except UnknownStepError as error:
        parser.error(str(error))
    sys.stdout.write(format_table(result) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    return 0
