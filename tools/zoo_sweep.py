"""Sweep every timm and torchvision classification architecture through tap discovery, the
capture rewrite and one OFD step (the model as teacher, a copy of it as student).

Each model runs in a long-lived worker process with a per-model time limit; results are appended
to a JSON-lines cache, so the sweep resumes where it stopped. ``docs/zoo.md`` is written from the
cache: per family, models tried / taps found / rewrite exact / keys kept / distil step ok, and
every failure with its reason.

A pairs section follows: a fixed list of cross-family teacher -> student pairs (``PAIRS``), one
OFD step each, cached in ``docs/zoo_pairs.jsonl``; ``--pairs-only`` runs it alone.

Then a detection and a segmentation section (``TASK_SECTIONS``): every torchvision detection builder and
every torchvision segmenter, as teacher and as student of a small fixed partner, one training step
through the task adapter (``DetectionDistiller``, ``SegmentationDistiller``), cached in
``docs/zoo_detection.jsonl`` and ``docs/zoo_segmentation.jsonl``; ``--detection-only`` and
``--segmentation-only`` run them alone. The ``--*-only`` flags combine; without any, every part runs.
Every section's table is regenerated from its cache; ``--report-only`` runs nothing.

    python tools/zoo_sweep.py --workers 2 --max-params 30e6 --out docs/zoo.md
    python tools/zoo_sweep.py --pairs-only
    python tools/zoo_sweep.py --detection-only --segmentation-only
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import multiprocessing as mp
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterable, List, NamedTuple, Optional, Sequence, Tuple

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
    record["tap_source"] = taps[0].source if taps else None
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
    distiller = od.FeatureDistiller(model, fresh, teacher_taps=taps, student_taps=taps, input_size=size)
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


def _run_check(record: Dict, timeout: int, check: Callable, *args) -> None:
    """``check(*args)`` under a SIGALRM timeout; a failure or timeout becomes ``record``'s status and
    one-line reason (a failing model is a result of the sweep, not a crash); ``record['seconds']`` its time."""
    start = time.perf_counter()
    signal.alarm(timeout)
    try:
        check(*args)
    except _Timeout:
        record.update(status="fail", reason=f"timeout > {timeout}s")
    except Exception as error:
        message = str(error).splitlines()[0][:300] if str(error) else ""
        record.update(status="fail", reason=f"{type(error).__name__}: {message}".rstrip(": "))
    finally:
        signal.alarm(0)
    record["seconds"] = round(time.perf_counter() - start, 2)


def _worker(todo: Sequence[Tuple[str, str]], current: "mp.Value", tasks: "mp.Queue", results: "mp.SimpleQueue",
            max_params: float, cap: int, timeout: int, check: Callable) -> None:
    """Run ``check`` on the items of ``todo`` whose indices come from ``tasks``; ``current`` holds the
    index being checked (shared memory, so it survives the worker being killed)."""
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    signal.signal(signal.SIGALRM, _alarm)
    while True:
        index = tasks.get()
        if index is None:
            return
        zoo, name = todo[index]
        current.value = index
        record: Dict = dict(zoo=zoo, name=name)
        _run_check(record, timeout, check, zoo, name, max_params, cap, record)
        results.put(record)


def _died(exitcode: int) -> str:
    """The reason recorded for a model whose worker process ended in the middle of its check."""
    signal_name = signal.Signals(-exitcode).name if exitcode < 0 else f"exit code {exitcode}"
    hint = " (the kernel's out-of-memory killer, most likely: run it alone with --workers 1)" \
        if exitcode == -signal.SIGKILL else ""
    return f"worker process died: {signal_name}{hint}"


def run_sweep(names: List[Tuple[str, str]], cache: Path, workers: int, max_params: float, cap: int, timeout: int,
              retry_failed: bool = False, check: Callable = check_model) -> None:
    """Check every model of ``names`` not yet in ``cache`` on ``workers`` processes, appending each record
    as it comes. A worker that dies (e.g. killed for memory) fails its model with the reason and is replaced."""
    todo = sweep_todo(names, cache, max_params, retry_failed)
    logger.info("%d architectures, %d already in %s, %d to run", len(names), len(names) - len(todo), cache, len(todo))
    ctx = mp.get_context("spawn")
    # results: a SimpleQueue writes each record before the worker goes on, so a worker killed later loses none
    tasks, results = ctx.Queue(), ctx.SimpleQueue()
    for index in range(len(todo)):
        tasks.put(index)

    def start_worker() -> Tuple["mp.Process", "mp.Value"]:
        current = ctx.Value("i", -1, lock=False)
        proc = ctx.Process(target=_worker, daemon=True,
                           args=(todo, current, tasks, results, max_params, cap, timeout, check))
        tasks.put(None)
        proc.start()
        return proc, current

    slots = [start_worker() for _ in range(workers)]
    pending = {tuple(item) for item in todo}
    start = time.perf_counter()
    with cache.open("a") as out:
        def write(record: Dict) -> None:
            pending.discard(_sweep_key(record))
            out.write(json.dumps(record) + "\n")
            out.flush()
            done = len(todo) - len(pending)
            logger.info("[%d/%d] %s %s: %s (eta %.0f min)", done, len(todo), record["zoo"], record["name"],
                        record["status"], (time.perf_counter() - start) / done * len(pending) / 60)

        while pending:
            dead = [i for i, (proc, _) in enumerate(slots) if proc.exitcode not in (None, 0)]
            # Drained after the deaths were seen: a record a worker sent before it died is read, not failed.
            while not results.empty():
                write(results.get())
            for i in dead:
                proc, current = slots[i]
                if current.value >= 0 and tuple(todo[current.value]) in pending:
                    zoo, name = todo[current.value]
                    write(dict(zoo=zoo, name=name, status="fail", reason=_died(proc.exitcode)))
                slots[i] = start_worker()
            if pending and all(proc.exitcode is not None for proc, _ in slots) and results.empty():
                logger.warning("%d models never reported: %s", len(pending), sorted(pending))
                break
            time.sleep(0.5)
    for proc, _ in slots:
        proc.join()


def _read_keyed(cache: Path, key: Callable[[Dict], Hashable]) -> List[Dict]:
    """The records of a JSON-lines cache, the last one of each ``key`` (a rerun replaces a record)."""
    if not cache.exists():
        return []
    records = {}
    for line in cache.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[key(r)] = r
    return list(records.values())


def _todo(items: Sequence, records: Sequence[Dict], record_key: Callable[[Dict], Hashable],
          item_key: Callable[[object], Hashable], retry_failed: bool) -> list:
    """``items`` without a cached record (with ``retry_failed``, those whose record failed run again)."""
    done = {record_key(r) for r in records if not (retry_failed and r["status"] == "fail")}
    return [item for item in items if item_key(item) not in done]


def sweep_todo(names: List[Tuple[str, str]], cache: Path, max_params: float, retry_failed: bool = False) -> list:
    """``names`` without a cached record; a model skipped by size under a lower bound runs again."""
    records = [r for r in read_cache(cache) if not _below_bound(r, max_params)]
    return _todo(names, records, _sweep_key, lambda name: name, retry_failed)


def _below_bound(r: Dict, max_params: float) -> bool:
    """A record skipped by size under a lower bound than ``max_params``: it runs again at this bound."""
    return r["status"] == "skipped" and r.get("params", float("inf")) <= max_params


def _sweep_key(r: Dict) -> Tuple[str, str]:
    return r["zoo"], r["name"]


def read_cache(cache: Path) -> List[Dict]:
    return _read_keyed(cache, _sweep_key)


def write_report(records: List[Dict], out: Path, max_params: float, pair_records: Sequence[Dict] = (),
                 task_records: Sequence[Tuple["TaskSection", Sequence[Dict]]] = ()) -> None:
    """``out`` from the sweep's cached records, then the pairs section if there are pair records, then
    each task section (detection, segmentation) that has records."""
    by_family: Dict[str, List[Dict]] = defaultdict(list)
    for r in records:
        by_family[_family(r["zoo"], r["name"])].append(r)
    lines = ["# Zoo sweep: tap discovery, rewrite and one OFD step on every architecture", "",
             f"Generated by `python tools/zoo_sweep.py --workers 2 --max-params {max_params / 1e6:g}e6` (random init, CPU; "
             f"{sum(r.get('seconds', 0) for r in records) / 3600:.1f} worker-hours over {len(records)} "
             "architectures). Each model is its own teacher; a",
             "copy of it is the student. Checks: >= 3 taps with non-decreasing strides; the rewritten",
             "forward's outputs equal the original's; every state_dict key kept in order; a finite OFD loss",
             f"with gradients on the regressors. Models above {max_params / 1e6:.0f}M parameters are skipped.",
             "Where FX cannot trace a model, or finds fewer than three stage ends, its taps are the outputs of the",
             "modules in timm's `feature_info` (forward hooks): stage outputs, not the pre-activation points OFD",
             "takes; those models are counted apart (*module taps*).", ""]
    for zoo in ("torchvision", "timm"):
        tried = [r for r in records if r["zoo"] == zoo and r["status"] != "skipped"]
        ok = [r for r in tried if r["status"] == "ok"]
        skipped = [r for r in records if r["zoo"] == zoo and r["status"] == "skipped"]
        not_run = [r for r in skipped if _below_bound(r, max_params)]
        through_modules = [r for r in ok if r.get("tap_source") == "module"]
        if tried:
            lines.append(f"- **{zoo}**: {len(ok)}/{len(tried)} pass ({100 * len(ok) / len(tried):.1f}%): "
                         f"{len(ok) - len(through_modules)} with FX taps, {len(through_modules)} with module taps; "
                         f"{len(skipped) - len(not_run)} skipped by size"
                         + (f"; {len(not_run)} within the bound not run yet (skipped under a lower bound: "
                            f"run the sweep with this --max-params)" if not_run else ""))
    lines += ["", "| family | tried | taps found | module taps | rewrite exact | keys kept | distil ok |",
              "|---|---|---|---|---|---|---|"]
    for family in sorted(by_family):
        rs = [r for r in by_family[family] if r["status"] != "skipped"]
        if not rs:
            continue
        count = lambda key: sum(1 for r in rs if r.get(key))  # noqa: E731
        modules = sum(1 for r in rs if r.get("tap_source") == "module")
        lines.append(f"| {family} | {len(rs)} | {count('taps_ok')} | {modules} | {count('rewrite_exact')} | "
                     f"{count('keys_kept')} | {count('distil_ok')} |")
    through_modules = sorted(f"{r['zoo']}/{r['name']}" for r in records
                             if r["status"] == "ok" and r.get("tap_source") == "module")
    lines += ["", f"## Module taps, the FX fallback ({len(through_modules)})", "",
              ", ".join(through_modules) or "none"]
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
    if pair_records:
        lines += pairs_report(list(pair_records)) + [""]
    for section, section_records in task_records:
        if section_records:
            lines += task_report(section, list(section_records)) + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------
# Teacher -> student pairs across families: one OFD step each.

class Pair(NamedTuple):
    """A cross-family teacher -> student pair, run at ``size`` x ``size`` px (batch 2)."""

    kind: str
    teacher: str
    student: str
    size: int = 224
    teacher_kwargs: Tuple[Tuple[str, object], ...] = ()
    student_kwargs: Tuple[Tuple[str, object], ...] = ()


PAIRS: Tuple[Pair, ...] = (
    Pair("CNN -> CNN", "torchvision/resnet50", "torchvision/resnet18"),
    Pair("CNN -> mobile", "torchvision/resnet50", "timm/mobilenetv3_large_100"),
    Pair("ViT -> CNN", "timm/vit_small_patch16_224", "torchvision/resnet18"),
    Pair("ViT (2 prefix tokens) -> CNN", "timm/deit_small_distilled_patch16_224", "torchvision/resnet18"),
    Pair("Swin -> CNN", "timm/swin_tiny_patch4_window7_224", "torchvision/resnet18"),
    Pair("CNN -> ViT", "torchvision/resnet50", "timm/vit_tiny_patch16_224"),
    Pair("CNN -> CNN", "timm/convnext_tiny", "timm/efficientnet_b0"),
    Pair("CNN -> mobile", "timm/xception41", "timm/semnasnet_075"),
)


class _Messages(logging.Handler):
    """Collects the messages of one logger while attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _params_feeding(tensors, model) -> List[str]:
    """Names of ``model``'s parameters the autograd graphs of ``tensors`` reach."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen, found = set(), set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None and id(variable) in names:
            found.add(names[id(variable)])
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return [n for n, _ in model.named_parameters() if n in found]


def check_pair(pair: Pair, record: Dict) -> Dict:
    """One SGD step of ``FeatureDistiller(teacher, student, input_size=(3, S, S))`` over the
    student and the regressors on the OFD loss, filling ``record`` as it goes."""
    import torch
    from torch import nn

    import overhaul_det as od
    from overhaul_det.models.zoo import create_model

    size = (3, pair.size, pair.size)
    record.update(input_size=size, stage="build")
    torch.manual_seed(0)
    teacher = create_model(pair.teacher, **dict(pair.teacher_kwargs)).eval()
    student = create_model(pair.student, **dict(pair.student_kwargs))
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}

    record["stage"] = "distiller"
    handler, distiller_log = _Messages(), logging.getLogger("overhaul_det.distiller")
    level = distiller_log.level
    distiller_log.addHandler(handler)
    distiller_log.setLevel(logging.INFO)
    try:
        distiller = od.FeatureDistiller(teacher, student, input_size=size)
    finally:
        distiller_log.removeHandler(handler)
        distiller_log.setLevel(level)
    depth = [m for m in handler.messages if "by depth" in m]
    record["paired_by"] = "depth" if depth else "stride"
    if depth:
        record["depth_message"] = depth[0]
    record["pairs"] = [dict(student=s.name, student_stride=s.stride, student_layout=s.layout, teacher=t.name,
                            teacher_stride=t.stride, teacher_layout=t.layout, loss_layout=layout)
                       for (s, t), layout in zip(distiller.pairs, distiller.layouts)]

    record["stage"] = "step"
    distiller.train()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with distiller.capture_student() as captured:
        distiller.student(x)
        feeding = _params_feeding(list(captured.values()), distiller.student)
    del captured
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    optimizer.zero_grad()
    _, losses = distiller(x)
    loss = losses["loss_ofd"]
    loss.backward()
    grads = dict(distiller.student.named_parameters())
    no_grad = [n for n in feeding if grads[n].grad is None or not bool(torch.isfinite(grads[n].grad).all())]
    nonzero = [n for n in feeding if grads[n].grad is not None and bool(grads[n].grad.ne(0).any())]
    first = next(n for n, m in distiller.student.named_modules() if isinstance(m, nn.Conv2d))
    first_grad = distiller.student.get_submodule(first).weight.grad
    optimizer.step()
    after = teacher.state_dict()
    record.update(
        loss=loss.item(), feeding_params=len(feeding), with_grad=len(feeding) - len(no_grad), nonzero_grad=len(nonzero),
        first_conv=first, first_conv_grad=first_grad is not None and bool(first_grad.ne(0).any()),
        regressor_grads=all(p.grad is not None for p in distiller.regressors.parameters()),
        teacher_unchanged=list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items()),
    )
    checks = dict(finite_loss=math.isfinite(record["loss"]), student_grads=not no_grad and bool(feeding),
                  first_conv_grad=record["first_conv_grad"], regressor_grads=record["regressor_grads"],
                  teacher_unchanged=record["teacher_unchanged"])
    failed = [k for k, ok in checks.items() if not ok]
    record["status"] = "fail" if failed else "ok"
    if failed:
        record["reason"] = "check failed: " + ", ".join(failed) + (f" (no grad: {no_grad[:3]})" if no_grad else "")
    return record


def _pair_key(r) -> Tuple[str, str]:
    return (r["teacher"], r["student"]) if isinstance(r, dict) else (r.teacher, r.student)


def read_pairs_cache(cache: Path) -> List[Dict]:
    return _read_keyed(cache, _pair_key)


def run_in_process(items: Sequence, cache: Path, timeout: int, retry_failed: bool, what: str,
                   key: Callable[[object], Hashable], new_record: Callable[[object], Dict],
                   check: Callable[[object, Dict], object], describe: Callable[[Dict], str]) -> None:
    """Run the ``items`` not yet in ``cache`` (and, with ``retry_failed``, its failures) in this process,
    one thread, each ``check(item, record)`` under ``_run_check``'s time limit, appending one JSON line
    per item; ``key`` identifies an item and its record, ``describe`` a record for the progress line."""
    import torch

    todo = _todo(items, _read_keyed(cache, key), key, key, retry_failed)
    logger.info("%d %s, %d to run", len(items), what, len(todo))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handler = signal.signal(signal.SIGALRM, _alarm)
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache.open("a") as out:
            for i, item in enumerate(todo):
                record = new_record(item)
                _run_check(record, timeout, check, item, record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                logger.info("[%d/%d] %s: %s (%.0fs)", i + 1, len(todo), describe(record), record["status"],
                            record["seconds"])
    finally:
        signal.signal(signal.SIGALRM, handler)
        torch.set_num_threads(threads)


def run_pairs(pairs: Sequence[Pair], cache: Path, timeout: int, retry_failed: bool = False) -> None:
    """Run the pairs not yet in ``cache`` (and, with ``retry_failed``, its failures) in this process,
    each under a time limit, appending one JSON line per pair."""
    run_in_process(pairs, cache, timeout, retry_failed, "pairs", _pair_key,
                   lambda pair: dict(kind=pair.kind, teacher=pair.teacher, student=pair.student), check_pair,
                   lambda r: f"{r['teacher']} -> {r['student']} (loss {r.get('loss')}, by {r.get('paired_by')})")


def pairs_report(records: List[Dict], pairs: Sequence[Pair] = PAIRS) -> List[str]:
    """The "Teacher -> student pairs" section of the report, from the pairs cache."""
    order = {_pair_key(p): i for i, p in enumerate(pairs)}
    records = sorted(records, key=lambda r: (order.get(_pair_key(r), len(order)), _pair_key(r)))
    ok = sum(r["status"] == "ok" for r in records)
    lines = [f"## Teacher -> student pairs ({ok}/{len(records)} distil)", "",
             "Generated by `python tools/zoo_sweep.py --pairs-only` (cache: `docs/zoo_pairs.jsonl`). Random init, "
             "CPU, batch 2;", "`FeatureDistiller(teacher, student, input_size=(3, S, S))` with its default taps, then "
             "one SGD step over", "the student and the regressors on the OFD loss alone. A pair distils if the loss "
             "is finite, every student", "parameter that feeds a paired tap (found on its autograd graph) gets a "
             "finite gradient, the student's", "first convolution (stem or patch embedding) a non-zero one, every "
             "regressor a gradient, and the teacher's", "state_dict is unchanged. *paired by*: stride (the stride "
             "lists match) or depth (they differ: the", "deepest min(n_student, n_teacher) taps, deepest with deepest). A zero gradient is expected behind a",
             "BatchNorm initialised to zero (timm's last BN of each residual block).",
             "", "| kind | teacher | student | S | result | OFD loss | paired by | student grads (non-zero) / feeding "
             "| seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        size = r.get("input_size", [0, 0, 0])[-1]
        loss = f"{r['loss']:.4g}" if "loss" in r else ""
        grads = f"{r['with_grad']} ({r['nonzero_grad']}) / {r['feeding_params']}" if "feeding_params" in r else ""
        result = "ok" if r["status"] == "ok" else f"fail at {r.get('stage', '')}: {r.get('reason', '')}"
        lines.append(f"| {r['kind']} | {r['teacher']} | {r['student']} | {size} | {result.replace('|', chr(92) + '|')} "
                     f"| {loss} | {r.get('paired_by', '')} | {grads} | {r.get('seconds', '')} |")
    lines += ["", "Taps paired (student tap, stride, layout -> teacher tap, stride, layout; a pair of different "
              "layouts is compared as channel-first maps):", ""]
    for r in records:
        if not r.get("pairs"):
            continue
        taps = "; ".join(f"`{p['student']}` {p['student_stride']} {p['student_layout']} -> `{p['teacher']}` "
                         f"{p['teacher_stride']} {p['teacher_layout']}" for p in r["pairs"])
        lines.append(f"- **{r['teacher']} -> {r['student']}** (by {r['paired_by']}; student -> teacher): {taps}")
    return lines


# ------------------------------------------------------------------------------------------------
# Detection and segmentation: every torchvision builder, as teacher and as student, one training
# step through the task adapter.

ROLES = ("teacher", "student")
DETECTION_SIZE = 128
SEGMENTATION_SIZE = 64
TASK_NUM_CLASSES = 4
NUM_KEYPOINTS = 17  # Keypoint R-CNN's default


class TaskSection(NamedTuple):
    """One task's section: its builders, the spec each is given, the small fixed partner on the other
    side, the adapter built from (teacher spec, student spec), a batch and the report's wording."""

    name: str
    title: str
    builders: Callable[[], Sequence[str]]
    spec: Callable[[str], Dict]
    partner: Dict
    adapter: Callable[[Dict, Dict], object]
    batch: Callable[[], Dict]
    task_losses: Callable[[Dict], Sequence[str]]
    description: Tuple[str, ...]


