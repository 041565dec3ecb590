"""bench/gpu_suite.sh and its Python (dev/gpu_suite/: gpu_suite.py, suite_record.py) on the CPU, so that no GPU minute
is lost to a script bug: the one-line refusal without a GPU; the pytest plugin that records, stops
at a deadline and takes up the rest; the spill check, test counts, metric comparison and epoch times
on made-up inputs; the summary JSON of a stage whose steps succeed, fail, stop the suite or run out
of time; gpu-first-contact.json's headline from made-up step results; each stage's steps called in
order with arguments their signatures accept; and every step that runs a program, run for real on
the CPU (small synthetic data, stand-ins for nvcc and compute-sanitizer)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "dev" / "gpu_suite"))
import gpu_suite as steps  # noqa: E402
import suite_record as rec  # noqa: E402


# ---------------------------------------------------------------- the shell script

def fake_path(tmp_path, nvidia_smi_exit):
    """A PATH whose nvidia-smi exits as told (the real one may or may not exist here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho 'No devices were found'\nexit {nvidia_smi_exit}\n")
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


@pytest.mark.parametrize("stage", ["first", "second", "third"])
def test_without_a_gpu_each_stage_says_so_in_one_line_within_seconds(tmp_path, stage):
    t = time.monotonic()
    out = subprocess.run(["bash", str(ROOT / "bench/gpu_suite.sh"), stage], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": fake_path(tmp_path, 9), "OUT": str(tmp_path / "out")})
    assert time.monotonic() - t < 5
    assert out.returncode == 3
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"gpu_suite {stage}: no NVIDIA GPU")
    assert not (tmp_path / "out").exists()


def test_the_real_command_here_refuses_or_would_run(tmp_path):
    # On this machine as it is: without a GPU, the same one line (a GPU machine runs the suite instead).
    if subprocess.run("nvidia-smi -L 2>/dev/null | grep -q '^GPU '", shell=True).returncode == 0:
        pytest.skip("this machine has a GPU: the suite would really run")
    t = time.monotonic()
    out = subprocess.run(["bash", "bench/gpu_suite.sh", "first"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 5
    assert (out.returncode, out.stderr.count("\n")) == (3, 1), out.stderr


def test_a_bad_stage_is_a_usage_error(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "bench/gpu_suite.sh"), "all"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == "usage: bash bench/gpu_suite.sh first|second|third"


# ---------------------------------------------------------------- the pytest plugin

TESTS = """
import time, pytest
def test_a(): pass
def test_b(): pytest.skip("no GPU here")
def test_c(): assert False
@pytest.fixture
def broken(): raise RuntimeError("setup")
def test_d(broken): pass
def test_e(): pass
"""


def run_plugin(tmp_path, *args):
    (tmp_path / "test_fake.py").write_text(TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "dev" / "gpu_suite")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "suite_record",
                           "-o", "addopts=", str(tmp_path / "test_fake.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)


def test_plugin_records_every_outcome(tmp_path):
    record = tmp_path / "r.jsonl"
    run_plugin(tmp_path, "--record", str(record))
    counts = rec.count_outcomes(record)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped", "not_run")} == \
        {"passed": 2, "failed": 1, "errors": 1, "skipped": 1, "not_run": 0}
    assert counts["skip_reasons"] == {"Skipped: no GPU here": 1}
    assert [n.split("::")[1] for n in counts["failed_tests"]] == ["test_c", "test_d"]


def test_plugin_stops_at_the_deadline_and_a_second_run_takes_up_the_rest(tmp_path):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    out = run_plugin(tmp_path, "--record", str(first), "--stop-at", str(time.time() - 1))
    assert "the suite's deadline was reached" in out.stdout + out.stderr
    assert rec.count_outcomes(first)["passed"] == 1 and rec.count_outcomes(first)["not_run"] == 4
    run_plugin(tmp_path, "--record", str(second), "--skip-recorded", str(first),
               "--skip-recorded", str(tmp_path / "missing.jsonl"))
    _, done = rec.read_records(second)
    assert sorted(n.split("::")[1] for n in done) == ["test_b", "test_c", "test_d", "test_e"]
    assert rec.count_outcomes(second)["not_run"] == 0


def test_counts_of_a_missing_record_are_zero_and_unknown():
    counts = rec.count_outcomes("/nonexistent/record.jsonl")
    assert counts["passed"] == counts["failed"] == 0 and counts["not_run"] is None


# ---------------------------------------------------------------- pure helpers

PTXAS = """\
ptxas info    : Compiling entry function '_Z4goodPf' for 'sm_90'
ptxas info    : Function properties for _Z4goodPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers
ptxas info    : Compiling entry function '_Z3badPf' for 'sm_90'
ptxas info    : Function properties for _Z3badPf
    48 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
"""


def test_spills_names_the_kernels_that_spill():
    assert rec.spills(PTXAS) == [("_Z3badPf", 16, 12)]
    assert rec.spills(PTXAS.replace("16 bytes spill stores, 12", "0 bytes spill stores, 0")) == []


def metrics(epoch, acc, t):
    return {"epoch": epoch, "train_loss": 1.5, "val_acc": acc, "epoch_time_s": t, "eval_time_s": t / 10,
            "images_per_s": 1000 / t, "sparsity": {"total": {"0.001": 0.1}}}


def test_compare_histories_ignores_timing_only():
    a = [metrics(1, 0.5, 1.0), metrics(2, 0.6, 1.1)]
    assert rec.compare_histories(a, [metrics(1, 0.5, 2.0), metrics(2, 0.6, 0.3)]) == (True, None)
    same, diff = rec.compare_histories(a, [metrics(1, 0.5, 1.0), metrics(2, 0.6000001, 1.1)])
    assert not same and diff == "epoch 2: val_acc 0.6 != 0.6000001"
    assert rec.compare_histories(a, a[:1]) == (False, "2 epochs against 1")


def test_epoch_seconds_from_epoch_time_json():
    payload = {"epoch": {"contenders": {
        "pyregnet-graph": {"ran": True, "median_s": {"total_s": 0.21}},
        "pyregnet-eager": {"ran": True, "median_s": {"total_s": 0.9}},
        "torch-eager": {"ran": False, "error": "boom"},
        "torch-compile": {"ran": False, "skipped": "not selected"}}}}
    assert rec.epoch_seconds(payload) == {"pyregnet_graph": 0.21, "pyregnet_eager": 0.9, "torch_eager": None,
                                         "torch_compile": None}
    assert rec.epoch_seconds({"epoch": None}) == {}


def test_parse_gpus():
    text = "NVIDIA H200, 580.159.04, 143771 MiB, Disabled\nNVIDIA H200, 580.159.04, 143771 MiB, [N/A]\n"
    assert steps.parse_gpus(text) == [{"name": "NVIDIA H200", "driver": "580.159.04", "memory": "143771 MiB",
                                    "mig": m} for m in ("Disabled", "[N/A]")]
    assert steps.parse_gpus("") == []


def test_tree_digest_follows_the_sources(tmp_path):
    for name in ("csrc/a.cu", "CMakeLists.txt", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    before = steps.tree_digest(tmp_path)
    assert steps.tree_digest(tmp_path) == before
    (tmp_path / "csrc/a.cu").write_text("y")
    assert steps.tree_digest(tmp_path) != before


# ---------------------------------------------------------------- the suite and its JSON

def test_steps_record_results_failures_and_what_did_not_run(tmp_path):
    suite = rec.Suite("second", tmp_path, deadline_s=100)

    def stop():
        raise rec.Stop("no CUDA backend", {"build_s": 12.5})

    suite.step("ok", lambda: {"n": 1})
    suite.step("broken", lambda: 1 / 0)
    suite.step("slow", lambda: {"n": 2}, need_s=1000)
    suite.step("build", stop)
    suite.step("after", lambda: {"n": 3})
    saved = json.loads((tmp_path / "gpu-second.json").read_text())
    steps = saved["steps"]
    assert steps["ok"]["result"] == {"n": 1} and steps["ok"]["why"] is None
    assert steps["broken"] == {"result": None, "why": "ZeroDivisionError: division by zero",
                               "seconds": steps["broken"]["seconds"]}
    assert steps["slow"]["result"] is None and "1000 s needed" in steps["slow"]["why"]
    assert steps["build"]["result"] == {"build_s": 12.5} and steps["build"]["why"] == "no CUDA backend"
    assert steps["after"] == {"result": None, "why": "not run: build failed (no CUDA backend)"}
    assert saved["stage"] == "second" and saved["deadline_s"] == 100 and saved["commit"]
    assert rec.failures(saved) == ["broken: ZeroDivisionError: division by zero", "build: no CUDA backend",
                                  "not run: slow, after"]
    log = (tmp_path / "second.log").read_text()
    assert "== ok" in log and "FAILED: ZeroDivisionError" in log


def test_run_is_bounded_by_the_deadline(tmp_path):
    suite = rec.Suite("third", tmp_path, deadline_s=2)
    rc, seconds = suite.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                            "slow.log")
    assert rc == "timeout" and seconds < 10
    log = (tmp_path / "slow.log").read_text()
    assert "started" in log and "exit timeout" in log


FAKE_FIRST = {
    "machine": {"device": "NVIDIA H200 x1, 132 SMs, 60 MiB L2, driver 580.159.04, MIG [N/A]", "gpu_count": 1},
    "build": {"reused": False, "build_s": 95.2, "exit": 0, "spills": [["_Z3badPf", 16, 12]]},
    "smoke": {"passed": 5, "failed": 0, "errors": 0, "skipped": 0, "not_run": 0},
    "cuda_tests": {"passed": 350, "failed": 2, "errors": 0, "skipped": 1, "not_run": 4,
                   "skip_reasons": {"Skipped: CuPy is not installed": 1}},
    "real_data": {"identical": False, "first_difference": "epoch 2: val_acc 0.5 != 0.51", "runs": {}},
    "epoch_time": {"exit": 3, "epoch_s": {"pyregnet_graph": 0.25, "pyregnet_eager": 1.5, "torch_eager": 2.0,
                                          "torch_compile": None}},
}


def test_first_contact_json_from_a_fake_result(tmp_path):
    suite = rec.Suite("first", tmp_path, deadline_s=420, headline=rec.first_contact)
    for name, result in FAKE_FIRST.items():
        suite.step(name, lambda result=result: result)
    saved = json.loads((tmp_path / "gpu-first-contact.json").read_text())
    assert saved["device"].startswith("NVIDIA H200 x1") and saved["commit"] and saved["date"]
    assert saved["build_s"] == 95.2 and saved["smoke_passed"] is True
    assert saved["cuda_tests"] == {"passed": 355, "failed": 2, "errors": 0, "skipped": 1, "not_run": 4}
    assert saved["graph_equals_eager"] is False
    assert saved["epoch_s"]["pyregnet_graph"] == 0.25 and saved["epoch_s"]["torch_eager"] == 2.0
    assert rec.failures(saved) == ["build: register spills in _Z3badPf", "cuda_tests: 2 failed, 0 errors",
                                  "cuda_tests: 1 skipped (Skipped: CuPy is not installed)",
                                  "real_data: not the same bits: epoch 2: val_acc 0.5 != 0.51", "epoch_time: exit 3"]


def test_first_contact_json_when_nothing_ran(tmp_path):
    suite = rec.Suite("first", tmp_path, deadline_s=420, headline=rec.first_contact)
    suite.step("machine", lambda: FAKE_FIRST["machine"])
    suite.step("build", lambda: (_ for _ in ()).throw(rec.Stop("the build exited 1 (see build.log)",
                                                               {"build_s": 30.0, "exit": 1})))
    for name in ("smoke", "cuda_tests", "real_data", "epoch_time"):
        suite.step(name, lambda: {"never": True})
    saved = json.loads((tmp_path / "gpu-first-contact.json").read_text())
    assert saved["build_s"] == 30.0
    for key in ("smoke_passed", "cuda_tests", "graph_equals_eager", "epoch_s"):
        assert saved[key] is None, key
    assert saved["steps"]["epoch_time"]["why"] == "not run: build failed (the build exited 1 (see build.log))"


def test_real_data_step_runs_both_modes_and_compares_them(tmp_path, monkeypatch):
    # The GPU step's two runs and their comparison, on the CPU with a small synthetic set (on the
    # CPU --no-graph changes nothing: the two runs must agree).
    monkeypatch.setattr(steps, "STATE", tmp_path / "state")
    suite = rec.Suite("first", tmp_path / "out", deadline_s=300)
    result = steps.real_data(suite, epochs=2, device="cpu",
                          data_args=["--dataset", "synthetic", "--train-size", "64", "--val-size", "40"])
    assert result["identical"] is True and result["first_difference"] is None
    assert [m["epoch"] for m in result["runs"]["graph"]] == [1, 2]
    assert result["runs"]["graph"][0]["val_acc"] == result["runs"]["eager"][0]["val_acc"]


def test_real_data_without_the_archive_says_what_to_carry(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "DATA", steps.ROOT / ".data" / "not-there.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"\.data/not-there\.tar\.gz is missing: copy .* carry \.data"):
        steps.real_data(rec.Suite("first", tmp_path, deadline_s=10))


def test_cuda_marker_covers_every_cuda_parameter():
    # The suite selects the CUDA cases with -m cuda: a case with a cuda parameter left unmarked
    # would silently run on no machine.
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-m", "not cuda", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert ids, out.stdout + out.stderr
    unmarked = [i for i in ids if "[cuda" in i or "-cuda" in i.split("[", 1)[-1]]
    assert unmarked == []


# ---------------------------------------------------------------- the other steps, on the CPU

SYNTHETIC = ["--dataset", "synthetic", "--train-size", "96", "--val-size", "40"]


@pytest.fixture
def suite(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "STATE", tmp_path / "state")
    return rec.Suite("second", tmp_path / "out", deadline_s=300)


def test_determinism_step_repeats_the_first_seed(suite):
    result = steps.determinism(suite, epochs=1, seeds=(3,), device="cpu", data_args=SYNTHETIC)
    assert result["same_seed_identical"] is True and result["first_difference"] is None
    assert sorted(result["final"]) == ["seed3", "seed3-again"]
    assert result["final"]["seed3"] == result["final"]["seed3-again"]
    assert all(len(t) == 1 for t in result["epoch_time_s"].values())


def test_epoch_time_step_reads_the_benchmarks_json(suite):
    result = steps.epoch_time(suite, "pyregnet-eager", ["--train-size", "128", "--val-size", "64", "--epochs", "1",
                                                     "--warmup", "0"], device="cpu")
    assert result["exit"] == 0
    assert result["epoch_s"]["pyregnet_eager"] > 0
    assert result["epoch_s"]["pyregnet_graph"] is None and result["epoch_s"]["torch_eager"] is None
    assert (suite.out / "epoch_time_cpu.json").exists() and (suite.out / "epoch_time.log").exists()


def test_kernel_tables_step_reads_the_targets(suite):
    result = steps.kernel_tables(suite, {
        "step_time": ["--quick", "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup", "0", "--no-ops"],
        "penalty_cost": ["--quick", "--no-epochs", "--optimizers", "adam", "--sizes", "1000", "--repeats", "1",
                         "--peers", ""]}, device="cpu")
    assert result["exit"] == 0 and result["step_time"]["exit"] == result["penalty_cost"]["exit"] == 0
    assert any("PyTorch's" in t for t in result["step_time"]["targets"])
    assert any("copy bandwidth" in t for t in result["penalty_cost"]["targets"])
    assert {p.name for p in suite.out.iterdir()} >= {"step_time_cpu.json", "penalty_cost_cpu.json", "kernel_tables.log"}


def test_harnesses_step_reports_a_failed_build(suite, tmp_path, monkeypatch):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: made to fail' >&2\nexit 1\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(steps, "find_tool", lambda name: str(nvcc))
    result = steps.harnesses(suite, ["relu"])
    assert result["exit"] == 1
    assert any(line.startswith("relu") and "FAILED" in line for line in result["verdicts"])
    assert "######## summary.txt" in (suite.out / "dev_cuda.log").read_text()


def test_sanitize_step_runs_both_modes_under_the_tool(suite, tmp_path, monkeypatch):
    # A stand-in for compute-sanitizer: drops its own options, runs the program, reports as it does.
    tool = tmp_path / "bin" / "compute-sanitizer"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\nshift 4\n"$@"\nrc=$?\necho "========= ERROR SUMMARY: 0 errors"\nexit $rc\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    result = steps.sanitize(suite, device="cpu")
    assert result["eager"]["exit"] == result["graph"]["exit"] == 0
    assert result["error_summaries"] == ["ERROR SUMMARY: 0 errors"] * 2


def test_missing_requirements_names_what_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(steps, "NEEDED_MODULES", ("numpy", "surely_not_installed_here"))
    monkeypatch.setattr(steps, "find_tool", lambda name: None)
    missing = steps.missing_requirements()
    assert missing[:2] == ["surely_not_installed_here", "nvcc"] and "numpy" not in missing


STAGE_STEPS = {   # stage: [(function in gpu_suite, step name in the summary)] in order
    "first": [("machine", "machine"), ("build", "build"), ("smoke", "smoke"), ("cuda_tests", "cuda_tests"),
              ("real_data", "real_data"), ("epoch_time", "epoch_time"), ("harnesses", "harnesses")],
    "second": [("machine", "machine"), ("build", "build"), ("cuda_tests", "cuda_tests"), ("harnesses", "harnesses"),
               ("sanitize", "sanitize"), ("kernel_tables", "kernel_tables")],
    "third": [("machine", "machine"), ("build", "build"), ("determinism", "determinism"),
              ("epoch_time", "torch_compile")],
}


@pytest.mark.parametrize("stage", STAGE_STEPS)
def test_each_stage_calls_its_steps_in_order(stage, tmp_path, monkeypatch):
    import inspect
    calls = []

    def stand_in(name, real):
        def call(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)   # arguments the real step accepts
            calls.append(name)
            return {"ok": True}
        return call

    for name, _ in STAGE_STEPS[stage]:
        monkeypatch.setattr(steps, name, stand_in(name, getattr(steps, name)))
    monkeypatch.setattr(steps, "STATE", tmp_path / "state")
    assert steps.main([stage, "--out", str(tmp_path / "out"), "--deadline-s", "600"]) == 0
    assert calls == [name for name, _ in STAGE_STEPS[stage]]
    saved = json.loads((tmp_path / "out" / rec.SUMMARY[stage]).read_text())
    assert list(saved["steps"]) == [step for _, step in STAGE_STEPS[stage]]
    assert saved["failures"] == [] and "all steps passed" in (tmp_path / "out" / f"{stage}.log").read_text()


def test_the_suite_skips_the_trainers_timing_fields():
    from pyregnet import train
    assert tuple(rec.TIMING_FIELDS) == tuple(train.TIMING_KEYS)
