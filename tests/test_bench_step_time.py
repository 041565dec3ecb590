"""bench/common.py and bench/step_time.py: the statistics, timer, roofline row and verdict
arithmetic, the metadata and atomic JSON, PyTorch's ResNet-20 against pyregnet's, and the JSON of
a small --quick run: with PyTorch when it is installed (the same network, the step against
PyTorch's, the per-op table of the engine's real step summing to about the step), for the CNN and
ResNet-20, and with PyTorch made unimportable (the comparison is skipped, and the JSON says so)."""

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyregnet import model, resnet
from pyregnet.engine import MODELS
from pyregnet.extras import missing
from pyregnet.launch import Launch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import step_time  # noqa: E402
import torch_net  # noqa: E402


# ---------------------------------------------------------------- common

def test_stats_math():
    s = common.stats([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["n"] == 5
    assert s["mean"] == pytest.approx(3.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)  # linear interpolation
    assert common.stats([4, 1, 3, 2])["median"] == 2.5
    one = common.stats([0.25])
    assert one["median"] == one["p10"] == one["p90"] == one["min"] == 0.25
    with pytest.raises(ValueError, match="at least one sample"):
        common.stats([])


def test_timers_warm_up_and_count():
    calls = []
    samples = common.timeit(lambda: calls.append(1), "cpu", warmup=2, repeats=3, calls=4)
    assert len(calls) == 2 + 3 * 4 and len(samples) == 3 and all(t >= 0 for t in samples)
    launches = [Launch("a", lambda: calls.append("a")), Launch("b", lambda: calls.append("b"))]
    calls.clear()
    timed, steps = common.time_launches(launches, "cpu", 2, lambda: calls.append("start"))
    assert calls == ["start", "a", "b"] * 3 and len(steps) == 2                # one warm-up, then 2 timed steps
    assert [len(t) for t, _ in timed] == [2, 2] and all(how.startswith("perf_counter") for _, how in timed)
    with pytest.raises(ValueError):
        common.timeit(lambda: None, "cpu", warmup=0, repeats=0)


def test_roofline_row_and_measurements():
    roof = {"bytes_per_s": 1e9, "peak_flops_per_s": 1e9}
    row = common.roofline_row("x", [2e-3, 1e-3, 4e-3], 1e6, 3e6, roof, reg="none")
    assert row["ms"] == pytest.approx(2.0) and row["reg"] == "none"
    assert row["roofline_ms"] == pytest.approx(3.0)              # bytes-bound: max(1 ms, 3 ms)
    assert row["pct_of_roofline"] == pytest.approx(150.0)
    assert row["gflops_per_s"] == pytest.approx(0.5) and row["gb_per_s"] == pytest.approx(1.5)
    assert row["fraction_of_copy_bw"] == pytest.approx(1.5)
    assert common.roofline_row("y", [1.0], 0, 1, roof)["gflops_per_s"] is None
    measured = common.roofline("cpu", quick=True)
    assert measured["bytes_per_s"] > 1e8 and measured["peak_flops_per_s"] > 1e8


def test_fma_peak_loop_counts_its_fmas_and_reaches_the_matmul(monkeypatch):
    numba = pytest.importorskip("numba", reason=missing("numba"))
    x = np.zeros((3, 64), np.float32)
    common.fma_kernels(numba)[1](x, 5, np.float32(1), np.float32(1))   # x*1 + 1: every FMA adds exactly 1
    assert (x == 5 * common.FMA_CHAIN).all()          # each element: FMA_CHAIN FMAs per pass, 2 FLOPs each
    roof = common.roofline("cpu", quick=True)
    fma, mm = roof["fma"], roof["matmul"]
    reps = int(fma["method"].rsplit(" x ", 1)[1])
    assert fma["flops_per_s"] * fma["stats_s"]["min"] == pytest.approx(2 * common.FMA_CHAIN * 1024 * reps * numba.get_num_threads())
    assert fma["register"] in ("ymm", "zmm") and fma["packed_fmas_in_asm"] >= 4 * common.FMA_CHAIN   # vectorized, unrolled
    # Same order as the matmul. Loosely: with other jobs on the cores, one descheduled thread stalls
    # the whole parallel loop (32.8 against 176.6 GFLOP/s once, with two training runs beside it);
    # the asm check above is what shows the loop is the vectorized one.
    assert fma["flops_per_s"] > 0.1 * mm["flops_per_s"]
    assert roof["peak_flops_per_s"] == max(fma["flops_per_s"], mm["flops_per_s"])
    monkeypatch.setitem(sys.modules, "numba", None)   # not installed: the matmul, and the JSON says so
    roof = common.roofline("cpu", quick=True)
    assert roof["fma"] is None and roof["peak_flops_per_s"] == roof["matmul"]["flops_per_s"]
    assert "numba is not installed" in roof["peak_method"]


def test_target_verdicts():
    t = common.target("k", "x <= 0.2", 0.15, 0.2, "<=", "cuda", "cuda")
    assert (t["pass"], t["verdict"], t["applies"]) == (True, "PASS", True)
    for value, threshold, op, verdict in ((0.2, 0.2, "<=", "PASS"), (0.21, 0.2, "<=", "FAIL"), (3.0, 3.0, ">=", "PASS"),
                                          (2.99, 3.0, ">=", "FAIL"), (1.0, 1.0, ">", "FAIL"), (1.01, 1.0, ">", "PASS"),
                                          (1.0, 1.0, "<", "FAIL"), (0.9, 1.0, "<", "PASS")):
        assert common.target("k", "", value, threshold, op, "cuda", "cuda")["verdict"] == verdict, (value, op)
    none = common.target("k", "", None, 1.0, ">", "cuda", "cuda", "did not run")
    assert (none["pass"], none["verdict"], none["detail"]) == (None, "n/a", "did not run")
    assert common.target("k", "", 0.1, 0.2, "<=", "cpu", "cuda")["applies"] is False   # informational
    noisy = common.target("k", "", 0.015, 0.01, "<=", "cpu", "cpu", noise=0.03)
    assert (noisy["pass"], noisy["verdict"]) == (True, "PASS (within noise)")
    assert common.target("k", "", 0.05, 0.01, "<=", "cpu", "cpu", noise=0.03)["verdict"] == "FAIL"
    with pytest.raises(ValueError, match="op"):
        common.target("k", "", 1.0, 1.0, "==", "cuda", "cuda")


def test_metadata_keys():
    meta = common.metadata("cpu")
    for key in ("device", "device_description", "commit", "date", "python", "numpy", "torch", "pyregnet",
                "cpu_count", "load_average"):
        assert key in meta, key
    assert meta["device"] == "cpu" and meta["device_description"]
    assert meta["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta["commit"])
    assert datetime.datetime.fromisoformat(meta["date"]).utcoffset() == datetime.timedelta(0)
    assert meta["numpy"] == np.__version__ and "cuda_compiled" in meta["pyregnet"]
    json.dumps(meta)


def test_write_json_is_atomic_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "r.json"
    common.write_json(path, {"x": np.float32(1.5), "n": np.int64(3), "a": np.arange(3), "nan": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1.5, "n": 3, "a": [0, 1, 2], "nan": None}
    common.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary files left


# ---------------------------------------------------------------- a --quick run

BATCH = 16
QUICK = ["--quick", "--device", "cpu", "--batch-size", str(BATCH), "--steps", "2", "--repeats", "2", "--warmup", "0"]


def _check_schema(d, net="cnn", steps=2, repeats=2):
    assert d["benchmark"] == "step_time" and d["metadata"]["device"] == "cpu" and d["metadata"]["commit"]
    assert d["config"]["quick"] is True and d["config"]["steps"] == steps and d["config"]["repeats"] == repeats
    assert d["config"]["model"] == net and d["flops"] == MODELS[net].step_flops(BATCH)
    assert d["roofline"]["bytes_per_s"] > 0 and d["roofline"]["peak_flops_per_s"] > 0
    assert sorted(r["reg"] for r in d["results"] if r["impl"] == "pyregnet") == ["l1l2", "none"]
    for r in d["results"]:
        assert len(r["samples_s_per_step"]) == repeats and min(r["samples_s_per_step"]) > 0
        s = r["stats_s_per_step"]
        assert s["n"] == repeats and s["p10"] <= s["median"] <= s["p90"]
        assert r["ms_per_step"] == pytest.approx(1e3 * s["median"])
        assert r["images_per_s"] == pytest.approx(BATCH / s["median"])
        assert r["gflops_per_s"] == pytest.approx(d["flops"]["total"] / s["median"] / 1e9)


def test_quick_run_json(tmp_path, capsys):
    out = tmp_path / "step_time.json"
    assert step_time.main(QUICK + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    d = json.loads(out.read_text())
    _check_schema(d)
    names = ["augment", "labels", "conv1.forward", "pool1.forward", "conv2.forward", "pool2.forward",
             "dense1.forward", "dense2.forward", "loss", "dense2.backward", "relu3.backward", "dense1.backward",
             "pool2+relu2.backward", "conv2.backward", "pool1+relu1.backward", "conv1.backward", "clock", "update"]
    for reg in ("none", "l1l2"):
        rows = [r for r in d["ops"] if r["reg"] == reg]
        assert [r["op"] for r in rows] == names                       # the engine's real step, launch by launch
        assert sum(r["flops"] for r in rows) == d["flops"]["total"]
        assert all(r["ms"] > 0 and r["roofline_ms"] >= 0 for r in rows)
        assert next(r for r in rows if r["op"] == "update")["bytes"] == 7 * 4 * model.N_PARAMS
        s = d["ops_sum"][reg]
        assert s["ops_ms"] == pytest.approx(sum(r["ms"] for r in rows)) and s["ratio"] > 0
        # the launches add up to the steps the table ran (the rest: the Python loop around them)
        assert len(s["share_of_table_steps"]) == d["config"]["op_repeats"] and all(0.8 < x <= 1 for x in s["share_of_table_steps"]), s
        assert f"sum of the {reg} step's launches" in printed
    if d["torch"]["available"]:
        assert {(r["impl"], r["reg"]) for r in d["results"]} == {
            (i, r) for i in ("pyregnet", "torch") for r in ("none", "l1l2")}
        assert d["same_network_check"]["ok"], d["same_network_check"]
        steps = {t["key"]: t for t in d["targets"] if t["key"].startswith("step_")}
        ms = {(r["impl"], r["reg"]): r["ms_per_step"] for r in d["results"]}
        assert steps["step_none"]["value"] == pytest.approx(ms[("pyregnet", "none")] / ms[("torch", "none")])
        assert steps["step_none"]["applies"] and steps["step_none"]["verdict"] in ("PASS", "FAIL")
    else:
        _check_torch_skipped(d)


def test_quick_run_resnet20(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)   # the default path, named after the model
    argv = ["--quick", "--device", "cpu", "--model", "resnet20", "--batch-size", str(BATCH), "--steps", "1",
            "--repeats", "1", "--warmup", "0"]
    assert step_time.main(argv) == 0
    d = json.loads((tmp_path / "step_time_cpu_resnet20_quick.json").read_text())
    _check_schema(d, "resnet20", steps=1, repeats=1)
    eng = common.pyregnet_engine("cpu", (np.zeros((BATCH, 32, 32, 3), np.uint8), np.zeros(BATCH, np.int32)), "none",
                                 BATCH, net="resnet20")
    for reg in ("none", "l1l2"):
        rows = [r for r in d["ops"] if r["reg"] == reg]
        assert [r["op"] for r in rows] == [launch.name for launch in eng.step().launches]   # the engine's real step
        assert sum(r["flops"] for r in rows) == d["flops"]["total"]
        assert next(r for r in rows if r["op"] == "update")["bytes"] == 7 * 4 * resnet.N_PARAMS
    if d["torch"]["available"]:
        assert d["same_network_check"]["ok"], d["same_network_check"]
        assert all(t["threshold"] == 1.2 and "resnet20" in t["target"] for t in d["targets"])
    else:
        _check_torch_skipped(d)


def test_torch_resnet20_is_pyregnets():
    """The same network, weights and BN in training mode (batch statistics, running statistics
    updated alike) and in evaluation mode (running statistics)."""
    torch = pytest.importorskip("torch")
    net = torch_net.resnet20(torch, resnet.init_params(0))
    assert sum(p.numel() for p in net.parameters()) == resnet.N_PARAMS == 269_722
    kernels = torch_net.TorchNet(torch, "cpu", "l1l2", net="resnet20").kernels
    assert sum(w.numel() for w in kernels) == resnet.N_KERNEL and len(kernels) == 20
    x = np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype(np.float32)
    params, state = resnet.init_params(0), resnet.init_state()
    for training in (True, False):   # evaluation after the training pass moved the running statistics
        logits, _ = resnet.forward(params, state, x, training)
        net.train(training)
        with torch.no_grad():
            theirs = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(logits, theirs, rtol=1e-4, atol=1e-4)
    bn = dict(net.named_modules())["2.branch.0.1"]   # stage1.block1.bn1's running statistics
    views = resnet.state_views(state)
    np.testing.assert_allclose(bn.running_mean.numpy(), views["stage1.block1.bn1.mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), views["stage1.block1.bn1.var"], rtol=1e-5, atol=1e-6)


def _check_torch_skipped(d):
    assert d["torch"]["available"] is False and "PyTorch" in d["torch"]["skipped"]
    assert {r["impl"] for r in d["results"]} == {"pyregnet"} and d["same_network_check"] is None
    assert all(t["verdict"] == "n/a" and "did not run" in t["detail"] for t in d["targets"])


def test_quick_run_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    out = tmp_path / "no_torch.json"
    assert step_time.main(QUICK + ["--json", str(out), "--no-ops"]) == 0
    d = json.loads(out.read_text())
    _check_schema(d)
    _check_torch_skipped(d)
    assert d["ops"] == [] and d["ops_sum"] == {}


def test_bad_arguments(capsys):
    assert step_time.main(["--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and err.count("\n") == 1
    assert step_time.main(["--device", "gpu"]) == 2


def test_census_reads_bits_whatever_the_floating_point_mode():
    tiny = np.finfo(np.float32).tiny
    w = np.array([0.0, -0.0, tiny, -tiny, np.nextafter(tiny, np.float32(0)), -1.4e-45, 1e-30, 0.5],
                 dtype=np.float32)
    assert common.census(w) == {"weights": 8, "exact_zeros": 2, "subnormal": 2}


def test_weights_from_a_checkpoint(tmp_path):
    """--weights: both contenders start from the checkpoint's parameters, subnormals kept, and the
    census of its kernel weights is printed and kept."""
    params = model.init_params(2)
    params[:1000], params[1000:1010] = np.float32(1e-40), 0.0   # subnormal, zero
    path = tmp_path / "checkpoint.npz"
    np.savez(path, params=params, step=np.int64(7))
    data = (np.zeros((BATCH, 32, 32, 3), np.uint8), np.zeros(BATCH, np.int32))
    eng = common.pyregnet_engine("cpu", data, "none", BATCH, params=step_time.trained_weights(str(path), "cnn"))
    assert eng.params.tobytes() == params.tobytes()
    out = tmp_path / "weights.json"
    assert step_time.main(QUICK + ["--weights", str(path), "--json", str(out), "--no-ops"]) == 0
    d = json.loads(out.read_text())
    assert d["config"]["weights"] == str(path)
    assert d["config"]["kernel_weights_at_start"] == {"weights": model.N_KERNEL, "exact_zeros": 10, "subnormal": 1000}
    if d["torch"]["available"]:   # PyTorch starts from the same weights: the same first loss
        assert d["same_network_check"]["ok"], d["same_network_check"]


def test_bad_weights_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "small.npz", params=np.zeros(10, np.float32))
    (tmp_path / "junk.npz").write_text("not a checkpoint")
    for name, why in (("small.npz", "holds 10 parameters"), ("junk.npz", "not a readable checkpoint"),
                      ("absent.npz", "not a readable checkpoint")):
        assert step_time.main(["--weights", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("step_time: error: --weights:") and why in err and err.count("\n") == 1, err


def test_git_commit_is_dirty_for_code_not_for_results(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    for results in ("bench/results/r.json", "docs/results/E2/run/metrics.jsonl"):   # results: still clean
        (tmp_path / results).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / results).write_text("{}\n")
    assert common.git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert common.git_commit(tmp_path) == head + "-dirty"