def _torchvision_builders(kind: str) -> List[str]:
    """Every builder of ``torchvision.models.<kind>`` (``detection``, ``segmentation``), as torchvision lists them."""
    import torchvision

    return torchvision.models.list_models(getattr(torchvision.models, kind))


def _detection_adapter(teacher: Dict, student: Dict):
    from overhaul_det.tasks.detection import DetectionDistiller

    return DetectionDistiller(teacher=teacher, student=student, num_classes=TASK_NUM_CLASSES, min_size=DETECTION_SIZE,
                              max_size=DETECTION_SIZE, ofd=dict(input_size=(3, DETECTION_SIZE, DETECTION_SIZE)))


def _detection_batch() -> Dict:
    """Two images in [0, 1], each with two boxes, their labels, instance masks (the box filled) and
    ``NUM_KEYPOINTS`` synthetic keypoints per box (visible, inside it)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [40.0, 30.0, 110.0, 100.0]])
    masks = torch.zeros(len(boxes), DETECTION_SIZE, DETECTION_SIZE, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    corner, extent = boxes[:, None, :2], boxes[:, None, 2:] - boxes[:, None, :2]
    points = corner + extent * torch.rand(len(boxes), NUM_KEYPOINTS, 2, generator=generator)
    keypoints = torch.cat([points, torch.ones(len(boxes), NUM_KEYPOINTS, 1)], dim=2)
    samples = [dict(image_id=i + 1, boxes=boxes, labels=torch.tensor([1, TASK_NUM_CLASSES - 1]), masks=masks,
                    keypoints=keypoints, orig_size=(DETECTION_SIZE, DETECTION_SIZE), flipped=False)
               for i in range(2)]
    images = [torch.rand(3, DETECTION_SIZE, DETECTION_SIZE, generator=generator) for _ in samples]
    return dict(inputs=images, data_samples=samples)


def _segmentation_spec(builder: str) -> Dict:
    """The builder by name, with its aux head where torchvision's builder has one."""
    import inspect

    import torchvision

    takes_aux = "aux_loss" in inspect.signature(torchvision.models.get_model_builder(builder)).parameters
    return dict(backbone=builder, aux_loss=True) if takes_aux else dict(backbone=builder)


