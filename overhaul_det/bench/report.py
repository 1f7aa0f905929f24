"""The benchmark's result as a plain-text table: median times, ratios, memory, pass/fail per target."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["format_table"]


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.1f} MiB"


def _verdict(check: Dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[check["pass"]]


def format_table(result: Dict[str, Any]) -> str:
    """The result as a plain-text table (median times, ratios, memory, pass/fail per target)."""
    cfg, median, checks = result["config"], result["median_s"], result["checks"]
    labels = {
        "student_step": "(a) student train step",
        "teacher_forward": "(b) teacher forward to last tap (no_grad), float32",
        "regressor_step": "(c) regressors + loss fwd/bwd/step",
        "ofd_step": "(d) full OFD step, float32 teacher",
        "loss_naive": f"ofd_loss_reference fwd+bwd {tuple(cfg['loss_shape'])}",
        "loss_fast": "ofd_loss fwd+bwd (same tensors)",
        "plain_forward": f"{cfg['rewrite_model']} eval forward, plain",
        "rewritten_forward": f"{cfg['rewrite_model']} eval forward, taps attached",
        "teacher_forward_bfloat16": "(b') teacher forward, bfloat16 teacher",
        "ofd_step_bfloat16": "(d') full OFD step, bfloat16 teacher",
        "reference_step": "(r) original OFD code's step (teacher train+autograd)",
    }
    task = "" if cfg["task"] == "classification" else f"{cfg['task']}: "
    lines = [f"{task}{cfg['teacher']} -> {cfg['student']}, batch {cfg['batch_size']}, {cfg['input_size']} px, "
             f"device {cfg['device']}, amp {cfg['amp']}, channels_last {cfg['channels_last']}, "
             f"median of {cfg['repeats']} (warm-up {cfg['warmup']}), {result['environment']['torch_threads']} threads",
             f"{'measurement':<56} {'median':>12}"]
    lines += [f"{labels[name]:<56} {median[name] * 1e3:>9.1f} ms" for name in result["order"]]
    lines.append(f"{'check':<56} {'value':>12} {'target':>12}  result")
    ratio_rows = [("overhead d/(a+b+c)", "overhead", "{:.3f}", "<= {:.2f}"),
                  ("ofd_loss time / reference time", "loss_time_ratio", "{:.3f}", "<= {:.2f}"),
                  ("taps-attached forward, added time", "rewrite_added", "{:+.1%}", "<= {:.0%}"),
                  ("OFD step, float32 teacher / original OFD step (d/r)", "float32_reference_ratio", "{:.3f}", "-"),
                  ("OFD step, bfloat16 teacher / original OFD step (d'/r)", "reference_ratio", "{:.3f}", "<= {:.2f}"),
                  ("OFD step, bfloat16 teacher / student step (d'/a)", "student_ratio", "{:.3f}", "<= {:.2f}"),
                  ("teacher forward float32 / bfloat16 (b/b')", "bfloat16_teacher_speedup", "{:.3f}", "-")]
    for label, key, fmt, target in ratio_rows:
        if key not in checks:
            continue
        check = checks[key]
        value, limit = fmt.format(check["value"]), "-" if check["limit"] is None else target.format(check["limit"])
        lines.append(f"{label:<56} {value:>12} {limit:>12}  {_verdict(check)}")
    lines += _memory_lines(result)
    return "\n".join(lines)


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

