"""The reproduce report: collected from finished runs, mean ± std per method, table and plot."""
from __future__ import annotations

import json
import re
import statistics
import sys
import warnings
from pathlib import Path

import pytest
import torch

from overhaul_det import FeatureDistiller
from tools import reproduce
from tools.reproduce import plots, runs
from tools.reproduce.methods import alpha_runs, check_methods
from tools.reproduce.report import markdown


def _fake_run(root, method, seed, final, threads=1):
    folder = root / "classification" / method.replace(" ", "_").replace("+", "_") / f"threads{threads}" / f"seed{seed}"
    folder.mkdir(parents=True)
    result = dict(task="classification", method=method, seed=seed, threads=threads, metric="accuracy/top1",
                  final=final, history=[final - 10, final], seconds=10.0 + seed, overrides={},
                  provenance=dict(commit="abc1234", code="c0de", torch="2.x", cpu="Some CPU"))
    (folder / "result.json").write_text(json.dumps(result))


def test_report_from_finished_runs(tmp_path):
    for seed, (b, o) in enumerate([(75.0, 82.0), (76.0, 81.0), (74.0, 83.0)]):
        _fake_run(tmp_path, "baseline", seed, b)
        _fake_run(tmp_path, "ofd", seed, o)
    _fake_run(tmp_path, "ofd, teacher BN eval", 0, 80.0)
    report = reproduce.collect_task("classification", tmp_path)
    assert list(report["summary"]) == ["baseline", "ofd", "ofd, teacher BN eval"]
    assert report["summary"]["ofd"]["mean"] == pytest.approx(82.0)
    assert report["summary"]["baseline"]["std"] == pytest.approx(statistics.stdev([75.0, 76.0, 74.0]))
    assert report["summary"]["ofd, teacher BN eval"]["std"] == 0.0
    table = markdown(report, "python tools/reproduce.py classification", "plot.png")
    assert "| ofd | 82.00 ± 1.00 | 82.00 (s0/1t), 81.00 (s1/1t), 83.00 (s2/1t) | - | 11 |" in table
    assert "| 1 | 1 | 76.00 | 81.00 | +5.00 |" in table  # baseline and OFD run by run
    assert "commit `abc1234` (code `c0de`, torch 2.x, CPU Some CPU)" in table
    plot = tmp_path / "plot.png"
    plots.plot_curves("classification", report["results"], report["metric"], plot)
    assert plot.stat().st_size > 1000


def test_the_report_names_a_command_that_runs_as_pasted(tmp_path, capsys):
    _fake_run(tmp_path, "ofd, teacher BN eval", 0, 80.0)
    argv = ["classification", "--report-only", "--methods", "ofd, teacher BN eval", "--work-dir", str(tmp_path),
            "--out", str(tmp_path / "out")]
    assert reproduce.main(argv) == 0
    written = (tmp_path / "out" / "results_classification.md").read_text()
    assert f"`python tools/reproduce.py classification --report-only --methods 'ofd, teacher BN eval' --work-dir {tmp_path}" \
        in written  # the method name quoted, as a shell needs it
    assert "80.00" in capsys.readouterr().out


def test_the_report_goes_into_the_work_dir_unless_out_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "work_dirs" / "seeds12"
    _fake_run(sweep, "baseline", 12, 76.0)
    assert reproduce.main(["classification", "--report-only", "--work-dir", str(sweep)]) == 0
    assert "76.00 (s12/1t)" in (sweep / "results_classification.md").read_text()
    assert json.loads((sweep / "results_classification.json").read_text())["results"][0]["final"] == 76.0
    assert not (tmp_path / "docs").exists()
    _fake_run(tmp_path / "work_dirs" / "reproduce", "baseline", 0, 75.0)
    assert reproduce.main(["classification", "--report-only"]) == 0  # the default work dir keeps its own report
    assert "75.00 (s0/1t)" in (tmp_path / "work_dirs" / "reproduce" / "results_classification.md").read_text()
    results = tmp_path / "docs" / "results"
    assert reproduce.main(["classification", "--report-only", "--out", str(results)]) == 0
    assert sorted(p.name for p in results.iterdir()) == ["results.md", "results_classification.json",
                                                         "results_classification.md", "results_classification.png"]