def _segmentation_adapter(teacher: Dict, student: Dict):
    from overhaul_det.tasks.segmentation import SegmentationDistiller

    return SegmentationDistiller(teacher, student, num_classes=TASK_NUM_CLASSES,
                                 ofd=dict(input_size=(3, SEGMENTATION_SIZE, SEGMENTATION_SIZE)))


def _segmentation_batch() -> Dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    size = (SEGMENTATION_SIZE, SEGMENTATION_SIZE)
    return dict(inputs=[torch.randn(3, *size, generator=generator) for _ in range(2)],
                data_samples=[dict(gt_seg=torch.randint(0, TASK_NUM_CLASSES, size, generator=generator))
                              for _ in range(2)])


DETECTION = TaskSection(
    name="detection",
    title="Detection: every torchvision detector as teacher and as student",
    builders=lambda: _torchvision_builders("detection"),
    spec=lambda builder: dict(name=builder),
    partner=dict(name="mobilenetv3_small_050", fpn_channels=32),
    adapter=_detection_adapter,
    batch=_detection_batch,
    task_losses=lambda student: (),
    description=(
        "Each builder of `torchvision.models.list_models(torchvision.models.detection)`, given to",
        "`DetectionDistiller` by name (`dict(name=BUILDER)`) as the teacher of a small fixed student, then as",
        "the student of a small fixed teacher (the partner: `dict(name='mobilenetv3_small_050', fpn_channels=32)`,",
        "the tests' Faster R-CNN over a timm MobileNetV3 body). Random init, CPU, one thread,",
        f"{TASK_NUM_CLASSES} classes with the background, min_size = max_size = {DETECTION_SIZE}, "
        f"`ofd.input_size=(3, {DETECTION_SIZE}, {DETECTION_SIZE})`; a batch of two",
        f"{DETECTION_SIZE} px images with two boxes each, every sample also carrying instance masks and "
        f"{NUM_KEYPOINTS} synthetic",
        "keypoints per box (Mask R-CNN's and Keypoint R-CNN's targets; what reaches the detector is the adapter's",
        "doing). One SGD step (lr 0.01, momentum 0.9) on the adapter's losses, summed by its `parse_losses`.",
    ),
)

