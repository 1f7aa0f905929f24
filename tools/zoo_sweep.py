"""Sweep every timm and torchvision classification architecture through tap discovery, the
capture rewrite and one OFD step (the model as teacher, a copy of it as student).

Each model runs in a long-lived worker process with a per-model time limit; results are appended
to a JSON-lines cache, so the sweep resumes where it stopped. ``docs/zoo.md`` is written from the
cache: per family, models tried / taps found / rewrite exact / keys kept / distil step ok, and
every failure with its reason.

    python tools/zoo_sweep.py --workers 2 --max-params 30e6 --out docs/zoo.md
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import multiprocessing as mp
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

logger = logging.getLogger("zoo_sweep")


def list_architectures(zoos: Iterable[str]) -> List[Tuple[str, str]]:
    import timm
    import torchvision

    names = []
    if "torchvision" in zoos:
        names += [("torchvision", n) for n in torchvision.models.list_models(module=torchvision.models)]
    if "timm" in zoos:
        names += [("timm", n) for n in timm.list_models()]
    return names


def _build(zoo: str, name: str, device: Optional[str] = None):
    import torch

    from overhaul_det.models.zoo import create_model

    with torch.device(device) if device else _null():
        return create_model(f"{zoo}/{name}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _native_input_size(zoo: str, name: str, model) -> Tuple[Tuple[int, int, int], bool]:
    """The input size the architecture is trained at, and whether it may change."""
    if zoo == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name)
        crop = list(weights)[0].transforms().crop_size[0] if len(weights) else 224
        return (3, crop, crop), False
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("input_size", (3, 224, 224))), bool(cfg.get("fixed_input_size", False))


def _input_sizes(zoo: str, name: str, model, cap: int) -> List[Tuple[int, int, int]]:
    """Sizes to try: the native size capped at ``cap`` on its longer side, then the native size
    (some models only accept multiples of their native size's grid)."""
    (c, h, w), fixed = _native_input_size(zoo, name, model)
    if fixed or max(h, w) <= cap:
        return [(c, h, w)]
    return [(c, cap, cap), (c, h, w)]


@functools.lru_cache(maxsize=None)
def _timm_modules() -> Dict[str, str]:
    """timm model name -> the timm module that defines it (its family)."""
    import timm

    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def _family(zoo: str, name: str) -> str:
    if zoo == "timm":
        return "timm." + _timm_modules().get(name, name)
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    return "torchvision." + builder.__module__.split(".")[-1]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _count_params(zoo: str, name: str) -> int:
    """Parameters, counted on the meta device (no memory) where the builder allows it."""
    try:
        model = _build(zoo, name, "meta")
    except NotImplementedError:  # builders that copy into their weights at init
        model = _build(zoo, name)
    return sum(p.numel() for p in model.parameters())


def check_model(zoo: str, name: str, max_params: float, cap: int, record: Dict) -> Dict:
    """Run the four checks on one architecture, filling ``record`` (JSON-able) as it goes, so a
    failure keeps the stage it happened in."""
    import torch

    record.update(stage="build")
    torch.manual_seed(0)
    params = _count_params(zoo, name)
    record["params"] = params
    if params > max_params:
        record.update(status="skipped", reason=f"{params / 1e6:.1f}M parameters > bound")
        return record
    model = _build(zoo, name).eval()
    sizes = _input_sizes(zoo, name, model, cap)
    for size in sizes:
        try:
            return _check_at(model, size, record)
        except Exception:
            if size == sizes[-1]:
                raise


def _check_at(model, size: Tuple[int, int, int], record: Dict) -> Dict:
    import torch

    import overhaul_det as od

    record["input_size"] = size
    record["stage"] = "find_taps"
    taps = od.find_taps(model, input_size=size)
    record["taps"] = [(t.name, t.stride, t.channels, t.norm is not None) for t in taps]
    strides = [t.stride for t in taps]
    record["taps_ok"] = len(taps) >= 3 and strides == sorted(strides)

    record["stage"] = "rewrite"
    student = copy.deepcopy(model)
    keys_before = list(student.state_dict().keys())
    od.attach_taps(student, taps)
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
        with od.capture_taps(student) as captured:
            got = student(x)
    record["rewrite_exact"] = _equal(expected, got) and len(captured) == len(taps)
    record["keys_kept"] = list(student.state_dict().keys()) == keys_before

    record["stage"] = "distil"
    fresh = copy.deepcopy(model)
    distiller = od.FeatureDistiller(model, fresh, teacher_taps=taps, student_taps=[t.name for t in taps],
                                    input_size=size)
    distiller.train()
    _, losses = distiller(x)
    loss = losses["loss_ofd"]
    loss.backward()
    grads = any(p.grad is not None for p in distiller.regressors.parameters())
    record["distil_ok"] = bool(torch.isfinite(loss)) and grads
    record["status"] = "ok" if all(record[k] for k in ("taps_ok", "rewrite_exact", "keys_kept", "distil_ok")) else "fail"
    if record["status"] == "fail":
        failed = [k for k in ("taps_ok", "rewrite_exact", "keys_kept", "distil_ok") if not record[k]]
        record["reason"] = "check failed: " + ", ".join(failed) + f" (taps: {strides})"
    return record


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _worker(tasks: "mp.Queue", results: "mp.Queue", max_params: float, cap: int, timeout: int) -> None:
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    signal.signal(signal.SIGALRM, _alarm)
    while True:
        item = tasks.get()
        if item is None:
            return
        zoo, name = item
        start = time.perf_counter()
        record: Dict = dict(zoo=zoo, name=name)
        signal.alarm(timeout)
        try:
            check_model(zoo, name, max_params, cap, record)
        except _Timeout:
            record.update(status="fail", reason=f"timeout > {timeout}s")
        except Exception as error:  # a failing model is a result of the sweep, not a crash
            message = str(error).splitlines()[0][:300] if str(error) else ""
            record.update(status="fail", reason=f"{type(error).__name__}: {message}".rstrip(": "))
        finally:
            signal.alarm(0)
        record["seconds"] = round(time.perf_counter() - start, 2)
        results.put(record)


def run_sweep(names: List[Tuple[str, str]], cache: Path, workers: int, max_params: float, cap: int, timeout: int,
              retry_failed: bool = False) -> None:
    done = {(r["zoo"], r["name"]) for r in read_cache(cache) if not (retry_failed and r["status"] == "fail")}
    todo = [n for n in names if n not in done]
    logger.info("%d architectures, %d already in %s, %d to run", len(names), len(done), cache, len(todo))
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in todo:
        tasks.put(item)
    procs = [ctx.Process(target=_worker, args=(tasks, results, max_params, cap, timeout), daemon=True)
             for _ in range(workers)]
    for p in procs:
        tasks.put(None)
        p.start()
    start = time.perf_counter()
    with cache.open("a") as out:
        for i in range(len(todo)):
            record = results.get()
            out.write(json.dumps(record) + "\n")
            out.flush()
            rate = (time.perf_counter() - start) / (i + 1)
            logger.info("[%d/%d] %s %s: %s (eta %.0f min)", i + 1, len(todo), record["zoo"], record["name"],
                        record["status"], rate * (len(todo) - i - 1) / 60)
    for p in procs:
        p.join()


def read_cache(cache: Path) -> List[Dict]:
    if not cache.exists():
        return []
    records = {}
    for line in cache.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r["zoo"], r["name"])] = r
    return list(records.values())


