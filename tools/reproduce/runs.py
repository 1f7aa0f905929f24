"""Training the runs: one process per (method, seed, threads), ``jobs`` at a time, each recorded with its stamp
and reused while the stamp holds (its fingerprint among it: ``current_fingerprints``)."""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from overhaul_det.engine.history import read_val_history
from ..fingerprints.compare import read_fingerprints
from ..fingerprints.spec import METHODS as FINGERPRINTED, fingerprint_method
from ..provenance import code_hash, recorded_fingerprint, stamp, stale_fields
from .methods import METHODS, REPO, TASK_ABLATIONS, TASKS, alpha_runs, check_methods, split_teacher_precision, \
    with_teacher_precision
from .report import build_report

logger = logging.getLogger(__name__)


def _options(overrides: Dict, seed: int, epochs: Optional[int]) -> Dict[str, object]:
    options = {**overrides, "randomness.seed": seed}
    if epochs is not None:
        options["train_cfg.max_epochs"] = epochs
    return options


def _run(task: str, name: str, overrides: Dict, seed: int, threads: int, root: Path, epochs: Optional[int],
         fingerprints: "_Fingerprints", progress: Optional["_Progress"] = None) -> Dict:
    """Train one (method, seed, threads); returns the recorded result (from disk while still current).
    ``fingerprints`` holds today's fingerprints of the task and those of other checkouts; ``progress`` hears when a
    training starts and of each result."""
    progress = progress or _Progress(1, 1)
    spec = TASKS[task]
    work_dir = root / task / name.replace(" ", "_").replace("+", "_") / f"threads{threads}" / f"seed{seed}"
    result_file = work_dir / "result.json"
    options = _options(overrides, seed, epochs)
    method = fingerprint_method(overrides)
    current = stamp(REPO, REPO / spec["config"], options, threads, fingerprints.current[method])
    if result_file.exists():
        result = json.loads(result_file.read_text())
        recorded = dict(result.get("provenance", {}))
        recorded["fingerprint"] = recorded_fingerprint(recorded, task, method, fingerprints.known)
        stale = stale_fields(recorded, current)
        if not stale:
            progress(result, False)
            return result
        logger.info("%s / %s / seed %d / %d threads: rerun, the recorded run differs in %s", task, name, seed,
                    threads, ", ".join(stale))
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "overhaul_det.cli", "train", str(REPO / spec["config"]), "--work-dir",
               str(work_dir), "--cfg-options", *[f"{k}={v}" for k, v in options.items()]]
    logger.info("%s / %s / seed %d / %d threads: %s", task, name, seed, threads, " ".join(command))
    start = time.perf_counter()
    progress.started()
    _train(command, work_dir / "train.log", threads)
    history = read_val_history(work_dir, spec["metric"])
    result = dict(task=task, method=name, seed=seed, threads=threads, metric=spec["metric"], final=history[-1],
                  history=history, seconds=round(time.perf_counter() - start, 1), overrides=overrides,
                  teacher=_teacher_mode(work_dir / "train.log"), provenance=current)
    if overrides.get("model.ofd.alpha") == "auto":
        result["alpha_auto"] = _auto_alpha(work_dir)
    result_file.write_text(json.dumps(result, indent=2))
    progress(result, True)
    return result


class _Progress:
    """Logs each finished run as ``[done/total]`` with its metric, and the time left: the mean wall time of the
    runs trained so far for each run still to come, less what the runs in flight have already trained, shared
    among ``jobs`` workers (reused records take none)."""

    def __init__(self, total: int, jobs: int) -> None:
        self.total, self.jobs, self.done, self.trained = total, jobs, 0, []
        self.in_flight: Dict[int, float] = {}
        self.lock = threading.Lock()

    def started(self) -> None:
        """A training starts in this worker thread."""
        with self.lock:
            self.in_flight[threading.get_ident()] = time.perf_counter()

    def __call__(self, result: Dict, trained: bool) -> None:
        with self.lock:
            self.in_flight.pop(threading.get_ident(), None)
            self.done += 1
            if trained:
                self.trained.append(result["seconds"])
            left = self.total - self.done
            how = f"trained in {result['seconds']:.0f} s" if trained else "recorded before"
            eta = ""
            if left and self.trained:
                eta = f"; {left} to go, about {self._seconds_left(left) / 60:.0f} min if each trains"
            logger.info("[%d/%d] %s / %s / seed %d / %d threads: %s %.4g (%s)%s", self.done, self.total,
                        result["task"], result["method"], result["seed"], result["threads"], result["metric"],
                        result["final"], how, eta)

    def _seconds_left(self, left: int) -> float:
        """``left`` runs at the mean time each, the runs in flight counted from where they are now."""
        mean, now = statistics.mean(self.trained), time.perf_counter()
        in_flight = [max(mean - (now - start), 0.0) for start in self.in_flight.values()]
        queued = left - len(in_flight)
        return (sum(in_flight) + queued * mean) / min(self.jobs, left)


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
    from overhaul_det.engine.checkpoint import load_checkpoint_file

    checkpoint = (work_dir / "last_checkpoint").read_text().strip()
    return float(load_checkpoint_file(checkpoint)["state_dict"]["distiller.alpha_auto"])


