"""The benchmark's result as a plain-text table: median times, ratios, memory, pass/fail per target, profiles."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ["format_table"]


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.1f} MiB"


_FREED_MEMORY = {"keep": "kept by the process (no step pays page faults for memory another freed)",
                 "return": "returned to the kernel (glibc's default)", None: "not recorded"}


def _count(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _verdict(check: Dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[check["pass"]]


def _step_labels(cfg: Dict[str, Any]) -> Dict[str, str]:
    labels = {
        "student_step": "(a) student train step",
        "teacher_forward": "(b) teacher forward to last tap (no_grad), float32",
        "regressor_step": "(c) regressors + loss fwd/bwd/step",
        "ofd_step": "(d) full OFD step, float32 teacher",
        "loss_naive": f"ofd_loss_reference fwd+bwd {tuple(cfg['loss_shape'])}",
        "loss_fast": "ofd_loss fwd+bwd (same tensors)",
        "plain_forward": f"{cfg['rewrite_model']} eval forward, plain",
        "rewritten_forward": f"{cfg['rewrite_model']} eval forward, taps attached",
        "reference_step": "(r) original OFD code's step (teacher train+autograd)",
        "student_step_channels_last": "(a) student train step, channels-last student",
        "ofd_step_channels_last": "(d) full OFD step, channels-last student",
        "student_step_compiled": "(a) student train step, torch.compile",
        "ofd_step_compiled": "(d) full OFD step, torch.compile'd student",
    }
    if cfg["task"] != "classification":  # the adapter's teacher, in its teacher_precision='auto'
        labels.update(teacher_forward="(b) teacher forward to last tap (no_grad)", ofd_step="(d) full OFD step")
    for p in cfg["teacher_precisions"]:
        labels[f"teacher_forward_{p}"] = f"(b') teacher forward, {p} teacher"
        labels[f"ofd_step_{p}"] = f"(d') full OFD step, {p} teacher"
        labels[f"ofd_step_{p}_channels_last"] = f"(d') OFD step, {p} teacher, channels-last student"
    return labels


def _ratio_rows(checks: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """(label, check key, value format, target format) of each ratio, in table order."""
    rows = [("overhead d/(a+b+c)", "overhead", "{:.3f}", "<= {:.2f}"),
            ("ofd_loss time / reference time", "loss_time_ratio", "{:.3f}", "<= {:.2f}"),
            ("taps-attached forward, added time", "rewrite_added", "{:+.1%}", "<= {:.0%}"),
            ("OFD step, float32 teacher / original OFD step (d/r)", "float32_reference_ratio", "{:.3f}", "-")]
    for key in [k for k in checks if k.endswith("reference_ratio") and "precision" in checks[k]]:
        p, prefix = checks[key]["precision"], key[:-len("reference_ratio")]
        rows += [(f"OFD step, {p} teacher / original OFD step (d'/r)", key, "{:.3f}", "<= {:.2f}"),
                 (f"OFD step, {p} teacher / student step (d'/a)", prefix + "student_ratio", "{:.3f}", "<= {:.2f}")]
    for key in [k for k in checks if k.endswith("_channels_last_reference_ratio")]:
        p = key.split("_")[0]
        rows += [(f"channels-last student, {p} teacher: d'/r", key, "{:.3f}", "-"),
                 (f"channels-last student, {p} teacher: d'/(its a)", f"{p}_channels_last_student_ratio",
                  "{:.3f}", "-")]
    for key in checks:
        if key.endswith("_teacher_speedup"):
            rows.append((f"teacher forward float32 / {key.split('_')[0]} (b/b')", key, "{:.3f}", "-"))
        elif key.endswith("_speedup"):
            variant = key[:-len("_speedup")]
            how = "channels-last student" if variant.endswith("_channels_last") else "torch.compile"
            plain = variant.replace("_channels_last", "").replace("_compiled", "")
            rows.append((f"speed-up, {how}: {plain}", key, "{:.3f}", "-"))
    return rows


def format_table(result: Dict[str, Any]) -> str:
    """The result as a plain-text table (median times, ratios, compile times, memory, pass/fail per target)."""
    cfg, median, checks, env = result["config"], result["median_s"], result["checks"], result["environment"]
    labels = _step_labels(cfg)
    task = "" if cfg["task"] == "classification" else f"{cfg['task']}: "
    lines = [f"{task}{cfg['teacher']} -> {cfg['student']}, batch {cfg['batch_size']}, {cfg['input_size']} px, "
             f"device {cfg['device']}, amp {cfg['amp']}, channels_last {cfg['channels_last']}, "
             f"median of {cfg['repeats']} (warm-up {cfg['warmup']}), {env['torch_threads']} threads on "
             f"{env.get('device_name') or env.get('cpu', 'an unrecorded CPU')}",
             f"freed memory: {_FREED_MEMORY[env.get('freed_memory')]}",
             *([f"teacher in (b), (d): {', '.join(result.get('teacher_runs_in', {}).values()) or 'not recorded'} "
                "(the adapter's teacher_precision='auto')"] if cfg["task"] != "classification" else []),
             f"{'measurement':<56} {'median':>12} {'page faults':>12}"]
    faults = result.get("median_page_faults", {})
    lines += [f"{labels[name]:<56} {median[name] * 1e3:>9.1f} ms {_count(faults.get(name)):>12}"
              for name in result["order"]]
    lines.append(f"{'check':<56} {'value':>12} {'target':>12}  result")
    for label, key, fmt, target in _ratio_rows(checks):
        if key not in checks:
            continue
        check = checks[key]
        value, limit = fmt.format(check["value"]), "-" if check["limit"] is None else target.format(check["limit"])
        lines.append(f"{label:<56} {value:>12} {limit:>12}  {_verdict(check)}")
    lines += [f"{'first call, compiling: ' + name:<56} {seconds:>10.1f} s"
              for name, seconds in result["compile_s"].items()]
    lines += [f"torch.compile failed for {name}: {reason}" for name, reason in result["compile_errors"].items()]
    lines += _memory_lines(result)
    lines += _profile_lines(result.get("profiles", {}), labels)
    return "\n".join(lines)


def _profile_lines(profiles: Dict[str, Dict[str, Any]], labels: Dict[str, str]) -> List[str]:
    """Each profiled step's ops by self CPU time, per call of the step."""
    lines = []
    for name, profile in profiles.items():
        lines += [f"profile of {labels.get(name, name)}: {profile['self_cpu_ms']:.1f} ms self CPU time a call "
                  f"({profile['calls']} calls under torch.profiler)",
                  f"  {'op':<54} {'self CPU':>12} {'share':>7} {'calls':>7}"
                  + (f" {'self device':>12}" if any("self_device_ms" in op for op in profile["ops"]) else "")]
        for op in profile["ops"]:
            device = f" {op['self_device_ms']:>9.2f} ms" if "self_device_ms" in op else ""
            lines.append(f"  {op['name'][:54]:<54} {op['self_cpu_ms']:>9.2f} ms {op['share']:>7.1%} "
                         f"{op['count']:>7.1f}{device}")
    return lines


