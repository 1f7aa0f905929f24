"""--profile: a timed step's ops under torch.profiler, in the result and the table; a step the run does
not time is a clear error before anything is timed."""
import pytest

from tools.bench import BenchConfig, format_table, main, run_benchmark
from tools.bench.cli import build_parser, config_from_args
from tools.bench.config import validate
from tools.bench.profile import UnknownStepError
from conftest import TINY_BENCH as TINY


@pytest.fixture(scope="module")
def profiled():
    return run_benchmark(BenchConfig(**TINY, profile=("regressor_step",), profile_calls=2))


def test_a_profiled_step_lists_its_ops_by_self_time(profiled):
    profile = profiled["profiles"]["regressor_step"]
    assert list(profiled["profiles"]) == ["regressor_step"] and profile["calls"] == 2
    ops = profile["ops"]
    # the regressors' 1x1 convolutions, backward (aten::convolution_backward, or _slow_conv2d_backward when
    # the tests run with oneDNN off): one per tap of mobilenet_v3_small in each call
    conv_backward = [op for op in ops if "conv" in op["name"] and "backward" in op["name"]]
    assert len(conv_backward) == 1 and conv_backward[0]["count"] == 4
    times = [op["self_cpu_ms"] for op in ops]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert sum(op["share"] for op in ops) <= 1 + 1e-9
    assert profile["self_cpu_ms"] >= sum(times) * (1 - 1e-9)


def test_the_table_shows_each_profile(profiled):
    table = format_table(profiled)
    assert "profile of (c) regressors + loss fwd/bwd/step" in table
    assert all(op["name"][:54] in table for op in profiled["profiles"]["regressor_step"]["ops"])


def test_a_step_the_run_does_not_time_is_named_with_the_ones_it_does():
    with pytest.raises(UnknownStepError, match=r"--profile regresor_step: this run times no such step \(did you "
                                                r"mean regressor_step\?\); its steps are student_step, "
                                                r"teacher_forward, regressor_step"):
        run_benchmark(BenchConfig(**TINY, profile=("regresor_step",)))


def test_the_command_line_reports_a_misspelt_step_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--teacher", "resnet18", "--student", "mobilenet_v3_small", "--batch-size", "2", "--input-size", "64",
              "--repeats", "1", "--warmup", "0", "--rewrite-model", "resnet18", "--loss-shape", "2", "16", "8", "8",
              "--no-memory", "--freed-memory", "return", "--profile", "ofd_stp"])
    assert exit_info.value.code == 2
    assert "--profile ofd_stp: this run times no such step" in capsys.readouterr().err


def test_profile_options_reach_the_config_and_bad_counts_are_refused():
    cfg = config_from_args(build_parser().parse_args(["--profile", "regressor_step", "ofd_step",
                                                      "--profile-calls", "3"]))
    assert cfg.profile == ("regressor_step", "ofd_step") and cfg.profile_calls == 3
    with pytest.raises(ValueError, match="profile_calls >= 1"):
        validate(BenchConfig(**TINY, profile_calls=0))