def write_report(records: List[Dict], out: Path, max_params: float) -> None:
    by_family: Dict[str, List[Dict]] = defaultdict(list)
    for r in records:
        by_family[_family(r["zoo"], r["name"])].append(r)
    lines = ["# Zoo sweep: tap discovery, rewrite and one OFD step on every architecture", "",
             "Generated by `python tools/zoo_sweep.py --workers 2 --max-params 30e6` (random init, CPU; "
             f"{sum(r.get('seconds', 0) for r in records) / 3600:.1f} worker-hours over {len(records)} "
             "architectures). Each model is its own teacher; a",
             "copy of it is the student. Checks: >= 3 taps with non-decreasing strides; the rewritten",
             "forward's outputs equal the original's; every state_dict key kept in order; a finite OFD loss",
             f"with gradients on the regressors. Models above {max_params / 1e6:.0f}M parameters are skipped.", ""]
    for zoo in ("torchvision", "timm"):
        tried = [r for r in records if r["zoo"] == zoo and r["status"] != "skipped"]
        ok = [r for r in tried if r["status"] == "ok"]
        skipped = [r for r in records if r["zoo"] == zoo and r["status"] == "skipped"]
        if tried:
            lines.append(f"- **{zoo}**: {len(ok)}/{len(tried)} pass ({100 * len(ok) / len(tried):.1f}%), "
                         f"{len(skipped)} skipped by size")
    lines += ["", "| family | tried | taps found | rewrite exact | keys kept | distil ok |", "|---|---|---|---|---|---|"]
    for family in sorted(by_family):
        rs = [r for r in by_family[family] if r["status"] != "skipped"]
        if not rs:
            continue
        count = lambda key: sum(1 for r in rs if r.get(key))  # noqa: E731
        lines.append(f"| {family} | {len(rs)} | {count('taps_ok')} | {count('rewrite_exact')} | "
                     f"{count('keys_kept')} | {count('distil_ok')} |")
    failures = sorted((r for r in records if r["status"] == "fail"), key=lambda r: (r["zoo"], r["name"]))
    lines += ["", f"## Failures ({len(failures)})", "", "| zoo | model | stage | reason |", "|---|---|---|---|"]
    for r in failures:
        reason = r.get("reason", "").replace("|", "\\|")
        lines.append(f"| {r['zoo']} | {r['name']} | {r.get('stage', '')} | {reason} |")
    skipped = [r for r in records if r["status"] == "skipped"]
    lines += ["", f"## Skipped by size ({len(skipped)})", ""]
    for zoo in ("torchvision", "timm"):
        names = sorted(r["name"] for r in skipped if r["zoo"] == zoo)
        lines += [f"**{zoo}** ({len(names)}): " + (", ".join(names) or "none"), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", nargs="+", default=["torchvision", "timm"], choices=["torchvision", "timm"])
    parser.add_argument("--filter", default=None, help="only names containing this string")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-params", type=float, default=30e6)
    parser.add_argument("--max-input", type=int, default=224, help="cap on the input side unless fixed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model")
    parser.add_argument("--cache", type=Path, default=Path("docs/zoo_sweep.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("docs/zoo.md"))
    parser.add_argument("--retry-failed", action="store_true", help="run the cached failures again")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.report_only:
        names = list_architectures(args.zoo)
        if args.filter:
            names = [n for n in names if args.filter in n[1]]
        names = names[: args.limit]
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        run_sweep(names, args.cache, args.workers, args.max_params, args.max_input, args.timeout, args.retry_failed)
    write_report(read_cache(args.cache), args.out, args.max_params)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