def _memory_lines(result: Dict[str, Any]) -> List[str]:
    memory, sizes = result["memory"], result["activations"]
    lines = [f"{'teacher largest activation':<56} {_mib(sizes['teacher_largest_activation_bytes']):>12}",
             f"{'teacher tap tensors (all taps)':<56} {_mib(sizes['teacher_tap_bytes']):>12}",
             f"{'regressor activations (all taps)':<56} {_mib(sizes['regressor_activation_bytes']):>12}"]
    if memory is None:
        return lines + ["peak memory: not measured"]
    checks = result["checks"]
    for key, check_name, label in (("peak_bytes", "ofd_peak_memory_bytes", "above RSS after construction"),
                                   ("step_peak_bytes", "ofd_step_peak_memory_bytes", "steady-state step")):
        check = checks[check_name]
        limit = "-" if check["limit"] is None else "<= " + _mib(check["limit"])
        lines += [f"{'peak memory (a) student step, ' + label:<56} {_mib(memory['student_step'][key]):>12}",
                  f"{'peak memory (d) OFD step, ' + label:<56} {_mib(check['value']):>12} {limit:>12}  "
                  f"{_verdict(check)}"]
    if "loss_extra_bytes" in memory:
        lines += [f"{'peak memory ofd_loss_reference fwd+bwd':<56} {_mib(memory['loss_naive']['peak_bytes']):>12}",
                  f"{'peak memory ofd_loss fwd+bwd':<56} {_mib(memory['loss_fast']['peak_bytes']):>12}",
                  f"{'ofd_loss extra memory vs reference':<56} {_mib(memory['loss_extra_bytes']):>12}"]
    return lines + [f"memory method: {memory['ofd_step']['method']}"]