def _train(command: List[str], log_path: Path, threads: int) -> None:
    """One training in its own process, with ``threads`` intra-op threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log_path.open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


class _Fingerprints(NamedTuple):
    current: Dict[str, str]
    known: List[Dict]


def current_fingerprints(task: str, root: Path, path: Optional[Path] = None) -> Dict[str, str]:
    """Today's fingerprint of each method of ``task``: from ``path`` (refused unless made from this checkout's
    code), else from ``root``/fingerprint/fingerprints.json while its code is this checkout's, else trained there
    now (a few minutes; ``python tools/fingerprint.py``).

    Args:
        task: the task.
        root: the reproduce work dir.
        path: a fingerprint file of this checkout, computed beforehand.
    """
    from ..fingerprints.runs import fingerprint_checkout

    code = code_hash(REPO)
    if path is not None:
        data = read_fingerprints(path)
        if data.get("code") != code or task not in data["fingerprints"]:
            raise ValueError(f"--fingerprints {path}: made from code {data.get('code')} (this checkout's is {code}) "
                             f"with tasks {sorted(data['fingerprints'])}; write it again with `python "
                             f"tools/fingerprint.py --out {path}` or leave --fingerprints out")
        return {m: e["hash"] for m, e in data["fingerprints"][task].items()}
    cache = root / "fingerprint" / "fingerprints.json"
    previous = read_fingerprints(cache) if cache.exists() else None
    if previous is None or previous.get("code") != code:
        previous = None
    if previous is None or set(previous["fingerprints"].get(task, {})) < set(FINGERPRINTED):
        logger.info("fingerprinting %s's training at this checkout (into %s)", task, cache.parent)
        previous = fingerprint_checkout(REPO, cache.parent, [task], previous=previous)
        cache.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    return {m: e["hash"] for m, e in previous["fingerprints"][task].items()}


def run_task(task: str, seeds: int, root: Path, epochs: Optional[int], ablations: bool,
             methods: Optional[List[str]] = None, threads: Sequence[int] = (), jobs: int = 1,
             alphas: Sequence[str] = (), teacher_precision: str = "auto", first_seed: int = 0,
             fingerprints: Optional[Path] = None, known_fingerprints: Sequence[Path] = ()) -> Dict:
    """All methods (and, with ``ablations``, the task's ablations; with ``alphas``, OFD at each
    alpha) over ``seeds`` seeds from ``first_seed`` on at each thread count (default: torch's), ``jobs``
    trainings at a time; every run that distils features with its teacher in ``teacher_precision``. A recorded run
    is reused while its stamp holds: its fingerprint against today's (``fingerprints``, else computed), a record
    made before fingerprints through the ``known_fingerprints`` file of a checkout with its code hash."""
    spec = TASKS[task]
    check_methods(task, methods or [])
    runs = [with_teacher_precision(base, METHODS[base], precision)
            for base, precision in map(split_teacher_precision, methods or spec["methods"])]
    if ablations:
        runs += [(f"ofd, {name}", o) for name, o in TASK_ABLATIONS[task].items()]
    runs += alpha_runs(task, alphas)
    runs = [with_teacher_precision(name, overrides, teacher_precision) for name, overrides in runs]
    if not threads:
        import torch

        threads = [torch.get_num_threads()]
    _warn_if_oversubscribed(jobs, max(threads))
    todo = [(name, overrides, seed, n) for n in threads for seed in range(first_seed, first_seed + seeds)
            for name, overrides in runs]
    prints = _Fingerprints(current_fingerprints(task, root, fingerprints),
                           [read_fingerprints(path) for path in known_fingerprints])
    progress = _Progress(len(todo), jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda run: _run(task, *run, root, epochs, prints, progress), todo))
    return build_report(task, results, first_seed + seeds, epochs)


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