def test_ofd_with_two_teacher_precisions_gets_a_run_by_run_plot(tmp_path):
    for seed in (0, 1):
        _fake_run(tmp_path, "baseline", seed, 75.0 + seed)
        _fake_run(tmp_path, "ofd, float32 teacher", seed, 81.0 + seed)
    out = tmp_path / "out"
    reproduce.main(["classification", "--report-only", "--work-dir", str(tmp_path), "--out", str(out)])
    assert not (out / "results_classification_precision.png").exists()  # one precision: nothing to set side by side
    _fake_run(tmp_path, "ofd, bfloat16 teacher", 0, 80.0)
    reproduce.main(["classification", "--report-only", "--work-dir", str(tmp_path), "--out", str(out)])
    assert (out / "results_classification_precision.png").stat().st_size > 1000
    assert "(results_classification_precision.png)" in (out / "results_classification.md").read_text()
    _fake_run(tmp_path, "ofd, bfloat16 teacher", 1, 83.0)
    reproduce.main(["classification", "--report-only", "--work-dir", str(tmp_path), "--out", str(out)])
    assert ("ofd, bfloat16 teacher minus ofd, float32 teacher, run by run: +0.00 ± 1.41 over 2 runs, higher on 1."
            in (out / "results_classification.md").read_text())  # -1 on seed 0, +1 on seed 1; one run a seed
    _fake_run(tmp_path, "ofd, float32 teacher", 0, 81.0, threads=2)
    _fake_run(tmp_path, "ofd, bfloat16 teacher", 0, 84.0, threads=2)
    reproduce.main(["classification", "--report-only", "--work-dir", str(tmp_path), "--out", str(out)])
    assert ("run by run: +1.00 ± 2.00 over 3 runs, higher on 2; by seed: +1.00 ± 0.00 over 2 seeds, higher on 2."
            in (out / "results_classification.md").read_text())  # seed 0: (-1 + 3) / 2


def test_teacher_precisions_get_a_paired_t_test_over_seeds(tmp_path):
    for seed, difference in enumerate([1.0, 2.0, 3.0]):
        _fake_run(tmp_path, "baseline", seed, 75.0)
        _fake_run(tmp_path, "ofd, float32 teacher", seed, 80.0)
        _fake_run(tmp_path, "ofd, bfloat16 teacher", seed, 80.0 + difference)
    table = markdown(reproduce.collect_task("classification", tmp_path), "python tools/reproduce.py", "plot.png")
    # t = 2 / (1 / sqrt 3); with 2 df, P(|T| > t) = 1 - t / sqrt(2 + t^2) = 0.074 and the 0.975 quantile is 4.303
    assert ("run by run: +2.00 ± 1.00 over 3 runs, higher on 3; over seeds, t = +3.46 (2 df), two-sided p = 0.074, "
            "95% interval -0.48 to +4.48." in table)


def test_report_without_runs_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python tools/reproduce.py detection"):
        reproduce.collect_task("detection", tmp_path)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kd"):
        reproduce.run_task("detection", 1, tmp_path, None, False, methods=["kd"])


FINGERPRINTS = {"baseline": "fp-baseline", "ofd": "fp-ofd"}


@pytest.fixture(autouse=True)
def _fixed_fingerprints(monkeypatch):
    """Today's fingerprints, as ``tools/fingerprint.py`` would compute them (tests train no fingerprint)."""
    monkeypatch.setattr(runs, "current_fingerprints", lambda task, root, path=None: dict(FINGERPRINTS))


def _prints(known=(), **current):
    return runs._Fingerprints({**FINGERPRINTS, **current}, list(known))


def _fake_training(calls):
    """Stands in for the training subprocess: records the call, writes a one-epoch scalar log."""
    def run(command, log_path, threads):
        calls.append((command, str(threads)))
        log_path.write_text("2026-11-30 00:00:00,000 INFO teacher ResNet on cpu runs in bfloat16, channels-last "
                            "(teacher_precision='auto')\n")
        work_dir = command[command.index("--work-dir") + 1]
        log = Path(work_dir) / "20261130_000000" / "vis_data" / "scalars.json"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps({"accuracy/top1": 70.0 + len(calls)}) + "\n")
    return run


