"""bench/epoch_time.py: the FLOP, scaling, ratio and PASS/FAIL arithmetic on hand-made numbers;
PyTorch's augmentation (a pixel table) against pyregnet's reference augmentation; PyTorch's two
penalty forms against each other; and the JSON of a tiny CPU run in a subprocess, with PyTorch
when it is installed and with it made unimportable (the PyTorch parts are skipped, and the JSON
and the report say why)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyregnet import data as datasets
from pyregnet import reference
from pyregnet.regularizers import Penalty

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import epoch_time as et  # noqa: E402

try:
    import torch
    TORCH_SKIP = None
except ImportError as e:
    torch = None
    TORCH_SKIP = f"PyTorch is not installed ({e}); the benchmark's PyTorch parts are skipped"


# ---------------------------------------------------------------- arithmetic

def test_conv_layers_and_flops_by_hand():
    conv1, conv2 = et.conv_layers(64)
    assert [conv1[k] for k in "N C H W K R S P Q".split()] == [64, 3, 32, 32, 32, 3, 3, 30, 30]
    assert [conv2[k] for k in "N C H W K R S P Q".split()] == [64, 32, 15, 15, 64, 3, 3, 13, 13]
    assert et.conv_pass_flops(conv1) == 2 * 64 * 32 * 30 * 30 * 3 * 3 * 3 == 99_532_800
    assert et.conv_pass_flops(conv2) == 2 * 64 * 64 * 13 * 13 * 32 * 3 * 3 == 398_721_024


def test_scaled_epoch():
    assert et.scaled_epoch_s(0.1, 0.02, 50_000, 10_000) == pytest.approx(0.12)   # full sizes: unchanged
    assert et.scaled_epoch_s(1.0, 0.5, 25_000, 5_000) == pytest.approx(3.0)      # both halves doubled
    assert et.scaled_epoch_s(1.0, 1.0, 256, 128) == pytest.approx(50_000 / 256 + 10_000 / 128)


def test_make_target_verdicts():
    t = et.make_target("k", "x <= 0.2", 0.15, 0.2, "<=", "cuda")
    assert (t["pass"], t["verdict"], t["applies"]) == (True, "PASS", True)
    assert et.make_target("k", "", 0.2, 0.2, "<=", "cuda")["verdict"] == "PASS"       # the bound itself passes
    assert et.make_target("k", "", 0.21, 0.2, "<=", "cuda")["verdict"] == "FAIL"
    assert et.make_target("k", "", 3.0, 3.0, ">=", "cuda")["verdict"] == "PASS"
    assert et.make_target("k", "", 2.99, 3.0, ">=", "cuda")["verdict"] == "FAIL"
    assert et.make_target("k", "", 1.0, 1.0, ">", "cuda")["verdict"] == "FAIL"         # strictly faster
    assert et.make_target("k", "", 1.01, 1.0, ">", "cuda")["verdict"] == "PASS"
    none = et.make_target("k", "", None, 1.0, ">", "cuda", "did not run")
    assert (none["pass"], none["verdict"], none["detail"]) == (None, "n/a", "did not run")
    cpu = et.make_target("k", "", 0.1, 0.2, "<=", "cpu")
    assert cpu["verdict"] == "PASS" and cpu["applies"] is False                          # informational
    with pytest.raises(ValueError, match="op"):
        et.make_target("k", "", 1.0, 1.0, "<", "cuda")


def _summary(train, evals, n_train=50_000, n_val=10_000):
    return et.epoch_summary({"train_s": train, "eval_s": evals}, n_train, n_val)


def test_epoch_summary_by_hand():
    s = _summary([0.10, 0.12, 0.11], [0.02, 0.01, 0.03])
    assert s["median_s"]["train_s"] == pytest.approx(0.11)
    assert s["median_s"]["eval_s"] == pytest.approx(0.02)
    assert s["median_s"]["total_s"] == pytest.approx(0.13)                # of the per-epoch totals 0.12 0.13 0.14
    assert s["stats"]["total_s"]["n"] == 3 and s["stats"]["total_s"]["min"] == pytest.approx(0.12)
    assert s["spread_s"] == pytest.approx(0.138 - 0.122)                  # p90 - p10, linear interpolation
    assert s["images_per_s"]["train"] == pytest.approx(50_000 / 0.11)
    assert s["images_per_s"]["eval"] == pytest.approx(10_000 / 0.02)
    assert s["images_per_s"]["total"] == pytest.approx(60_000 / 0.13)
    assert s["scaled_total_s"] == pytest.approx(0.13)


def test_epoch_targets_by_hand():
    summaries = {"pyregnet-graph": _summary([0.13], [0.02]), "pyregnet-eager": _summary([0.5], [0.1]),
                 "torch-eager": _summary([0.5], [0.1]), "torch-compile": _summary([0.14], [0.02])}
    mine, ratios = et.epoch_ratios(summaries)
    assert mine == "pyregnet-graph"
    assert ratios == pytest.approx({"pyregnet-eager": 4.0, "torch-eager": 4.0, "torch-compile": 16 / 15})
    epoch, eager, compiled = et.epoch_targets(summaries, "cuda", 50_000, 10_000)
    assert (epoch["key"], epoch["value"], epoch["verdict"]) == ("epoch_time", pytest.approx(0.15), "PASS")
    assert (eager["key"], eager["value"], eager["verdict"]) == ("vs_torch_eager", pytest.approx(4.0), "PASS")
    assert (compiled["key"], compiled["verdict"]) == ("vs_torch_compile", "PASS")
    assert all(t["applies"] for t in (epoch, eager, compiled))

    summaries["torch-compile"] = _summary([0.12], [0.02])      # compile faster: FAIL
    summaries["torch-eager"] = _summary([0.4], [0.04])         # 2.93x: FAIL
    _, eager, compiled = et.epoch_targets(summaries, "cuda", 50_000, 10_000)
    assert eager["verdict"] == "FAIL" and eager["value"] == pytest.approx(0.44 / 0.15)
    assert compiled["verdict"] == "FAIL" and compiled["value"] == pytest.approx(0.14 / 0.15)

    # run on a fifth of the images: the 0.2 s target applies to the scaled epoch
    small = {"pyregnet-graph": _summary([0.03], [0.005], 10_000, 2_000), "pyregnet-eager": None,
             "torch-eager": None, "torch-compile": None}
    epoch, eager, compiled = et.epoch_targets(small, "cuda", 10_000, 2_000)
    assert epoch["value"] == pytest.approx(0.175) and epoch["verdict"] == "PASS" and "scaled" in epoch["detail"]
    assert eager["verdict"] == compiled["verdict"] == "n/a" and "did not run" in eager["detail"]

    # no graph (the CPU): the eager pyregnet stands in, and the detail says so
    cpu = {"pyregnet-graph": None, "pyregnet-eager": _summary([2.0], [0.5]), "torch-eager": _summary([3.0], [0.5]),
           "torch-compile": None}
    epoch, eager, _ = et.epoch_targets(cpu, "cpu", 50_000, 10_000)
    assert epoch["verdict"] == "FAIL" and not epoch["applies"] and "pyregnet-eager" in epoch["detail"]
    assert eager["value"] == pytest.approx(3.5 / 2.5) and eager["verdict"] == "FAIL"
    nothing = {name: None for name in et.CONTENDERS}
    assert [t["verdict"] for t in et.epoch_targets(nothing, "cuda", 50_000, 10_000)] == ["n/a"] * 3


def _update_row(n, fraction):
    return {"n": n, "fraction_of_copy_bw": fraction, "gb_per_s": fraction * 4000}


def test_update_target_by_hand():
    big = 16 * 2**20
    rows = [_update_row(315_722, 0.2), _update_row(big, 0.93), _update_row(4 * big, 0.91)]
    t = et.update_target(rows, "cuda")
    assert t["verdict"] == "PASS" and t["value"] == pytest.approx(0.91)     # the worst size >= 16M counts
    rows.append(_update_row(2 * big, 0.89))
    assert et.update_target(rows, "cuda")["verdict"] == "FAIL"
    assert et.update_target(rows[:1], "cuda")["verdict"] == "n/a"           # small sizes do not count
    assert et.UPDATE_TARGET == 0.90 and et.UPDATE_MIN_N == big


def test_conv_targets_by_hand():
    def row(layer, what, ratio, target=True):
        side = {"gflops_per_s": 100.0}
        return {"layer": layer, "pass": what, "ratio_to_torch": ratio, "target": target,
                "pyregnet": side, "torch": None if ratio is None else side}
    rows = [row("conv1", "forward", 0.6), row("conv1", "backward dX+dW", 0.4),
            row("conv1", "backward dW (as trained)", 0.1, target=False), row("conv2", "forward", None)]
    t = et.conv_targets(rows, "cuda")
    assert [x["verdict"] for x in t] == ["PASS", "FAIL", "n/a"]              # the as-trained row is information
    assert [x["key"] for x in t] == ["conv_conv1_forward", "conv_conv1_backward", "conv_conv2_forward"]


def test_kernel_sums_by_hand():
    rows = [{"op": "a", "reg": "all", "ms": 1.0, "roofline_ms": 0.5},
            {"op": "b", "reg": "none", "ms": 2.0, "roofline_ms": 0.5},
            {"op": "c", "reg": "l1l2", "ms": 3.0, "roofline_ms": 2.0}]
    s = et.kernel_sums(rows, steps=10)
    assert s["none"]["ms_per_step"] == 3.0 and s["none"]["roofline_ms_per_step"] == 1.0
    assert s["none"]["pct_of_roofline"] == pytest.approx(100 / 3)
    assert s["l1l2"]["ms_per_step"] == 4.0 and s["l1l2"]["epoch_s_kernels_alone"] == pytest.approx(0.04)
    assert s["l1l2"]["epoch_s_roofline"] == pytest.approx(0.025)


def test_host_values_are_not_captured():
    """Ops returning a Python number synchronized to read it: the GPU timer does not capture them."""
    assert et.returns_host_value(1.5) and et.returns_host_value((1.5, np.zeros(3), 7))
    assert et.returns_host_value([np.zeros(2), 3])
    assert not et.returns_host_value(None) and not et.returns_host_value(np.zeros(3))
    assert not et.returns_host_value((np.zeros(3), None, np.ones(2)))


def test_cpu_timer_counts_calls():
    calls = []
    timer = et.OpTimer("cpu", warmup=2, repeats=3)
    samples = timer(lambda: calls.append(1))
    assert len(calls) == 5 and len(samples) == 3 and all(t >= 0 for t in samples)
    assert timer.runs == [{"reps": 1, "method": "perf_counter per call", "host_s": None, "eager_s": None,
                           "capture_error": None}]


# ---------------------------------------------------------------- PyTorch's augmentation

def test_draw_codes_round_trip():
    span = 2 * et.MAX_SHIFT + 1
    table = et.shift_flip_table()
    assert table.shape == (span * span * 2, 32 * 32)
    seen = set()
    for d in range(len(table)):
        dy, dx, flip = et.decode_draw(d)
        assert -et.MAX_SHIFT <= dy <= et.MAX_SHIFT and -et.MAX_SHIFT <= dx <= et.MAX_SHIFT
        assert et.encode_draw(dy, dx, flip) == d
        seen.add((dy, dx, flip))
    assert len(seen) == len(table)                      # every (shift, flip) exactly once: uniform draws
    assert np.array_equal(table[et.encode_draw(0, 0, False)], np.arange(32 * 32))   # identity


def _images(n=6, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("step", [0, 1, 7])
def test_pixel_table_is_pyregnets_augmentation(step):
    """The table lookup with pyregnet's own draws reproduces reference.augment_batch exactly:
    the same shifts, nearest-edge fill and flips, only the random numbers differ in the benchmark."""
    images = _images()
    index = np.array([3, 0, 5, 1, 1, 4, 2, 0])
    dy, dx, flips = reference.augment_draws(11, step, len(index), et.MAX_SHIFT, True)
    draws = np.array([et.encode_draw(a, b, f) for a, b, f in zip(dy, dx, flips)])
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3, 32 * 32)
    got = et.gather_augment(flat, index, draws, et.shift_flip_table(), np.arange(3))
    ref = reference.augment_batch(images, index, seed=11, step=step, max_shift=et.MAX_SHIFT, flip=True)
    assert got.dtype == np.uint8 and got.shape == (len(index), 3, 32 * 32)
    np.testing.assert_array_equal(got.reshape(ref.shape) / 255.0, ref)


def _tiny_dataset(n_train=96, n_val=40):
    return datasets.synthetic(n_train=n_train, n_test=n_val, seed=3)


@pytest.mark.skipif(torch is None, reason=str(TORCH_SKIP))
def test_torch_augmentation_matches_the_reference():
    ds = _tiny_dataset()
    c = et.TorchContender(torch, "torch-eager", "cpu", ds, Penalty(), 8, 0, "foreach")
    index = np.array([5, 17, 0, 95, 40, 40])
    dy, dx, flips = reference.augment_draws(2, 3, len(index), et.MAX_SHIFT, True)
    draws = [et.encode_draw(a, b, f) for a, b, f in zip(dy, dx, flips)]
    got = c.augment(torch.tensor(index), torch.tensor(draws)).numpy()
    ref = reference.augment_batch(ds.x_train, index, seed=2, step=3, max_shift=et.MAX_SHIFT, flip=True)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(torch is None, reason=str(TORCH_SKIP))
def test_torch_penalty_forms_agree():
    """--torch-penalty loss (autograd) and foreach (multi-tensor ops) give the same step; large
    lambdas so that a missing or wrong term shows."""
    ds = _tiny_dataset()
    pen = Penalty("l1l2", 1e-2, 1e-2)
    idx, draws = torch.arange(16), torch.arange(16) % 98
    out = {}
    for mode, p in (("loss", pen), ("foreach", pen), ("none", Penalty())):
        c = et.TorchContender(torch, "torch-eager", "cpu", ds, p, 16, 0, "foreach", penalty_mode="foreach"
                              if mode == "foreach" else "loss")
        c.opt.zero_grad(set_to_none=True)
        loss, total, correct = c.step(idx, draws)
        out[mode] = (float(loss), float(total), torch.cat([q.detach().flatten() for q in c.net.parameters()]))
    assert out["loss"][0] == pytest.approx(out["foreach"][0], rel=1e-6)            # same data loss
    assert out["loss"][1] == pytest.approx(out["foreach"][1], rel=1e-5)            # same loss with the penalty
    assert out["loss"][1] > out["loss"][0] + 1e-3                                  # ... which is in it
    diff_forms = float((out["loss"][2] - out["foreach"][2]).abs().max())
    diff_none = float((out["loss"][2] - out["none"][2]).abs().max())
    print(f"max |params(loss) - params(foreach)| {diff_forms:.2e}; vs no penalty {diff_none:.2e}")
    assert diff_forms < 1e-6 and diff_none > 1e-5


# ---------------------------------------------------------------- a tiny run, in a subprocess

N_TRAIN, N_VAL = 256, 128
SIZES = (315_722, 4096)
RUN = ["--device", "cpu", "--quick", "--dataset", "synthetic", "--train-size", str(N_TRAIN), "--val-size",
       str(N_VAL), "--epochs", "1", "--warmup", "0", "--repeats", "2",
       "--update-sizes", ",".join(str(n) for n in SIZES)]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(tmp_path, args, no_torch=False):
    out = tmp_path / "epoch_time.json"
    script = str(BENCH / "epoch_time.py")
    argv = [script] + args + ["--out", str(out)]
    if no_torch:  # `import torch` raises ImportError in the benchmark's process
        cmd = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; "
               f"sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"]
    else:
        cmd = [sys.executable] + argv
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    print(proc.stderr[-4000:], file=sys.stderr)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout, proc.stderr


def _check_stats(stats, samples):
    assert stats["n"] == len(samples) and stats["median"] == pytest.approx(float(np.median(samples)))
    assert 0 < stats["min"] <= stats["p10"] <= stats["median"] <= stats["p90"] <= stats["max"]


def _check_epoch(d, torch_ran):
    e = d["epoch"]
    assert (e["train_images"], e["val_images"], e["batch"]) == (N_TRAIN, N_VAL, 64)
    assert e["steps_per_epoch"] == math.ceil(N_TRAIN / 64) and e["reg"] == "l1l2"
    pen = Penalty.with_defaults("l1l2")
    assert e["lambda"] == {"l1": pen.l1, "l2": pen.l2}
    c = e["contenders"]
    assert list(c) == list(et.CONTENDERS)
    assert not c["pyregnet-graph"]["ran"] and "GPU" in c["pyregnet-graph"]["skipped"]
    assert not c["torch-compile"]["ran"]
    assert ("--compile" if torch_ran else "PyTorch is not installed") in c["torch-compile"]["skipped"]
    assert e["headline"] == "pyregnet-eager"
    ran = ["pyregnet-eager"] + (["torch-eager"] if torch_ran else [])
    for name in ran:
        r = c[name]
        assert r["ran"] and r["error"] is None and r["skipped"] is None, r
        train, evals = r["samples"]["train_s"], r["samples"]["eval_s"]
        assert len(train) == len(evals) == 1 and train[0] > 0 and evals[0] > 0
        _check_stats(r["stats"]["train_s"], train)
        total = r["median_s"]["total_s"]
        assert total == pytest.approx(train[0] + evals[0])
        assert r["images_per_s"]["train"] == pytest.approx(N_TRAIN / train[0])
        assert r["images_per_s"]["total"] == pytest.approx((N_TRAIN + N_VAL) / total)
        assert r["scaled_total_s"] == pytest.approx(et.scaled_epoch_s(train[0], evals[0], N_TRAIN, N_VAL))
        m = r["metrics_last_epoch"]
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["val_acc"] <= 1
        assert math.isfinite(m["train_loss"]) and m["train_loss"] >= m["train_data_loss"] > 0   # + the penalty
    assert set(e["ratios"]) == set(ran) - {"pyregnet-eager"}
    if torch_ran:
        mine = c["pyregnet-eager"]["median_s"]["total_s"]
        assert e["ratios"]["torch-eager"] == pytest.approx(c["torch-eager"]["median_s"]["total_s"] / mine)
        assert "fused=True" in c["torch-eager"]["setup"]["adam"] or "foreach=True" in c["torch-eager"]["setup"]["adam"]
    else:
        assert not c["torch-eager"]["ran"] and "PyTorch" in c["torch-eager"]["skipped"]


def _check_targets(d, stdout):
    targets = {t["key"]: t for t in d["targets"]}
    assert {"epoch_time", "vs_torch_eager", "vs_torch_compile", "update_bandwidth"} <= set(targets)
    for t in d["targets"]:
        assert t["applies"] is False and t["device"] == "cpu"                 # the GPU's targets, informational
        if t["value"] is None:
            assert t["verdict"] == "n/a"
        else:
            ok = {"<=": t["value"] <= t["threshold"], ">=": t["value"] >= t["threshold"],
                  ">": t["value"] > t["threshold"]}[t["op"]]
            assert t["verdict"] == ("PASS" if ok else "FAIL")
        assert f"{t['verdict']}: {t['target']} [{d['metadata']['device_description']}]" in stdout
    assert targets["update_bandwidth"]["verdict"] == "n/a"                   # no size >= 16M in this run
    assert targets["vs_torch_compile"]["verdict"] == "n/a"


def _check_update(d):
    rows = d["update"]
    bw = d["roofline"]["bytes_per_s"]
    assert [r["n"] for r in rows] == list(SIZES)
    for r in rows:
        assert r["bytes"] == 7 * 4 * r["n"] and r["penalized"] == max(0, r["n"] - 234)
        assert r["gb_per_s"] * 1e9 == pytest.approx(r["bytes"] / r["stats_s"]["median"])
        assert r["pct_of_copy_bw"] == pytest.approx(100 * r["gb_per_s"] * 1e9 / bw)
        _check_stats(r["stats_s"], r["samples_s"])


def _check_conv(d, torch_ran):
    rows = d["conv"]
    assert [(r["layer"], r["pass"]) for r in rows] == [
        ("conv1", "forward"), ("conv1", "backward dX+dW"), ("conv1", "backward dW (as trained)"),
        ("conv2", "forward"), ("conv2", "backward dX+dW")]
    by_hand = {"conv1": 99_532_800, "conv2": 398_721_024}
    for r in rows:
        passes = 2 if r["pass"] == "backward dX+dW" else 1
        assert r["flops"] == passes * by_hand[r["layer"]]
        mine = r["pyregnet"]
        assert mine["ms"] > 0 and mine["gflops_per_s"] == pytest.approx(r["flops"] / mine["stats_s"]["median"] / 1e9)
        assert mine["method"] == "perf_counter per call" and mine["reps_per_sample"] == 1
        if torch_ran:
            assert r["ratio_to_torch"] == pytest.approx(mine["gflops_per_s"] / r["torch"]["gflops_per_s"])
            assert r["max_rel_err"] < 1e-4, r                              # the same convolution
        else:
            assert r["torch"] is None and r["ratio_to_torch"] is None
    conv_targets = [t for t in d["targets"] if t["key"].startswith("conv_")]
    assert len(conv_targets) == 4
    assert all((t["verdict"] == "n/a") == (not torch_ran) for t in conv_targets)


def _check_kernels(d):
    k = d["kernels"]
    ops = [r["op"] for r in k["rows"]]
    assert any("conv1" in o for o in ops) and any("softmax" in o for o in ops) and any("adam" in o for o in ops)
    for r in k["rows"]:
        assert r["ms"] > 0 and r["bytes"] > 0 and r["roofline_ms"] > 0 and r["method"] == "perf_counter per call"
        assert r["pct_of_roofline"] == pytest.approx(100 * r["roofline_ms"] / r["ms"])
    for reg, s in k["sums"].items():
        sel = [r for r in k["rows"] if r["reg"] in ("all", reg)]
        assert s["ms_per_step"] == pytest.approx(sum(r["ms"] for r in sel))
        assert s["epoch_s_kernels_alone"] == pytest.approx(s["ms_per_step"] * k["steps_per_epoch"] / 1e3)


def test_tiny_cpu_run(tmp_path):
    d, stdout, stderr = _run(tmp_path, RUN)
    assert d["benchmark"] == "epoch_time" and d["device"] == "cpu" and d["commit"] and d["date"]
    assert d["metadata"]["device"] == "cpu" and d["config"]["quick"] is True and d["config"]["compile"] is False
    assert d["errors"] == {}, d["errors"]
    torch_ran = d["torch"]["available"]
    assert torch_ran == (torch is not None)
    _check_epoch(d, torch_ran)
    _check_conv(d, torch_ran)
    _check_update(d)
    _check_kernels(d)
    _check_targets(d, stdout)
    assert "1. epoch" in stdout and "timing 1 epoch(s)" in stderr       # report on stdout, progress on stderr


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed: test_tiny_cpu_run already ran without it")
def test_tiny_cpu_run_without_torch(tmp_path):
    d, stdout, _ = _run(tmp_path, RUN + ["--no-update", "--no-kernels"], no_torch=True)
    assert d["torch"]["available"] is False and "PyTorch is not installed" in d["torch"]["skipped"]
    assert d["errors"] == {} and d["update"] is None and d["kernels"] is None
    _check_epoch(d, torch_ran=False)
    _check_conv(d, torch_ran=False)
    assert "torch-eager     skipped: PyTorch is not installed" in stdout


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        et.main(["--device", "cpu", "--contenders", "pyregnet-eager,nope"])
    assert e.value.code == 2 and "--contenders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        et.main(["--device", "cpu", "--epochs", "0"])
    with pytest.raises(SystemExit):
        et.main(["--device", "cpu", "--compile-variants", "all"])
    assert et.main(["--device", "cpu", "--train-size", "10", "--val-size", "10"]) == 2
    assert "less than one batch" in capsys.readouterr().err
