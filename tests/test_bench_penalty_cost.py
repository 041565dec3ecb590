"""bench/penalty_cost.py: the overhead and target arithmetic on hand-made numbers; every
implementation of the update, pyregnet's modes included, checked against pyregnet.reference (and
a peer that computes something else refused); peers skipped with a reason when they cannot be
imported; and the JSON of a small --quick run."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pyregnet import optim

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import penalty_cost as pc  # noqa: E402

TORCH = importlib.util.find_spec("torch")


def test_sizes_parse():
    assert [pc._size(s) for s in ("315722", "1M", "16M", "1e8", "4k")] == [315_722, 2**20, 16 * 2**20, 10**8, 4096]
    for bad in ("abc", "0", "1.5", "-3"):
        with pytest.raises(Exception):
            pc._size(bad)


def test_overheads_by_hand():
    base = [1.00, 1.10, 0.90, 1.00, 1.00]        # median 1.0; p10 0.94, p90 1.06 (linear interpolation)
    samples = {("adam", "fused", "none"): base, ("adam", "aa", "none"): [1.02] * 5}
    for mode in optim.UPDATE_MODES:
        samples.update({("adam", mode, "l1"): [1.01, 1.111, 0.909, 1.01, 1.01],   # +1% every round
                        ("adam", mode, "l2"): [1.02, 1.10, 0.90, 1.00, 1.00],     # +2% in one round only
                        ("adam", mode, "l1l2"): [2.0] * 5})
    o = pc.overheads(samples, ["adam"])["adam"]
    assert o["noise"] == pytest.approx((1.06 - 0.94) / 1.0) and o["aa"] == pytest.approx(0.02)
    c = o["cases"]["proximal"]
    assert c["l1"]["overhead"] == pytest.approx(0.01) and c["l2"]["overhead"] == pytest.approx(0.0)
    assert c["l1"]["paired"]["median"] == pytest.approx(0.01) and c["l1"]["paired"]["p90"] == pytest.approx(0.01)
    assert c["l2"]["paired"]["median"] == pytest.approx(0.0) and c["l2"]["paired"]["max"] == pytest.approx(0.02)
    assert c["l1l2"]["overhead"] == pytest.approx(1.0) and c["l1l2"]["paired"]["max"] == pytest.approx(2.0 / 0.9 - 1)
    assert len(pc.epoch_cases(["adam", "sgd"])) == 2 * (2 + 4 * 3)


def _row(op, reg, n, ms, fraction):
    return {"op": op, "reg": reg, "n": n, "ms": ms, "fraction_of_copy_bw": fraction}


def test_targets_by_hand():
    big = 16 * 2**20
    rows = [_row("pyregnet-adam-fused", "l1l2", big, 1.0, 0.93), _row("pyregnet-adam-fused", "none", big, 0.9, 0.95),
            _row("pyregnet-adam-fused", "l1l2", 1000, 0.01, 0.10),    # small sizes do not count for bandwidth
            _row("pyregnet-adam-unfused", "l1l2", big, 2.0, 0.5),     # nor do the other modes
            _row("torch-fused", "l1l2", big, 1.2, 0.8), _row("torch-foreach", "l1l2", 1000, 0.02, 0.05)]
    over = {"adam": {"noise": 0.01, "cases": {"fused": {"l1": {"overhead": 0.0}, "l2": {"overhead": 0.004},
                                                        "l1l2": {"overhead": 0.015}}}}}
    bw, peers, l1, l2, l1l2 = pc.targets_of("cuda", rows, over)
    assert bw["pass"] is True and bw["value"] == pytest.approx(0.93) and bw["applies"]
    assert peers["pass"] is True and peers["value"] == pytest.approx(1.0 / 1.2)   # the worst: torch at 16M
    assert l1l2["verdict"] == "FAIL" and l1l2["applies"] and not l1["applies"]     # the GPU's: l1l2 only
    over["adam"]["noise"] = 0.02
    assert pc.targets_of("cuda", rows, over)[4]["verdict"] == "PASS (within noise)"
    rows[0]["fraction_of_copy_bw"], rows[4]["ms"] = 0.85, 0.9
    bw, peers = pc.targets_of("cuda", rows, None)[:2]
    assert bw["pass"] is False and peers["pass"] is False and "torch-fused" in peers["detail"]
    cpu = pc.targets_of("cpu", rows[:1], over)
    assert [t["applies"] for t in cpu] == [False, False, True, True, True] and cpu[1]["verdict"] == "n/a"


IMPLS = {name: (opt, mode, build) for name, opt, mode, build in pc.implementations(["adam", "sgd"])}


@pytest.mark.parametrize("name", list(IMPLS))
def test_check_against_reference(name):
    optimizer, mode, build = IMPLS[name]
    if name.startswith("torch"):
        pytest.importorskip("torch")
    ok, errors = pc.check(build, optimizer, mode, np, name.startswith("pyregnet"))
    print(name, errors)
    assert ok and set(errors) == {"none", "l1", "l2", "l1l2"}
    assert max(errors.values()) < 1e-6


def test_a_peer_that_computes_something_else_is_refused(monkeypatch):
    def no_l1(w, g, state, pen, step0, into):   # forgets the L1 term
        adam = pc.pyregnet_build("adam", "fused")
        return adam(w, g, state, type(pen)("l2", 0.0, pen.l2) if pen.l2 else type(pen)(), step0, into)

    ok, errors = pc.check(no_l1, "adam", "fused", np, False)
    assert not ok and errors["l2"] < 1e-7 and errors["l1"] > 1e-6
    monkeypatch.setattr(pc, "implementations", lambda optimizers: [("peer-no-l1", "adam", "fused", no_l1)])
    runnable, report = pc.prepare("cpu", ["adam"], {"peer-no-l1"})
    assert runnable == [] and "computes something else" in report["peer-no-l1"]["skipped"]


def test_missing_peers_are_skipped_with_a_reason(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    runnable, report = pc.prepare("cpu", ["adam"], set(pc.PEERS) - {"torch-foreach"})
    assert [r[0] for r in runnable] == [f"pyregnet-adam-{m}" for m in optim.UPDATE_MODES]
    assert "not installed" in report["torch-fused"]["skipped"] and not report["torch-fused"]["available"]
    assert report["torch-foreach"]["skipped"] == "not selected (--peers)"
    assert "torch-fused              skipped" in capsys.readouterr().out


# ---------------------------------------------------------------- a small --quick run

SMALL = ["--quick", "--device", "cpu", "--batch-size", "32", "--epoch-images", "64", "--epochs", "2",
         "--warmup-epochs", "0", "--sizes", "4096", "--repeats", "2", "--peers", "torch-foreach"]


def test_quick_run_json(tmp_path):
    out = tmp_path / "pc.json"
    assert pc.main(SMALL + ["--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["benchmark"] == "penalty_cost" and d["metadata"]["device"] == "cpu" and d["metadata"]["commit"]
    assert d["config"]["sizes"] == [4096] and d["config"]["epoch_images"] == 64 and d["config"]["quick"]
    cases = d["epochs"]["cases"]
    assert {(c["optimizer"], c["mode"], c["reg"]) for c in cases} == set(pc.epoch_cases(["adam", "sgd"]))
    assert all(len(c["samples_s"]) == 2 and min(c["samples_s"]) > 0 for c in cases)
    for o in ("adam", "sgd"):
        over = d["epochs"]["overheads"][o]
        assert over["noise"] >= 0 and set(over["cases"]) == set(optim.UPDATE_MODES)
        base = next(c["samples_s"] for c in cases if (c["optimizer"], c["mode"], c["reg"]) == (o, "fused", "none"))
        l1 = next(c["samples_s"] for c in cases if (c["optimizer"], c["mode"], c["reg"]) == (o, "loss", "l1"))
        assert over["cases"]["loss"]["l1"]["overhead"] == pytest.approx(np.median(l1) / np.median(base) - 1)
    rows, bw = d["update"], d["roofline"]["bytes_per_s"]
    impls, peer = d["implementations"], ["torch-foreach"] if TORCH else []
    ours = {f"pyregnet-{o}-{m}" for o in ("adam", "sgd") for m in optim.UPDATE_MODES}
    assert {r["op"] for r in rows} == ours | set(peer)
    assert len(rows) == 2 * (4 + 3 * 3) + 4 * len(peer)   # without a penalty every mode is the fused update
    for r in rows:
        assert r["n"] == 4096 and r["bytes"] == (5 if "-sgd-" in r["op"] else 7) * 4 * 4096
        assert r["gb_per_s"] * 1e9 == pytest.approx(r["bytes"] / r["stats_s"]["median"])
        assert r["fraction_of_copy_bw"] == pytest.approx(r["gb_per_s"] * 1e9 / bw)
    assert impls["torch-foreach"]["available"] == bool(TORCH)
    assert impls["torch-fused"]["skipped"] == "not selected (--peers)"
    cpu = [t for t in d["targets"] if t["applies"]]
    assert [t["key"] for t in cpu] == ["epoch_l1", "epoch_l2", "epoch_l1l2"]
    assert all(t["verdict"] in ("PASS", "PASS (within noise)", "FAIL") for t in cpu)


def test_update_only_without_optional_peers(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "pc.json"
    assert pc.main(["--quick", "--device", "cpu", "--no-epochs", "--optimizers", "sgd", "--sizes", "1000",
                    "--repeats", "1", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["epochs"] is None and {r["op"] for r in d["update"]} == {f"pyregnet-sgd-{m}" for m in optim.UPDATE_MODES}
    assert d["implementations"].keys() == {f"pyregnet-sgd-{m}" for m in optim.UPDATE_MODES}   # Adam's peers only
    assert all(t["verdict"] == "n/a" for t in d["targets"])


def test_bad_arguments(capsys):
    for argv, word in ((["--epochs", "0"], "--epochs"), (["--sizes", "abc"], "--sizes"), (["--peers", "nope"], "nope"),
                       (["--epoch-images", "10"], "--epoch-images"), (["--optimizers", "adamw"], "--optimizers")):
        assert pc.main(["--device", "cpu", *argv]) == 2
        err = capsys.readouterr().err
        assert word in err and err.count("\n") == 1, err