SEGMENTATION = TaskSection(
    name="segmentation",
    title="Segmentation: every torchvision segmenter as teacher and as student",
    builders=lambda: _torchvision_builders("segmentation"),
    spec=_segmentation_spec,
    partner=dict(backbone="timm/resnet18", channels=16),
    adapter=_segmentation_adapter,
    batch=_segmentation_batch,
    task_losses=lambda student: ("loss_ce", "loss_aux") if student.get("aux_loss") else ("loss_ce",),
    description=(
        "Each builder of `torchvision.models.list_models(torchvision.models.segmentation)`, given to",
        "`SegmentationDistiller` by name (`dict(backbone=BUILDER)`, with",
        "`aux_loss=True` where torchvision's builder takes it) as the teacher of a small fixed student, then as the",
        "student of a small fixed teacher (the partner: `dict(backbone='timm/resnet18', channels=16)`, a DeepLabV3",
        f"over a timm ResNet18). Random init, CPU, one thread, {TASK_NUM_CLASSES} classes, "
        f"`ofd.input_size=(3, {SEGMENTATION_SIZE}, {SEGMENTATION_SIZE})`, the adapter's",
        f"default taps and alpha; a batch of two {SEGMENTATION_SIZE} px images with random labels. One SGD step "
        "(lr 0.01, momentum 0.9)",
        "on the adapter's losses, summed by its `parse_losses`; a student with an aux head must give `loss_aux`.",
    ),
)

