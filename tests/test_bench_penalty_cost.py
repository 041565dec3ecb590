"""bench/penalty_cost.py: the roofline arithmetic, the overhead and target arithmetic on
hand-made numbers, each peer's correctness check (the peers importable here), peers reported as
skipped with a reason when they cannot be imported, and the JSON of a small --quick run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import penalty_cost as pc  # noqa: E402


def impl(name):
    return next(i for i in pc.implementations() if i.name == name)


# ---------------------------------------------------------------- roofline arithmetic

def test_bytes_per_update_is_seven_arrays():
    # read w, g, m, v and write w, m, v: 7 arrays of n elements
    assert pc.update_bytes(1) == 28
    assert pc.update_bytes(315_722) == 7 * 4 * 315_722 == 8_840_216
    assert pc.update_bytes(10**8, itemsize=8) == 5_600_000_000
    achieved, fraction = pc.bandwidth_fraction(10**6, 1e-3, 56e9)
    assert achieved == pytest.approx(28e9)          # 28 MB in 1 ms
    assert fraction == pytest.approx(0.5)
    row = pc.update_row("x", "l1", 10**6, [2e-3, 1e-3, 1e-3], 28e9, False)
    assert row["bytes"] == 28_000_000 and row["ms"] == pytest.approx(1.0)
    assert row["gb_per_s"] == pytest.approx(28.0) and row["fraction_of_copy_bw"] == pytest.approx(1.0)
    assert row["roofline_ms"] == pytest.approx(1.0)


def test_sizes_parse():
    assert pc._sizes("315722,1M,16M,1e8") == [315_722, 2**20, 16 * 2**20, 10**8]
    assert pc._size("4k") == 4096
    for bad in ("abc", "0", "1.5", "-3"):
        with pytest.raises(Exception):
            pc._size(bad)


# ---------------------------------------------------------------- overheads on hand-made numbers

def test_penalty_overhead_by_hand():
    base = [1.00, 1.10, 0.90, 1.00, 1.00]        # median 1.0; p10 0.94, p90 1.06 (linear interpolation)
    samples = {("fused", "none"): base,
               ("fused", "l1"): [1.01, 1.111, 0.909, 1.01, 1.01],   # +1% every round
               ("fused", "l2"): [1.02, 1.10, 0.90, 1.00, 1.00],     # +2% in one round only
               ("fused", "l1l2"): [1.05, 1.155, 0.945, 1.05, 1.05],  # +5% every round
               ("loss", "none"): base, ("loss", "l1"): [2.0] * 5, ("loss", "l2"): [1.5] * 5,
               ("loss", "l1l2"): [1.0] * 5}
    over, share, noise = pc.penalty_overhead(samples, methods=("fused", "loss"))
    assert over["fused"]["l1"] == pytest.approx(0.01)
    assert over["fused"]["l2"] == pytest.approx(0.0)
    assert over["fused"]["l1l2"] == pytest.approx(0.05)
    assert over["loss"] == pytest.approx({"l1": 1.0, "l2": 0.5, "l1l2": 0.0})
    assert share["fused"]["l1"]["median"] == pytest.approx(0.01)
    assert share["fused"]["l1"]["p10"] == pytest.approx(0.01) and share["fused"]["l1"]["p90"] == pytest.approx(0.01)
    assert share["fused"]["l2"]["median"] == pytest.approx(0.0) and share["fused"]["l2"]["max"] == pytest.approx(0.02)
    assert share["loss"]["l1"]["median"] == pytest.approx(1.0)   # paired: 2.0 / 1.0 - 1 ...
    assert share["loss"]["l1"]["max"] == pytest.approx(2.0 / 0.9 - 1)
    assert noise == pytest.approx((1.06 - 0.94) / 1.0)
    assert pc.aa_none(samples, methods=("fused", "loss")) == {"loss": 0.0}
    # a method not measured gives None, not an error
    over, share, _ = pc.penalty_overhead(samples, methods=("fused", "unfused"))
    assert over["unfused"] == {"l1": None, "l2": None, "l1l2": None}


def test_overhead_verdicts():
    assert pc.overhead_verdict(0.004, 0.01, 0.02)[:2] == (True, "PASS")
    assert pc.overhead_verdict(-0.003, 0.01, 0.02)[:2] == (True, "PASS")
    ok, verdict, detail = pc.overhead_verdict(0.015, 0.01, 0.03)
    assert (ok, verdict) == (True, "PASS (within noise)") and "spread" in detail and "3.00%" in detail
    ok, verdict, detail = pc.overhead_verdict(0.05, 0.01, 0.03)
    assert (ok, verdict) == (False, "FAIL") and "+5.00%" in detail
    assert pc.overhead_verdict(None, 0.01, 0.03)[:2] == (None, "n/a")


def _row(impl_name, reg, n, ms, fraction):
    return {"impl": impl_name, "reg": reg, "n": n, "ms": ms, "fraction_of_copy_bw": fraction,
            "gb_per_s": 1.0}


def test_targets_by_hand():
    over = {"fused": {"l1": 0.002, "l2": 0.004, "l1l2": 0.02}}
    cpu = pc.evaluate_targets("cpu", [], over, noise=0.01)
    assert [t["device"] for t in cpu] == ["cuda", "cuda", "cuda", "cpu"]
    assert all(t["verdict"] == "n/a" for t in cpu[:3])
    assert cpu[3]["pass"] is False and cpu[3]["verdict"] == "FAIL"          # l1l2 +2% > 1% and > the 1% spread
    assert pc.evaluate_targets("cpu", [], over, noise=0.05)[3]["verdict"] == "PASS (within noise)"

    big = 16 * 2**20
    rows = [_row("pyregnet-fused", "l1l2", big, 1.0, 0.93), _row("pyregnet-fused", "none", big, 0.9, 0.95),
            _row("pyregnet-fused", "l1l2", 1000, 0.01, 0.10),                # small sizes do not count for bandwidth
            _row("torch-fused", "l1l2", big, 1.2, 0.8), _row("cupy-elementwise", "l1l2", 1000, 0.02, 0.05)]
    gpu = pc.evaluate_targets("cuda", rows, {"fused": {"l1": 0.0, "l2": 0.0, "l1l2": 0.004}}, noise=0.01)
    bw, peers, epoch, cpu_t = gpu
    assert bw["pass"] is True and bw["value"] == pytest.approx(0.93)
    assert peers["pass"] is True and peers["value"] == pytest.approx(1.0 / 1.2)  # the worst: torch at 16M
    assert epoch["pass"] is True and epoch["verdict"] == "PASS" and cpu_t["verdict"] == "n/a"
    rows[0]["fraction_of_copy_bw"] = 0.85
    rows[3]["ms"] = 0.9
    bw, peers, _, _ = pc.evaluate_targets("cuda", rows, None, None)[:4]
    assert bw["pass"] is False and peers["pass"] is False and "torch-fused" in peers["detail"]
    assert pc.evaluate_targets("cuda", rows[:1], None, None)[1]["verdict"] == "n/a"   # no peer ran


# ---------------------------------------------------------------- peers: correctness checks

@pytest.mark.parametrize("name", ["pyregnet-fused", "pyregnet-fused-noval", "pyregnet-unfused", "pyregnet-loss",
                                  "numpy", "numba-cpu", "torch-fused", "torch-foreach"])
def test_check_against_reference(name):
    im = impl(name)
    why = pc.availability(im, "cpu")
    if why:
        pytest.skip(why)
    try:
        result = pc.check_impl(im, np, n=101)
    except Exception as e:  # noqa: BLE001 -- e.g. fused=True unsupported: the benchmark skips it the same way
        if name == "torch-fused":
            pytest.skip(f"torch fused Adam raised on the CPU: {e}")
        raise
    print(name, result["max_abs_err"])
    assert result["ok"], result
    assert set(result["max_abs_err"]) == set(pc.REGS)
    assert all(set("wmv") <= set(e) for e in result["max_abs_err"].values())


def test_a_peer_that_computes_something_else_is_not_a_peer(monkeypatch):
    def no_l1(w, g, m, v, *, l1, l2, **kw):  # forgets the L1 term
        return pc.build_numpy(w, g, m, v, l1=0.0, l2=l2, **kw)

    wrong = pc.Impl("numpy-no-l1", "peer", "cpu", "drops L1", no_l1)
    result = pc.check_impl(wrong, np, n=101)
    assert not result["ok"] and result["worst_excess"] > 1
    assert result["max_abs_err"]["l2"]["w"] < 1e-7 and result["max_abs_err"]["l1"]["w"] > 1e-6
    monkeypatch.setattr(pc, "implementations", lambda: [wrong])
    runnable, report = pc.prepare_impls("cpu", np, log=lambda *a, **k: None)
    assert runnable == [] and report["numpy-no-l1"]["available"] is False
    assert "computes something else" in report["numpy-no-l1"]["skipped"]


def test_missing_peers_are_skipped_with_a_reason(monkeypatch):
    for module in ("torch", "numba", "cupy"):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    lines = []
    runnable, report = pc.prepare_impls("cpu", np, log=lines.append)
    names = [i.name for i in runnable]
    assert "pyregnet-fused" in names and "numpy" in names
    for name in ("torch-fused", "torch-foreach", "numba-cpu"):
        assert report[name]["available"] is False and "not installed" in report[name]["skipped"], report[name]
        assert any(line.strip().startswith(f"{name}") and "skipped" in line for line in lines)
    for name in ("cupy-elementwise", "numba-cuda"):  # GPU peers on a CPU run: skipped, and say why
        assert report[name]["available"] is False and "GPU only" in report[name]["skipped"]
    assert pc.availability(impl("numba-cpu"), "cuda").startswith("runs on the CPU only")
    runnable, report = pc.prepare_impls("cpu", np, selected=set(), log=lambda *a, **k: None)
    assert report["numpy"]["skipped"] == "not selected (--peers)"


# ---------------------------------------------------------------- a small --quick run

SMALL = ["--quick", "--device", "cpu", "--epoch-images", "256", "--epochs", "2", "--warmup-epochs", "1",
         "--sizes", "315722", "--repeats", "2", "--warmup", "1"]


def test_quick_run_json(tmp_path, capsys):
    out = tmp_path / "pc.json"
    assert pc.main(SMALL + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    d = json.loads(out.read_text())
    assert d["benchmark"] == "penalty_cost" and d["device"] == "cpu" and d["commit"] and d["date"]
    assert d["metadata"]["device"] == "cpu" and d["config"]["quick"] is True
    assert d["config"]["sizes"] == [315_722] and d["config"]["epoch_images"] == 256

    # item 1: epochs
    e = d["epochs"]
    assert e["images"] == 256 and e["steps_per_epoch"] == 4 and e["rounds"] == 2
    methods = e["methods"]
    assert methods[0] == "fused" and set(methods) == set(pc.METHODS)
    assert {(c["method"], c["reg"]) for c in e["cases"]} == {(m, r) for m in methods for r in pc.REGS}
    for c in e["cases"]:
        assert len(c["samples_s"]) == 2 and all(t > 0 for t in c["samples_s"]) and c["stats_s"]["n"] == 2
    assert "fused" in e["baseline"] and e["baseline_noise"] >= 0
    over = d["epoch_penalty_overhead"]
    assert set(over) == set(pc.METHODS)
    for m in pc.METHODS:
        assert set(over[m]) == {"l1", "l2", "l1l2"}
        for reg in pc.PENALIZED:
            assert (over[m][reg] is None) == (m not in methods)
            if over[m][reg] is not None:
                assert -0.9 < over[m][reg] < 10
                assert d["epoch_penalty_share"][m][reg]["n"] == 2

    # items 2-3: the update sweep and the peers
    rows = d["update"]["results"]
    fused = [r for r in rows if r["impl"] == "pyregnet-fused"]
    assert sorted(r["reg"] for r in fused) == sorted(pc.REGS)
    bw = d["roofline"]["bytes_per_s"]
    for r in rows:
        assert r["n"] == 315_722 and r["bytes"] == 7 * 4 * 315_722 and len(r["samples_s"]) == 2
        assert r["gb_per_s"] * 1e9 == pytest.approx(r["bytes"] / r["stats_s"]["median"])
        assert r["fraction_of_copy_bw"] == pytest.approx(r["gb_per_s"] * 1e9 / bw)
    peers = d["peers"]
    assert set(peers) == {i.name for i in pc.implementations() if i.kind == "peer"}
    assert peers["numpy"]["available"] and peers["numpy"]["check"]["ok"]
    assert any(r["impl"] == "numpy" for r in rows)
    for name in ("cupy-elementwise", "numba-cuda"):
        assert peers[name]["available"] is False and peers[name]["skipped"]
    for name, p in peers.items():
        assert p["available"] == (p["skipped"] is None)
        assert p["available"] == any(r["impl"] == name for r in rows)
        if not p["available"]:
            assert f"{name}" in printed and p["skipped"].split(" (")[0] in printed

    # item 5: targets
    by_device = {t["device"] for t in d["targets"]}
    assert by_device == {"cpu", "cuda"}
    cpu_target = next(t for t in d["targets"] if t["device"] == "cpu")
    assert cpu_target["verdict"] in ("PASS", "PASS (within noise)", "FAIL")
    assert cpu_target["verdict"].split(" (")[0] in printed
    assert all(t["verdict"] == "n/a" for t in d["targets"] if t["device"] == "cuda")
    if d["plot"]:
        assert Path(d["plot"]) == out.with_suffix(".png") and out.with_suffix(".png").stat().st_size > 0
    else:
        assert d["plot_skipped"]


def test_update_only_without_optional_peers(tmp_path, monkeypatch, capsys):
    for module in ("torch", "numba", "cupy"):
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "pc.json"
    assert pc.main(["--quick", "--device", "cpu", "--no-epochs", "--no-plot", "--sizes", "1000", "--repeats", "1",
                    "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["epoch_penalty_overhead"] is None and d["epochs"]["cases"] == [] and d["plot"] is None
    assert {r["impl"] for r in d["update"]["results"]} >= {"pyregnet-fused", "numpy"}
    for name in ("torch-fused", "torch-foreach", "numba-cpu"):
        assert "not installed" in d["peers"][name]["skipped"] and f"{name}" in printed
    assert next(t for t in d["targets"] if t["device"] == "cpu")["verdict"] == "n/a"


def test_bad_arguments(capsys):
    assert pc.main(["--device", "cpu", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert pc.main(["--device", "cpu", "--sizes", "abc"]) == 2
    assert pc.main(["--device", "cpu", "--peers", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert pc.main(["--device", "cpu", "--epoch-images", "10"]) == 2
