"""The benchmark harness runs and reports every field, each ratio in its check, each step in the table.

No timing is asserted: timings depend on the machine.
"""
import functools
import json
import math

import pytest
import torch

from overhaul_det import FeatureDistiller
from tools.bench import BenchConfig, build_model, format_table, main, run_benchmark
from tools.bench.cli import build_parser, config_from_args
from tools.bench.config import TASK_DEFAULTS, TIMED, check_teacher_precision, validate
from tools.bench.memory import measure_memory_subprocess
from tools.bench.runtime import Runtime
from tools.bench.tasks import build_task_model
from overhaul_det.cpuinfo import cpu_model
from overhaul_det.teacher_mode import describe_teacher_mode, resolve_teacher_mode
from conftest import TINY_BENCH as TINY

# timm's test models: a compile of them takes seconds where a torchvision student's takes minutes
TIMM_TINY = {**TINY, "teacher": "timm/test_resnet", "student": "timm/test_efficientnet"}


@pytest.fixture(scope="module")
def tiny_result():
    return run_benchmark(BenchConfig(**TINY))


def test_result_has_every_measurement(tiny_result):
    assert tiny_result["order"] == list(TIMED)
    for name in TIMED:
        assert len(tiny_result["times_s"][name]) == 1
        assert tiny_result["median_s"][name] > 0
    # the checks hold the values the result reports (the table and the JSON read the same numbers)
    for key in ("overhead", "loss_time_ratio", "rewrite_added", "reference_ratio", "student_ratio"):
        assert tiny_result["checks"][key]["value"] == pytest.approx(tiny_result[key])
        assert math.isfinite(tiny_result[key])
    sizes = tiny_result["activations"]
    assert sizes["teacher_largest_activation_bytes"] >= 2 * 64 * 32 * 32 * 4  # resnet18 stem output
    assert sizes["teacher_tap_bytes"] > 0 and sizes["regressor_activation_bytes"] > 0
    assert tiny_result["memory"] is None
    assert set(tiny_result["checks"]) == {"overhead", "loss_time_ratio", "rewrite_added", "reference_ratio",
                                          "student_ratio", "bfloat16_teacher_speedup", "float32_reference_ratio"}
    assert tiny_result["checks"]["reference_ratio"]["precision"] == "bfloat16"
    assert tiny_result["compile_s"] == {} and tiny_result["compile_errors"] == {}
    assert tiny_result["profiles"] == {}  # no profile unless asked
    json.dumps(tiny_result)


def test_float16_teacher_and_channels_last_student_add_their_steps_and_ratios():
    result = run_benchmark(BenchConfig(**TIMM_TINY, teacher_precisions=("float16",), student_channels_last=True))
    assert result["order"] == [*TIMED[:8], "teacher_forward_float16", "ofd_step_float16", "reference_step",
                               "student_step_channels_last", "ofd_step_channels_last",
                               "ofd_step_float16_channels_last"]
    median, checks = result["median_s"], result["checks"]
    assert all(math.isfinite(t) and t > 0 for t in median.values())
    # without bfloat16 the targets are taken on the fastest reduced precision measured, and say which
    assert checks["reference_ratio"]["precision"] == "float16"
    assert {"float16_teacher_speedup", "student_step_channels_last_speedup", "ofd_step_channels_last_speedup",
            "ofd_step_float16_channels_last_speedup", "float16_channels_last_reference_ratio",
            "float16_channels_last_student_ratio"} <= set(checks)
    assert all(math.isfinite(checks[name]["value"]) and checks[name]["value"] > 0 for name in (
        "float16_teacher_speedup", "student_step_channels_last_speedup", "ofd_step_channels_last_speedup",
        "float16_channels_last_reference_ratio", "float16_channels_last_student_ratio"))
    table = format_table(result)
    assert result["environment"]["cpu"] == cpu_model() and f"threads on {cpu_model()}" in table  # which CPU timed it
    for label in ("(d') full OFD step, float16 teacher", "OFD step, float16 teacher / original OFD step (d'/r)",
                  "(d) full OFD step, channels-last student", "speed-up, channels-last student: ofd_step ",
                  "(d') OFD step, float16 teacher, channels-last student",
                  "speed-up, channels-last student: ofd_step_float16", "channels-last student, float16 teacher: d'/r",
                  "channels-last student, float16 teacher: d'/(its a)"):
        assert label in table