def test_a_run_is_reused_only_while_its_stamp_holds(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    first = runs._run("classification", "ofd", {}, 0, 1, tmp_path, epochs=1, fingerprints=_prints())
    assert calls[0][1] == "1" and first["threads"] == 1 and first["final"] == 71.0
    assert set(first["provenance"]) == {"commit", "fingerprint", "config", "weights", "threads", "torch", "cpu"}
    assert first["provenance"]["fingerprint"] == "fp-ofd"
    assert first["teacher"] == "bfloat16, channels-last"  # what 'auto' resolved to, from the distiller's log line
    assert runs._run("classification", "ofd", {}, 0, 1, tmp_path, epochs=1, fingerprints=_prints()) == first  # reused
    assert len(calls) == 1

    result_file = tmp_path / "classification" / "ofd" / "threads1" / "seed0" / "result.json"
    recorded = json.loads(result_file.read_text())
    recorded["provenance"]["cpu"] = "another CPU"
    result_file.write_text(json.dumps(recorded))
    again = runs._run("classification", "ofd", {}, 0, 1, tmp_path, epochs=1, fingerprints=_prints())  # another CPU: rerun
    assert len(calls) == 2 and again["final"] == 72.0

    runs._run("classification", "ofd", {}, 0, 2, tmp_path, epochs=1, fingerprints=_prints())  # another thread count: its own run
    assert len(calls) == 3 and calls[-1][1] == "2"
    runs._run("classification", "ofd", {"model.ofd.alpha": 0.1}, 0, 1, tmp_path, epochs=1, fingerprints=_prints())  # other config
    assert len(calls) == 4


def test_a_moved_fingerprint_reruns_the_runs_of_its_method_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    for overrides in ({}, {"model.ofd.alpha": 0}):
        runs._run("classification", "x", overrides, 0, 1, tmp_path / str(len(calls)), 1, fingerprints=_prints())
    assert len(calls) == 2
    moved = _prints(ofd="fp-ofd-moved")
    runs._run("classification", "x", {"model.ofd.alpha": 0}, 0, 1, tmp_path / "1", 1, fingerprints=moved)
    assert len(calls) == 2  # the baseline's fingerprint holds: reused
    runs._run("classification", "x", {}, 0, 1, tmp_path / "0", 1, fingerprints=moved)
    assert len(calls) == 3  # the OFD run's moved: trained again


def test_a_run_recorded_before_fingerprints_is_reused_through_the_file_of_its_code(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    runs._run("classification", "ofd", {}, 0, 1, tmp_path, 1, fingerprints=_prints())
    result_file = tmp_path / "classification" / "ofd" / "threads1" / "seed0" / "result.json"
    legacy = json.loads(result_file.read_text())
    del legacy["provenance"]["fingerprint"]
    legacy["provenance"]["code"] = "c0de"
    result_file.write_text(json.dumps(legacy))
    older = dict(format=1, recorded_code="c0de", fingerprints=dict(classification=dict(ofd=dict(hash="fp-ofd"))))
    reused = runs._run("classification", "ofd", {}, 0, 1, tmp_path, 1, fingerprints=_prints([older]))
    assert len(calls) == 1 and reused["provenance"]["code"] == "c0de"
    runs._run("classification", "ofd", {}, 0, 1, tmp_path, 1, fingerprints=_prints())  # no file of its code
    assert len(calls) == 2


def test_an_auto_alpha_run_records_the_alpha_its_checkpoint_holds(tmp_path, monkeypatch):
    train = _fake_training([])

    def with_checkpoint(command, log_path, threads):
        train(command, log_path, threads)
        work_dir = Path(command[command.index("--work-dir") + 1])
        torch.save(dict(state_dict={"distiller.alpha_auto": torch.tensor(0.01)}), work_dir / "epoch_1.pth")
        (work_dir / "last_checkpoint").write_text(str(work_dir / "epoch_1.pth"))

    monkeypatch.setattr(runs, "_train", with_checkpoint)
    result = runs._run("classification", "ofd, alpha auto", {"model.ofd.alpha": "auto"}, 0, 1, tmp_path, epochs=1,
                       fingerprints=_prints())
    assert result["alpha_auto"] == pytest.approx(0.01)


def test_a_sweep_logs_each_finished_run_and_the_time_left(tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    reproduce.run_task("classification", 1, tmp_path, 1, False, methods=["baseline"], threads=[1])
    caplog.clear()
    with caplog.at_level("INFO", logger=runs.__name__):
        reproduce.run_task("classification", 2, tmp_path, 1, False, methods=["baseline", "ofd"], threads=[1])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert lines[0] == "[1/4] classification / baseline / seed 0 / 1 threads: accuracy/top1 71 (recorded before)"
    assert re.fullmatch(r"\[2/4\] classification / ofd / seed 0 / 1 threads: accuracy/top1 72 \(trained in \d+ s\); "
                        r"2 to go, about \d+ min if each trains", lines[1])
    assert lines[3].startswith("[4/4] classification / ofd / seed 1 / 1 threads: accuracy/top1 74 (trained in")
    assert lines[3].endswith(")")


def test_first_seed_shifts_the_seeds_a_sweep_trains(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    report = reproduce.run_task("classification", 2, tmp_path, 1, False, methods=["baseline"], threads=[1],
                                first_seed=6)
    assert [r["seed"] for r in report["results"]] == [6, 7]
    trained = tmp_path / "classification" / "baseline" / "threads1"
    assert sorted(p.name for p in trained.iterdir()) == ["seed6", "seed7"]
    assert report["seeds"] == 8


def test_the_time_left_counts_a_run_in_flight_from_where_it_is(monkeypatch):
    """Two workers, one run done in 600 s, one in flight for 300 s and two queued: 300 s + 2 x 600 s between
    two workers is 12.5 min, not the 20 min of two full rounds."""
    clock = iter([1000.0, 1300.0])
    monkeypatch.setattr(runs.time, "perf_counter", lambda: next(clock))
    progress = runs._Progress(total=4, jobs=2)
    progress.started()
    progress.trained.append(600.0)
    assert progress._seconds_left(3) == pytest.approx((300.0 + 2 * 600.0) / 2)


def test_the_record_reads_the_distillers_own_log_line(make_model, tmp_path, caplog):
    """The teacher's mode reaches result.json from the distiller's log line: parse the real one."""
    distiller = FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large"),
                                 input_size=(3, 64, 64), teacher_precision="bfloat16")
    with caplog.at_level("INFO", logger="overhaul_det.distiller"):
        distiller.teacher_features(torch.randn(2, 3, 64, 64))
    log = tmp_path / "train.log"
    log.write_text(caplog.text)
    assert runs._teacher_mode(log) == distiller.teacher_runs_in["cpu"] == "bfloat16, channels-last"


def test_a_run_without_a_teacher_records_none(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("INFO Epoch(train) [1][10/40] loss: 0.5\nINFO student runs in eval mode\n")
    assert runs._teacher_mode(log) is None


def test_a_training_gets_its_thread_count(tmp_path):
    log = tmp_path / "train.log"
    code = "import torch; print(torch.get_num_threads())"
    runs._train([sys.executable, "-c", code], log, threads=1)
    assert log.read_text().strip() == "1"


@pytest.mark.parametrize("flag", [["--threads", "0"], ["--jobs", "0"]])
def test_zero_threads_or_jobs_is_refused(flag, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["classification", *flag])
    assert "is not a count; give 1 or more" in capsys.readouterr().err


def test_alpha_sweep_skips_the_configs_own_alpha_and_plots_auto(tmp_path):
    sweep = alpha_runs("classification", ["1e-3", "1e-2", "auto"])
    assert sweep == [("alpha 1e-3", {"model.ofd.alpha": 1e-3}), ("alpha auto", {"model.ofd.alpha": "auto"})]
    for seed in range(2):
        _fake_run(tmp_path, "baseline", seed, 75.0 + seed)
        _fake_run(tmp_path, "ofd", seed, 81.0 + seed)
        _fake_run(tmp_path, "alpha auto", seed, 80.0 + seed)
        _fake_run(tmp_path, "alpha 1e-3", seed, 77.0 + seed)
        result_file = tmp_path / "classification" / "alpha_auto" / "threads1" / f"seed{seed}" / "result.json"
        result_file.write_text(json.dumps(dict(json.loads(result_file.read_text()), alpha_auto=0.004 + seed / 1000)))
    report = reproduce.collect_task("classification", tmp_path)
    assert list(report["summary"]) == ["baseline", "ofd", "alpha 1e-3", "alpha auto"]
    table = markdown(report, "python tools/reproduce.py classification", "plot.png")
    assert "alpha='auto' chose: 0.004 (s0/1t), 0.005 (s1/1t)." in table
    assert "results_classification_alpha.png" in table
    plot = tmp_path / "alpha.png"
    plots.plot_alpha("classification", report["results"], report["metric"], 1e-2, plot)
    assert plot.stat().st_size > 1000


def test_a_teacher_precision_renames_and_overrides_only_runs_that_distil_features():
    assert reproduce.with_teacher_precision("ofd", {}, "float32") == (
        "ofd, float32 teacher", {"model.ofd.teacher_precision": "float32"})
    assert reproduce.with_teacher_precision("ofd+kd", {"model.kd_weight": 1.0}, "bfloat16") == (
        "ofd+kd, bfloat16 teacher", {"model.kd_weight": 1.0, "model.ofd.teacher_precision": "bfloat16"})
    kd = reproduce.METHODS["kd"]
    assert reproduce.with_teacher_precision("kd", kd, "float32") == ("kd", kd)  # no OFD: KD's teacher runs as it is
    assert reproduce.with_teacher_precision("ofd", {}, "auto") == ("ofd", {})
    bf16 = {"model.ofd.teacher_precision": "bfloat16"}
    assert reproduce.with_teacher_precision("ofd, bfloat16 teacher", bf16, "bfloat16") == ("ofd, bfloat16 teacher", bf16)
    with pytest.raises(ValueError, match="runs its teacher in bfloat16; drop it from --methods"):
        reproduce.with_teacher_precision("ofd, bfloat16 teacher", bf16, "float32")
    assert reproduce.split_teacher_precision("ofd, no margin (identity teacher), float32 teacher") == (
        "ofd, no margin (identity teacher)", "float32")
    assert reproduce.split_teacher_precision("ofd, no margin (identity teacher)") == (
        "ofd, no margin (identity teacher)", "auto")


def test_a_sweep_with_a_teacher_precision_trains_it_and_pairs_it_with_the_baseline(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    report = reproduce.run_task("classification", 1, tmp_path, 1, False, methods=["baseline", "ofd", "ofd+kd"],
                                threads=[1], teacher_precision="float32")
    assert [r["method"] for r in report["results"]] == ["baseline", "ofd, float32 teacher", "ofd+kd, float32 teacher"]
    options = [command[command.index("--cfg-options") + 1:] for command, _ in calls]
    assert "model.ofd.teacher_precision=float32" not in options[0]
    assert all("model.ofd.teacher_precision=float32" in o for o in options[1:])
    assert (tmp_path / "classification" / "ofd_kd,_float32_teacher" / "threads1" / "seed0" / "result.json").exists()
    table = markdown(report, "python tools/reproduce.py classification", "plot.png")
    assert "| seed | threads | baseline | ofd, float32 teacher | gain |" in table
    assert "| 0 | 1 | 71.00 | 72.00 | +1.00 |" in table


def test_a_method_spelled_with_its_precision_trains_as_the_flag_does(tmp_path, monkeypatch):
    """A name the report shows ('ofd+kd, float32 teacher') is a method: the same run as --teacher-precision makes."""
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    named = reproduce.run_task("classification", 1, tmp_path / "named", 1, False, threads=[1],
                               methods=["ofd+kd, float32 teacher", "ofd"])
    flagged = reproduce.run_task("classification", 1, tmp_path / "flag", 1, False, threads=[1], methods=["ofd+kd"],
                                 teacher_precision="float32")
    assert [r["method"] for r in named["results"]] == ["ofd+kd, float32 teacher", "ofd"]
    assert named["results"][0]["overrides"] == flagged["results"][0]["overrides"] == {
        "model.kd_weight": 1.0, "model.ofd.teacher_precision": "float32"}
    assert named["results"][0]["provenance"]["config"] == flagged["results"][0]["provenance"]["config"]


def test_channels_last_student_runs_only_when_named(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "_train", _fake_training(calls))
    named = reproduce.run_task("classification", 1, tmp_path / "named", 1, False, threads=[1],
                               methods=["ofd, channels-last student", "baseline, channels-last student"])
    assert [(r["method"], r["overrides"]) for r in named["results"]] == [
        ("ofd, channels-last student", {"model.student_channels_last": True}),
        ("baseline, channels-last student", {"model.ofd.alpha": 0, "model.student_channels_last": True})]
    default = reproduce.run_task("classification", 1, tmp_path / "default", 1, False, threads=[1])
    assert not any("channels-last" in r["method"] for r in default["results"])
    for task in ("detection", "segmentation"):
        check_methods(task, ["baseline, channels-last student", "ofd, channels-last student"])
    with pytest.raises(ValueError, match="not run for detection"):
        reproduce.run_task("detection", 1, tmp_path / "det", 1, False, methods=["ofd, channel-last student"])


@pytest.mark.parametrize("methods, refusal", [
    (["ofd, float23 teacher"], r"not run for classification; choose from .* '<method>, <precision> teacher'"),
    (["kd, bfloat16 teacher"], "distil no features, so they have no OFD teacher"),
    (["ofd, bfloat16 teacher"], "runs its teacher in bfloat16; drop it from --methods or use --teacher-precision")])
def test_a_precision_a_method_cannot_take_is_refused_before_training(tmp_path, monkeypatch, methods, refusal):
    monkeypatch.setattr(runs, "_train", _fake_training([]))
    with pytest.raises(ValueError, match=refusal):
        reproduce.run_task("classification", 1, tmp_path, 1, False, methods=methods, teacher_precision="float32")
    assert not (tmp_path / "classification").exists()


def test_each_methods_teacher_precisions_are_reported_together(tmp_path):
    for method in ["ofd+kd, float32 teacher", "ofd, bfloat16 teacher", "ofd+kd", "ofd", "baseline",
                   "ofd, no margin (identity teacher), float32 teacher", "ofd, float32 teacher"]:
        _fake_run(tmp_path, method, 0, 80.0)
    report = reproduce.collect_task("classification", tmp_path)
    assert list(report["summary"]) == ["baseline", "ofd", "ofd, float32 teacher", "ofd, bfloat16 teacher", "ofd+kd",
                                       "ofd+kd, float32 teacher", "ofd, no margin (identity teacher), float32 teacher"]
    table = markdown(report, "python tools/reproduce.py classification", "plot.png")
    assert ("| baseline | ofd | gain | ofd, float32 teacher | gain | ofd, bfloat16 teacher | gain |") in table


@pytest.mark.parametrize("methods", [["ofd, bfloat16 teacher"], ["ofd, teacher BN eval", "ofd, full L2 (not partial)"]])
def test_a_report_of_one_kind_of_run_plots_without_an_empty_panel(tmp_path, methods):
    for method in methods:
        _fake_run(tmp_path, method, 0, 80.0)
    report = reproduce.collect_task("classification", tmp_path)
    plot = tmp_path / "plot.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a legend without labelled curves
        plots.plot_curves("classification", report["results"], report["metric"], plot)
    assert plot.stat().st_size > 1000


def test_a_methods_runs_with_each_teacher_share_its_colour_and_no_two_curves_look_alike(tmp_path, monkeypatch):
    methods = ["baseline", "ofd", *(f"ofd, {a}" for a in reproduce.ABLATIONS)]
    for method in methods + [f"{m}, bfloat16 teacher" for m in methods[1:]]:
        _fake_run(tmp_path, method, 0, 80.0)
    report = reproduce.collect_task("classification", tmp_path)
    drawn = []
    draw = plots._plot_method

    def record(ax, method, curves, color, linestyle):
        drawn.append((id(ax), method, color, linestyle))
        draw(ax, method, curves, color, linestyle)

    monkeypatch.setattr(plots, "_plot_method", record)
    plots.plot_curves("classification", report["results"], report["metric"], tmp_path / "plot.png")
    ablation_panel = {(color, style): method for ax, method, color, style in drawn if ax == drawn[-1][0]}
    assert len(ablation_panel) == 10  # OFD and four ablations, each with both teachers
    for ax in {ax for ax, *_ in drawn}:
        looks = [(color, style) for a, _, color, style in drawn if a == ax]
        assert len(looks) == len(set(looks))
    colour = {method: color for _, method, color, _ in drawn}
    assert all(colour[f"{m}, bfloat16 teacher"] == colour[m] for m in methods[1:])
    assert len({colour[m] for m in methods}) == len(methods)


def test_an_alpha_sweep_per_teacher_precision_is_plotted_per_precision(tmp_path, monkeypatch):
    for method, final in [("ofd", 81.0), ("alpha 1e-3", 78.0), ("ofd, float32 teacher", 82.0),
                          ("alpha 1e-3, float32 teacher", 79.0), ("ofd, bfloat16 teacher", 80.0)]:
        _fake_run(tmp_path, method, 0, final)
    report = reproduce.collect_task("classification", tmp_path)
    curves = []
    from matplotlib.axes import Axes

    def errorbar(ax, x, y, *args, **kwargs):
        curves.append((kwargs["label"], x, y))
        return draw(ax, x, y, *args, **kwargs)

    draw = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", errorbar)
    plots.plot_alpha("classification", report["results"], report["metric"], 1e-2, tmp_path / "alpha.png")
    assert curves == [("OFD at a fixed alpha", [1e-3, 1e-2], [78.0, 81.0]),
                      ("OFD at a fixed alpha, float32 teacher", [1e-3, 1e-2], [79.0, 82.0])]  # no bfloat16 sweep ran


def test_the_alphas_auto_chose_are_named_by_method_where_several_chose(tmp_path):
    for method, alpha in [("alpha auto", 0.004), ("alpha auto, bfloat16 teacher", 0.005)]:
        _fake_run(tmp_path, method, 0, 80.0)
        result_file = tmp_path / "classification" / method.replace(" ", "_") / "threads1" / "seed0" / "result.json"
        result_file.write_text(json.dumps(dict(json.loads(result_file.read_text()), alpha_auto=alpha)))
    table = markdown(reproduce.collect_task("classification", tmp_path), "python tools/reproduce.py", "plot.png")
    assert ("alpha='auto' chose: alpha auto: 0.004 (s0/1t); alpha auto, bfloat16 teacher: 0.005 (s0/1t)."
            in table)


def test_the_alpha_plot_averages_only_the_runs_the_sweep_made(tmp_path, monkeypatch):
    for seed in range(2):
        _fake_run(tmp_path, "baseline", seed, 75.0 + seed)
        _fake_run(tmp_path, "ofd", seed, 81.0 + seed)
        _fake_run(tmp_path, "alpha 1e-3", seed, 78.0 + seed)
    _fake_run(tmp_path, "baseline", 5, 60.0)  # seeds the sweep did not run: left out of every point
    _fake_run(tmp_path, "ofd", 0, 90.0, threads=2)
    report = reproduce.collect_task("classification", tmp_path)
    drawn = {}
    from matplotlib.axes import Axes

    def errorbar(ax, x, y, *args, **kwargs):
        drawn["curve"] = (x, y)
        return draw_errorbar(ax, x, y, *args, **kwargs)

    def axhspan(ax, low, high, *args, **kwargs):
        drawn["band"] = ((low + high) / 2, kwargs["label"])
        return draw_axhspan(ax, low, high, *args, **kwargs)

    def set_title(ax, title, *args, **kwargs):
        drawn["title"] = title
        return draw_title(ax, title, *args, **kwargs)

    draw_errorbar, draw_axhspan, draw_title = Axes.errorbar, Axes.axhspan, Axes.set_title
    monkeypatch.setattr(Axes, "errorbar", errorbar)
    monkeypatch.setattr(Axes, "axhspan", axhspan)
    monkeypatch.setattr(Axes, "set_title", set_title)
    plots.plot_alpha("classification", report["results"], report["metric"], 1e-2, tmp_path / "alpha.png")
    assert drawn["curve"] == ([1e-3, 1e-2], [78.5, 81.5])
    assert drawn["band"][0] == pytest.approx(75.5) and drawn["band"][1].startswith("baseline 75.50 ± 0.71")
    assert drawn["title"].endswith("over seeds 0, 1 at 1 thread")


@pytest.mark.parametrize("jobs, threads, warned", [(2, 2, True), (2, 1, False), (1, 4, False)])
def test_more_threads_than_cores_is_warned_with_counts_that_fit(jobs, threads, warned, tmp_path, monkeypatch,
                                                                caplog):
    monkeypatch.setattr(runs.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(runs, "_train", _fake_training([]))
    with caplog.at_level("WARNING", logger="tools.reproduce"):
        reproduce.run_task("classification", 1, tmp_path, 1, False, methods=["baseline"], threads=[threads],
                           jobs=jobs)
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert warnings_logged == ["--jobs 2 x --threads 2 asks for 4 threads on 2 CPU cores: the trainings will "
                                   "contend and each runs several times slower; fits the cores: --jobs 2 "
                                   "--threads 1 or --jobs 1 --threads 2"]
    else:
        assert warnings_logged == []


def test_report_only_reports_the_methods_and_threads_asked_for(tmp_path):
    for method in ["baseline", "ofd", "ofd, bfloat16 teacher"]:
        for threads in (1, 2):
            _fake_run(tmp_path, method, 0, 80.0, threads=threads)
    report = reproduce.collect_task("classification", tmp_path, methods=["baseline", "ofd, bfloat16 teacher"],
                                    threads=[2])
    assert [(r["method"], r["threads"]) for r in report["results"]] == [("baseline", 2), ("ofd, bfloat16 teacher", 2)]
    with pytest.raises(ValueError, match=r"--methods 'ofd,kd': no finished run under .*runs there: 'baseline', 'ofd'"):
        reproduce.collect_task("classification", tmp_path, methods=["ofd,kd"])
    with pytest.raises(ValueError, match="--threads 4: .*runs there: 1, 2"):
        reproduce.collect_task("classification", tmp_path, threads=[4])


@pytest.mark.parametrize("flags", [["--seeds", "6"], ["--first-seed", "6"], ["--jobs", "2"], ["--ablations"],
                                   ["--alphas", "1e-3"], ["--teacher-precision", "float32"], ["--epochs", "2"]])
def test_report_only_refuses_the_flags_that_shape_trainings(tmp_path, capsys, flags):
    _fake_run(tmp_path, "ofd", 0, 80.0)
    with pytest.raises(SystemExit):
        reproduce.main(["classification", "--report-only", *flags, "--work-dir", str(tmp_path), "--out", str(tmp_path)])
    assert f"{flags[0]} shape trainings, and --report-only trains none" in capsys.readouterr().err
    assert not (tmp_path / "results_classification.md").exists()


def test_the_alpha_plots_baseline_band_shows_a_fractions_std_in_four_decimals(tmp_path, monkeypatch):
    for seed, (baseline, ofd) in enumerate([(0.0930, 0.120), (0.0990, 0.125)]):
        _fake_run(tmp_path, "baseline", seed, baseline)
        _fake_run(tmp_path, "ofd", seed, ofd)
        _fake_run(tmp_path, "alpha 1e-3", seed, ofd - 0.01)
    report = reproduce.collect_task("classification", tmp_path)
    bands = []
    from matplotlib.axes import Axes

    monkeypatch.setattr(Axes, "axhspan", lambda ax, low, high, **kwargs: bands.append(kwargs["label"]))
    plots.plot_alpha("classification", report["results"], report["metric"], 1e-2, tmp_path / "alpha.png")
    assert bands == ["baseline 0.0960 ± 0.0042"]  # sample std of 0.0930 and 0.0990


def test_the_summary_says_what_share_of_the_gain_the_last_quarter_of_epochs_made():
    from tools.reproduce.report import last_quarter_share

    # mean history 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7: gain 0.6, the last two epochs add 0.1
    histories = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.7]]
    assert last_quarter_share(histories) == pytest.approx(0.1 / 0.6)
    assert last_quarter_share([[0.1, 0.2, 0.3]]) is None
    assert last_quarter_share([[0.5, 0.4, 0.4, 0.3]]) is None


def test_the_markdown_table_shows_the_last_quarters_share(tmp_path):
    for seed, final in enumerate([75.0, 77.0]):
        _fake_run(tmp_path, "baseline", seed, final)
    table = markdown(reproduce.collect_task("classification", tmp_path), "python tools/reproduce.py", "plot.png")
    assert "| baseline | 76.00 ± 1.41 | 75.00 (s0/1t), 77.00 (s1/1t) | - | 10 |" in table
