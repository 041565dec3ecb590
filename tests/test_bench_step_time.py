"""bench/step_time.py and bench/common.py: the FLOP count of a training step checked by hand, the
statistics, the metadata, atomic JSON, and the JSON a --quick run writes (with PyTorch when it
is installed, and with it made unimportable: the comparison is skipped, and the JSON says so)."""

import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import step_time  # noqa: E402


# ---------------------------------------------------------------- FLOPs

def test_layer_shapes_follow_the_paper_network():
    layers = step_time.layer_shapes(64)
    conv1, conv2, dense1, dense2 = layers
    assert (conv1["C"], conv1["H"], conv1["K"], conv1["P"], conv1["Q"]) == (3, 32, 32, 30, 30)
    assert (conv2["C"], conv2["H"], conv2["K"], conv2["P"], conv2["Q"]) == (32, 15, 64, 13, 13)
    assert (dense1["IN"], dense1["OUT"]) == (64 * 6 * 6, 128)
    assert (dense2["IN"], dense2["OUT"]) == (128, 10)


def test_step_flops_by_hand():
    # Multiply-adds of the forward pass, batch 64, written out from the shapes:
    conv1 = 64 * 32 * 30 * 30 * (3 * 3 * 3)       # N K P Q (C R S) =  49,766,400
    conv2 = 64 * 64 * 13 * 13 * (32 * 3 * 3)      #                 = 199,360,512
    dense1 = 64 * 128 * 2304                      #                 =  18,874,368
    dense2 = 64 * 10 * 128                        #                 =      81,920
    macs = conv1 + conv2 + dense1 + dense2        #                 = 268,083,200
    assert macs == 268_083_200
    f = step_time.model_flops(64)
    assert [f["per_layer"][k]["macs"] for k in ("conv1", "conv2", "dense1", "dense2")] == [conv1, conv2, dense1, dense2]
    assert f["forward"] == 2 * macs == 536_166_400
    # backward: dW for every layer, dX for every layer but the first (the input needs none)
    assert f["backward"] == 4 * macs - 2 * conv1 == 972_800_000
    assert f["total"] == 1_508_966_400            # "about 1.5 GFLOP" per step
    assert f["per_layer"]["conv1"]["backward_dx"] == 0
    # linear in the batch
    assert step_time.model_flops(1)["total"] * 64 == f["total"]


# ---------------------------------------------------------------- common