def test_every_reduced_precision_gets_its_ratios_and_bfloat16_holds_the_targets():
    result = run_benchmark(BenchConfig(**TIMM_TINY, teacher_precisions=("float16", "bfloat16"), amp="bf16"))
    median, checks = result["median_s"], result["checks"]
    assert result["order"][8:12] == ["teacher_forward_float16", "ofd_step_float16", "teacher_forward_bfloat16",
                                     "ofd_step_bfloat16"]
    assert all(math.isfinite(t) and t > 0 for t in median.values())
    assert checks["reference_ratio"]["precision"] == "bfloat16"
    # the float16 ratios are reported beside bfloat16's, without a target of their own
    assert {k: checks["float16_reference_ratio"][k] for k in ("limit", "pass", "precision")} == {
        "limit": None, "pass": None, "precision": "float16"}
    assert checks["float16_student_ratio"]["value"] > 0
    table = format_table(result)
    assert "OFD step, float16 teacher / student step (d'/a)" in table
    assert "OFD step, bfloat16 teacher / student step (d'/a)" in table


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_ofd_step_under_bf16_amp_runs_with_a_reduced_precision_teacher(precision):
    from tools.bench.runtime import Runtime

    torch.manual_seed(0)
    rt = Runtime(BenchConfig(**TIMM_TINY, amp="bf16"))
    distiller = FeatureDistiller(build_model("timm/test_resnet"), build_model("timm/test_efficientnet"),
                                 input_size=(64, 64), teacher_precision=precision).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    with rt.autocast():
        out, losses = distiller(x)
        loss = torch.nn.functional.cross_entropy(out, y) + losses["loss_ofd"]
    ofd = float(losses["loss_ofd"].detach())
    assert out.dtype == torch.bfloat16 and math.isfinite(ofd) and ofd > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in distiller.regressors.parameters() if p.grad is not None)


def test_new_options_reach_the_config():
    args = build_parser().parse_args(["--teacher-precisions", "bfloat16", "float16", "--student-channels-last",
                                      "--compile"])
    cfg = config_from_args(args)
    assert cfg.teacher_precisions == ("bfloat16", "float16") and cfg.student_channels_last and cfg.compile
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.teacher_precisions == ("bfloat16",) and not defaults.student_channels_last and not defaults.compile
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--teacher-precisions", "float32"])


@pytest.mark.parametrize("options, message", [
    (dict(teacher_precisions=("bfloat16", "bfloat16")), "each once"),
    (dict(teacher_precisions=()), "one or more"),
    (dict(teacher_precisions=("float64",)), "one or more"),
    (dict(student_channels_last=True, channels_last=True), "every step already is"),
    (dict(task="detection", compile=True), "classification pairs only"),
    (dict(task="segmentation", compile=True), "classification pairs only"),
])
def test_bad_new_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        validate(BenchConfig(**{**TINY, **options}))


def test_a_teacher_precision_the_device_cannot_run_is_a_clear_error(monkeypatch):
    import contextlib

    import overhaul_det.teacher_mode as teacher_mode

    check_teacher_precision("float16", torch.device("cpu"))  # this torch runs float16 autocast on CPU
    # a torch whose CPU autocast ignores float16 (as older ones did, with a warning)
    monkeypatch.setattr(teacher_mode, "teacher_autocast", lambda *args: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="float16 teacher cannot run on cpu.*computes in float32"):
        validate(BenchConfig(**TINY, teacher_precisions=("float16",)))


def test_a_compile_failure_is_recorded_not_raised(monkeypatch):
    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here\nsecond line")

    monkeypatch.setattr(torch.nn.Module, "compile",
                        functools.partialmethod(torch.nn.Module.compile, backend=failing_backend))
    torch._dynamo.reset()
    result = run_benchmark(BenchConfig(**TIMM_TINY, compile=True))
    torch._dynamo.reset()
    assert result["order"] == list(TIMED) and result["compile_s"] == {}
    assert set(result["compile_errors"]) == {"student_step_compiled", "ofd_step_compiled"}
    for reason in result["compile_errors"].values():
        assert "no C++ compiler here" in reason and "\n" not in reason
    assert "torch.compile failed for ofd_step_compiled: " in format_table(result)


def test_compiled_student_and_ofd_steps_are_timed_with_their_compile_time(monkeypatch):
    """Dynamo and AOT autograd over the taps-rewritten student, with the aot_eager backend: inductor's
    C++ compile of even these models takes about 2 minutes on 2 cores, which `python tools/benchmark.py
    --compile` spends and a unit test should not."""
    monkeypatch.setattr(torch.nn.Module, "compile",
                        functools.partialmethod(torch.nn.Module.compile, backend="aot_eager"))
    torch._dynamo.reset()
    result = run_benchmark(BenchConfig(**TIMM_TINY, compile=True))
    assert result["compile_errors"] == {}
    assert result["order"][-2:] == ["student_step_compiled", "ofd_step_compiled"]
    median = result["median_s"]
    for name in ("student_step_compiled", "ofd_step_compiled"):
        assert result["compile_s"][name] > 0 and math.isfinite(median[name])
        assert result["checks"][f"{name}_speedup"]["value"] == pytest.approx(
            median[name.replace("_compiled", "")] / median[name])
    table = format_table(result)
    assert "first call, compiling: ofd_step_compiled" in table and "(d) full OFD step, torch.compile'd student" in table


