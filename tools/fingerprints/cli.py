"""``python tools/fingerprint.py``: fingerprint a checkout's training, or compare two fingerprint files.

A fingerprint is the SHA-256 of the student's and regressors' weights after a short, fixed training of each shipped
task config (baseline and OFD) on synthetic data at one thread. Two checkouts with the same fingerprints on the same
machine train the same weights; a fingerprint that moved names the (task, method) whose results must be trained
again. See docs/fingerprints.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from .compare import compare, format_rows, moved_pairs, read_fingerprints
from .runs import fingerprint_checkout
from .spec import METHODS, TASKS

CLONE = Path(__file__).resolve().parents[2]
DEFAULT_WORK_DIR = Path("work_dirs/fingerprint")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python tools/fingerprint.py``."""
    parser = argparse.ArgumentParser(prog="python tools/fingerprint.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-root", type=Path, default=CLONE,
                        help="the checkout whose code trains (its overhaul_det, configs, checkpoints); default this "
                             "clone. An older commit: `git worktree add /tmp/old COMMIT`, then --code-root /tmp/old")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"where the data and runs go (default {DEFAULT_WORK_DIR})")
    parser.add_argument("--out", type=Path, help="the fingerprint file to write (default WORK_DIR/fingerprints.json)")
    parser.add_argument("--against", type=Path,
                        help="then compare with this fingerprint file (the tasks and methods just fingerprinted)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                        help="train nothing: compare two fingerprint files")
    return parser


def _report(first: dict, second: dict) -> int:
    rows = compare(first, second)
    sys.stdout.write(format_rows(rows) + "\n")
    moved = moved_pairs(rows)
    sys.stdout.write("identical: every fingerprint agrees\n" if not moved else
                     f"{len(moved)} of {len(rows)} moved: " + ", ".join(f"{t} / {m}" for t, m in moved) + "\n")
    return 1 if moved else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Fingerprint (``--code-root``) or compare (``--compare A B``); exit status 1 when a compared fingerprint moved.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.compare:
            return _report(*(read_fingerprints(path) for path in args.compare))
        against = read_fingerprints(args.against) if args.against else None
        if not (args.code_root / "overhaul_det").is_dir():
            raise ValueError(f"--code-root {args.code_root}: no overhaul_det package there; give a checkout")
        result = fingerprint_checkout(args.code_root, args.work_dir, args.tasks, args.methods)
    except ValueError as error:
        parser.error(str(error))
    out = args.out or args.work_dir / "fingerprints.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {out}\n")
    for task, methods in result["fingerprints"].items():
        for method, entry in methods.items():
            sys.stdout.write(f"{task:<15} {method:<9} {entry['hash'][:16]}  {entry['metrics']}\n")
    return _report(_only(against, result), result) if against else 0


def _only(fingerprints: dict, like: dict) -> dict:
    """``fingerprints`` cut to the (task, method) pairs ``like`` holds: a partial run compares what it ran."""
    kept = {task: {m: e for m, e in methods.items() if m in like["fingerprints"].get(task, {})}
            for task, methods in fingerprints["fingerprints"].items()}
    return dict(fingerprints, fingerprints={task: methods for task, methods in kept.items() if methods})