TASK_SECTIONS: Tuple[TaskSection, ...] = (DETECTION, SEGMENTATION)


def check_task(section: TaskSection, builder: str, role: str, record: Dict) -> Dict:
    """One training step of ``section``'s adapter with ``builder`` as ``role`` and the fixed partner on
    the other side, filling ``record`` as it goes (a failure keeps its stage)."""
    import torch

    record["stage"] = "build"
    torch.manual_seed(0)
    spec = section.spec(builder)
    teacher, student = (spec, section.partner) if role == "teacher" else (section.partner, spec)
    record.update(teacher=_spec_text(teacher), student=_spec_text(student))
    model = section.adapter(teacher, student).train()
    before = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}

    record["stage"] = "step"
    data = model.data_preprocessor(section.batch(), True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    optimizer.zero_grad()
    losses = model(**data, mode="loss")
    record["losses"] = {k: float(v.detach()) for k, v in losses.items()}
    finite = all(math.isfinite(v) for v in record["losses"].values())
    if finite:
        total, _ = model.parse_losses(losses)
        total.backward()
    backbone = [(n, p) for n, p in model.student.backbone.named_parameters() if p.requires_grad]
    with_grad = [n for n, p in backbone if p.grad is not None]
    bad_grad = [n for n, p in backbone if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    nonzero = [n for n, p in backbone if p.grad is not None and bool(p.grad.ne(0).any())]
    stem = backbone[0][0] if backbone else None
    if finite:
        optimizer.step()
    after = model.teacher.state_dict()
    expected = ("loss_ofd",) + tuple(section.task_losses(student))
    record.update(backbone_params=len(backbone), with_grad=len(with_grad), nonzero_grad=len(nonzero), stem=stem,
                  teacher_unchanged=list(after) == list(before) and all(torch.equal(after[k], v)
                                                                        for k, v in before.items()))
    checks = dict(finite_losses=finite, loss_ofd="loss_ofd" in losses,
                  task_losses=all(k in losses for k in expected) and len(losses) > 1,
                  backbone_grads=bool(nonzero) and not bad_grad, stem_grad=stem in nonzero,
                  teacher_unchanged=record["teacher_unchanged"])
    failed = [k for k, ok in checks.items() if not ok]
    record["status"] = "fail" if failed else "ok"
    if failed:
        missing = [k for k in expected if k not in losses]
        record["reason"] = "check failed: " + ", ".join(failed) + (
            f" (missing: {missing})" if missing else "") + (f" (non-finite grad: {bad_grad[:3]})" if bad_grad else "")
    return record


def _task_key(r) -> Tuple[str, str]:
    return (r["builder"], r["role"]) if isinstance(r, dict) else tuple(r)


def read_task_cache(cache: Path) -> List[Dict]:
    return _read_keyed(cache, _task_key)


def _spec_text(spec: Dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def run_task(section: TaskSection, cache: Path, timeout: int, retry_failed: bool = False,
             builders: Optional[Sequence[str]] = None) -> None:
    """Run ``section`` for ``builders`` (default: all of its builders), as teacher and as student, the
    (builder, role) checks not yet in ``cache`` (with ``retry_failed``, its failures too)."""
    items = [(builder, role) for builder in (section.builders() if builders is None else builders) for role in ROLES]
    run_in_process(items, cache, timeout, retry_failed, f"{section.name} checks", _task_key,
                   lambda item: dict(builder=item[0], role=item[1]),
                   lambda item, record: check_task(section, item[0], item[1], record),
                   lambda r: f"{section.name} {r['builder']} as {r['role']}")


def task_report(section: TaskSection, records: List[Dict]) -> List[str]:
    """``section``'s part of the report, from its cache: counts, what is checked, one row per (builder, role)."""
    order = {b: i for i, b in enumerate(section.builders())}
    records = sorted(records, key=lambda r: (order.get(r["builder"], len(order)), r["builder"], ROLES.index(r["role"])))
    ok = [r for r in records if r["status"] == "ok"]
    by_role = ", ".join(f"as {role} {sum(r['role'] == role for r in ok)}/{sum(r['role'] == role for r in records)}"
                        for role in ROLES)
    cache = f"docs/zoo_{section.name}.jsonl"
    lines = [f"## {section.title} ({len(ok)}/{len(records)} pass)", "",
             f"Generated by `python tools/zoo_sweep.py --{section.name}-only` (cache: `{cache}`). Passing {by_role}.",
             "", *section.description,
             "A check passes if every loss is finite, `loss_ofd` and the task's own losses are there, every",
             "gradient of the student's backbone (`model.student.backbone`) is finite, some non-zero, the first",
             "trainable one (the stem) among them, and the teacher's state_dict is unchanged after the step. A builder",
             "the adapter cannot build is a failure at *build*, with the adapter's own error as the reason. A zero",
             "gradient is expected behind a BatchNorm initialised to zero (timm's last BN of each residual block).", "",
             "| builder | as | teacher | student | result | losses | student backbone grads (non-zero) / trainable "
             "| seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        result = "ok" if r["status"] == "ok" else f"fail at {r.get('stage', '')}: {r.get('reason', '')}"
        losses = ", ".join(f"{k.removeprefix('loss_')} {v:.3g}" for k, v in r.get("losses", {}).items())
        grads = f"{r['with_grad']} ({r['nonzero_grad']}) / {r['backbone_params']}" if "backbone_params" in r else ""
        cells = [r["builder"], r["role"], r.get("teacher", ""), r.get("student", ""), result, losses, grads, str(r.get("seconds", ""))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


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
    parser.add_argument("--pairs-only", action="store_true", help="run only the teacher -> student pairs")
    parser.add_argument("--pairs-cache", type=Path, default=Path("docs/zoo_pairs.jsonl"))
    parser.add_argument("--pair-timeout", type=int, default=900, help="seconds per pair")
    for section in TASK_SECTIONS:
        parser.add_argument(f"--{section.name}-only", action="store_true",
                            help=f"run only the {section.name} section (combines with the other --*-only flags)")
        parser.add_argument(f"--{section.name}-cache", type=Path, default=Path(f"docs/zoo_{section.name}.jsonl"))
    parser.add_argument("--task-timeout", type=int, default=600,
                        help="seconds per (builder, role) check of the detection and segmentation sections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    only = {name for name in ["pairs"] + [s.name for s in TASK_SECTIONS] if getattr(args, f"{name}_only")}
    runs = lambda part: not args.report_only and (not only or part in only)  # noqa: E731
    if runs("sweep"):
        names = list_architectures(args.zoo)
        if args.filter:
            names = [n for n in names if args.filter in n[1]]
        names = names[: args.limit]
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        run_sweep(names, args.cache, args.workers, args.max_params, args.max_input, args.timeout, args.retry_failed)
    if runs("pairs"):
        run_pairs(PAIRS, args.pairs_cache, args.pair_timeout, args.retry_failed)
    for section in TASK_SECTIONS:
        if runs(section.name):
            run_task(section, getattr(args, f"{section.name}_cache"), args.task_timeout, args.retry_failed)
    task_records = [(section, read_task_cache(getattr(args, f"{section.name}_cache"))) for section in TASK_SECTIONS]
    write_report(read_cache(args.cache), args.out, args.max_params, read_pairs_cache(args.pairs_cache), task_records)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