@pytest.mark.parametrize("teacher", ["resnet18", "swin"])
def test_reference_step_computes_the_same_loss_as_the_distiller(make_model, teacher):
    """Also for a pair whose layouts differ: a Swin teacher's channel-last maps against a CNN student."""
    import copy

    from overhaul_det import FeatureDistiller, attach_taps
    from tools.bench.runtime import reference_loss

    torch.manual_seed(0)
    teacher = (make_model("tv", "resnet18") if teacher == "resnet18" else
               make_model("timm", "swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                          drop_path_rate=0.0))  # the reference runs it in train mode
    distiller = FeatureDistiller(teacher, make_model("tv", "mobilenet_v3_large"),
                                 input_size=(3, 64, 64), alpha=1e-3).train()
    teacher = attach_taps(copy.deepcopy(distiller.teacher), distiller.teacher_taps).train().requires_grad_(True)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out, losses = distiller(x)
    ours = float(torch.nn.functional.cross_entropy(out, y) + losses["loss_ofd"])
    # same math, other kernels and summation order: float32 rounding (1.2e-4 measured)
    assert float(reference_loss(distiller, teacher, x, y)) == pytest.approx(ours, rel=1e-3)


def test_table_names_every_measurement(tiny_result):
    table = format_table(tiny_result)
    for label in ("(a) student train step", "(d) full OFD step", "overhead d/(a+b+c)", "peak memory: not measured"):
        assert label in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        validate(BenchConfig(device="cuda"))
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model name 'no_such_net'"):
        validate(BenchConfig(student="no_such_net"))
    with pytest.raises(ValueError, match=r"unknown model name 'resnet5'.*; did you mean torchvision/resnet50"):
        validate(BenchConfig(teacher="resnet5"))


def test_memory_is_measured_in_a_fresh_process():
    cfg = BenchConfig(**{**TINY, "loss_shape": (2, 16, 64, 64), "measure_memory": True})
    result = measure_memory_subprocess("loss_fast", cfg)
    assert result["peak_bytes"] > 0
    assert result["rss_after_build_bytes"] is None or result["rss_after_build_bytes"] > 0


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_task_pair_is_timed_and_reported_like_classification(task):
    cfg = BenchConfig(task=task, batch_size=2, input_size=64, repeats=1, warmup=0, measure_memory=False,
                      freed_memory="return")
    result = run_benchmark(cfg)
    assert result["order"] == list(TIMED[:4])
    for name in TIMED[:4]:
        assert math.isfinite(result["median_s"][name]) and result["median_s"][name] > 0
    assert math.isfinite(result["overhead"]) and result["overhead"] > 0
    assert set(result["checks"]) == {"overhead"}
    assert result["activations"]["teacher_largest_activation_bytes"] > 0
    table = format_table(result)
    assert table.startswith(f"{task}: {TASK_DEFAULTS[task]['teacher']} -> {TASK_DEFAULTS[task]['student']}, batch 2")
    assert "overhead d/(a+b+c)" in table and "ofd_loss" not in table
    mode = describe_teacher_mode(*resolve_teacher_mode("auto", "auto", torch.device("cpu"), torch.nn.Conv2d(1, 1, 1)))
    assert result["teacher_runs_in"] == {"cpu": mode}
    assert f"teacher in (b), (d): {mode} (the adapter's teacher_precision='auto')" in table
    assert "(b) teacher forward to last tap (no_grad)  " in table and "float32 teacher" not in table
    json.dumps(result)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_task_defaults_apply_unless_given(task):
    cfg = config_from_args(build_parser().parse_args(["--task", task]))
    assert {name: getattr(cfg, name) for name in TASK_DEFAULTS[task]} == TASK_DEFAULTS[task]
    assert config_from_args(build_parser().parse_args(["--task", task, "--batch-size", "3"])).batch_size == 3
    assert BenchConfig().batch_size == 8 and BenchConfig().teacher == "resnet50"


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_task_pair_times_its_channels_last_student(task):
    cfg = BenchConfig(task=task, batch_size=2, input_size=64, repeats=1, warmup=0, measure_memory=False,
                      freed_memory="return", student_channels_last=True)
    result = run_benchmark(cfg)
    assert result["order"] == [*TIMED[:4], "student_step_channels_last", "ofd_step_channels_last"]
    median, checks = result["median_s"], result["checks"]
    for name in ("student_step", "ofd_step"):
        assert checks[f"{name}_channels_last_speedup"]["value"] == pytest.approx(
            median[name] / median[f"{name}_channels_last"])
    model = build_task_model(cfg, Runtime(cfg), ofd=True, student_channels_last=True).model
    assert any(not p.is_contiguous() for p in model.student.parameters() if p.dim() == 4)
    assert all(p.is_contiguous() for p in model.teacher.parameters())