def test_stats_math():
    s = common.stats([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["n"] == 5
    assert s["mean"] == pytest.approx(3.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)  # linear interpolation
    even = common.stats([4, 1, 3, 2])
    assert even["median"] == 2.5
    one = common.stats([0.25])
    assert one["median"] == one["p10"] == one["p90"] == one["min"] == 0.25
    with pytest.raises(ValueError, match="at least one sample"):
        common.stats([])


def test_timeit_warms_up_and_counts():
    calls = []
    samples = common.timeit(lambda: calls.append(1), warmup=2, repeats=3, sync=lambda: None)
    assert len(calls) == 5 and len(samples) == 3 and all(t >= 0 for t in samples)
    with pytest.raises(ValueError):
        common.timeit(lambda: None, warmup=0, repeats=0)


def test_metadata_keys():
    meta = common.metadata("cpu")
    for key in ("device", "device_description", "commit", "date", "python", "numpy", "torch", "pyregnet",
                "cpu_count", "load_average"):
        assert key in meta, key
    assert meta["device"] == "cpu" and meta["device_description"]
    assert meta["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta["commit"])
    assert datetime.datetime.fromisoformat(meta["date"]).utcoffset() == datetime.timedelta(0)
    assert meta["numpy"] == np.__version__
    assert "cuda_compiled" in meta["pyregnet"]
    json.dumps(meta)


def test_write_json_is_atomic_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "r.json"
    common.write_json(path, {"x": np.float32(1.5), "n": np.int64(3), "a": np.arange(3), "nan": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1.5, "n": 3, "a": [0, 1, 2], "nan": None}
    common.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary files left


def test_roofline_measurements_are_plausible():
    bw = common.measure_copy_bandwidth("cpu", nbytes=8 * 2**20, repeats=2)
    peak = common.measure_peak_flops("cpu", n=256, repeats=2)
    assert bw["bytes_per_s"] > 1e8 and bw["array_bytes"] == 8 * 2**20
    assert peak["flops_per_s"] > 1e8 and peak["n"] == 256
    assert common.roofline_s(2e9, 1e9, 1e9, 1e9) == 2.0
    assert common.roofline_s(0, 3e9, 1e9, 1e9) == 3.0


# ---------------------------------------------------------------- a --quick run

QUICK = ["--quick", "--device", "cpu", "--steps", "2", "--repeats", "1", "--warmup", "1",
         "--dataset-images", "512"]


def _check_common_schema(d):
    assert d["benchmark"] == "step_time"
    assert d["metadata"]["device"] == "cpu" and d["metadata"]["commit"] and d["metadata"]["date"]
    assert d["config"]["quick"] is True and d["config"]["steps"] == 2 and d["config"]["repeats"] == 1
    assert d["flops"]["total"] == step_time.model_flops(64)["total"]
    roof = d["roofline"]
    assert roof["bytes_per_s"] > 0 and roof["peak_flops_per_s"] > 0
    assert d["epoch"]["steps_per_epoch"] == 782
    pyregnet_rows = [r for r in d["results"] if r["impl"] == "pyregnet"]
    assert sorted(r["reg"] for r in pyregnet_rows) == ["l1l2", "none"]
    for r in d["results"]:
        assert len(r["samples_s_per_step"]) == 1 and r["samples_s_per_step"][0] > 0
        s = r["stats_s_per_step"]
        assert s["n"] == 1 and s["p10"] <= s["median"] <= s["p90"]
        assert r["ms_per_step"] == pytest.approx(1e3 * s["median"])
        assert r["images_per_s"] == pytest.approx(64 / s["median"])
        assert r["epoch_model_s"] == pytest.approx(782 * s["median"])
        assert r["gflops_per_s"] > 0 and r["pct_of_peak"] > 0
    assert set(d["comparison"]) == {"none", "l1l2"}


def test_quick_run_json(tmp_path, capsys):
    out = tmp_path / "step_time.json"
    assert step_time.main(QUICK + ["--json", str(out), "--epoch-images", "128"]) == 0
    printed = capsys.readouterr().out
    print(printed)
    d = json.loads(out.read_text())
    _check_common_schema(d)
    ops = {r["op"] for r in d["pyregnet_ops"]}
    assert {"conv1 + relu fwd", "conv2 bwd", "softmax cross-entropy", "penalty + adam (none)"} <= ops
    for r in d["pyregnet_ops"]:
        assert r["ms"] > 0 and r["bytes"] > 0 and r["roofline_ms"] > 0
        assert (r["pct_of_peak"] is None) == (not r["flops"])
    assert [e["reg"] for e in d["epoch"]["measured"]] == ["none", "l1l2"]
    assert all(e["images"] == 128 and e["steps"] == 2 and e["seconds"] > 0 for e in d["epoch"]["measured"])
    if d["torch"]["available"]:
        assert {(r["impl"], r["reg"]) for r in d["results"]} == {
            ("pyregnet", "none"), ("pyregnet", "l1l2"), ("torch", "none"), ("torch", "l1l2")}
        assert d["same_network_check"]["ok"], d["same_network_check"]
        for c in d["comparison"].values():
            assert c["ratio"] > 0 and c["target"] == 2.0 and c["verdict"] in ("PASS", "FAIL")
        assert "pyregnet/PyTorch (none)" in printed
    else:
        _check_torch_skipped(d)


def _check_torch_skipped(d):
    assert d["torch"]["available"] is False and "PyTorch" in d["torch"]["skipped"]
    assert {r["impl"] for r in d["results"]} == {"pyregnet"}
    assert d["same_network_check"] is None
    for c in d["comparison"].values():
        assert c["ratio"] is None and c["verdict"] == "n/a" and c["reason"] == d["torch"]["skipped"]


def test_quick_run_without_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    out = tmp_path / "no_torch.json"
    assert step_time.main(QUICK + ["--json", str(out), "--no-breakdown"]) == 0
    assert "PyTorch: skipped" in capsys.readouterr().out
    d = json.loads(out.read_text())
    _check_common_schema(d)
    _check_torch_skipped(d)
    assert d["pyregnet_ops"] == []


def test_bad_arguments(capsys):
    assert step_time.main(["--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert step_time.main(["--device", "cpu", "--dataset-images", "10"]) == 2
