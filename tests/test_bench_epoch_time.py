"""bench/epoch_time.py and its PyTorch baseline (bench/torch_net.py): the scaling, ratio and
PASS/FAIL arithmetic on hand-made numbers; PyTorch's augmentation (a pixel table) against
pyregnet's reference augmentation, its network, weights and penalty against pyregnet's; and the
JSON of a tiny CPU run in a subprocess, with PyTorch when it is installed and with it made
unimportable (the PyTorch parts are skipped, and the JSON and the report say why)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import pyregnet
from pyregnet import data as datasets
from pyregnet import model, reference
from pyregnet.regularizers import Penalty

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import epoch_time as et  # noqa: E402
import torch_net as tn  # noqa: E402

try:
    import torch
    TORCH_SKIP = None
except ImportError as e:
    torch = None
    TORCH_SKIP = f"PyTorch is not installed ({e}); the benchmark's PyTorch parts are skipped"


# ---------------------------------------------------------------- arithmetic

def _record(train, evals, warmup=()):
    return {"ran": True, "samples": {"train_s": train, "eval_s": evals}, "warmup_s": list(warmup)}


def _summary(train, evals, n_train=50_000, n_val=10_000, warmup=()):
    rec = _record(train, evals, warmup)
    rec.update(et.summary(rec, n_train, n_val))
    return rec


def test_summary_by_hand():
    s = _summary([0.10, 0.12, 0.11], [0.02, 0.01, 0.03], warmup=[0.5])
    assert s["median_s"]["train_s"] == pytest.approx(0.11) and s["median_s"]["eval_s"] == pytest.approx(0.02)
    assert s["median_s"]["total_s"] == pytest.approx(0.13)                # of the per-epoch totals 0.12 0.13 0.14
    assert s["stats"]["total_s"]["n"] == 3 and s["stats"]["total_s"]["min"] == pytest.approx(0.12)
    assert s["images_per_s"]["train"] == pytest.approx(50_000 / 0.11)
    assert s["images_per_s"]["total"] == pytest.approx(60_000 / 0.13)
    assert s["scaled_total_s"] == pytest.approx(0.13)                      # full sizes: unchanged
    assert s["first_epoch_overhead_s"] == pytest.approx(0.5 - 0.13)
    half = _summary([1.0], [0.5], 25_000, 5_000)
    assert half["scaled_total_s"] == pytest.approx(3.0) and half["first_epoch_overhead_s"] is None  # both doubled
    assert _summary([1.0], [1.0], 256, 128)["scaled_total_s"] == pytest.approx(50_000 / 256 + 10_000 / 128)


def test_epoch_targets_by_hand():
    records = {"pyregnet-graph": _summary([0.13], [0.02]), "pyregnet-eager": _summary([0.5], [0.1]),
               "torch-eager": _summary([0.5], [0.1]), "torch-compile": _summary([0.14], [0.02])}
    mine, ratios, (epoch, eager, compiled) = et.epoch_targets(records, "cuda")
    assert mine == "pyregnet-graph"
    assert ratios == pytest.approx({"pyregnet-eager": 4.0, "torch-eager": 4.0, "torch-compile": 16 / 15})
    assert (epoch["key"], epoch["value"], epoch["verdict"]) == ("epoch_time", pytest.approx(0.15), "PASS")
    assert (eager["key"], eager["value"], eager["verdict"]) == ("vs_torch_eager", pytest.approx(4.0), "PASS")
    assert (compiled["key"], compiled["verdict"]) == ("vs_torch_compile", "PASS")
    assert all(t["applies"] for t in (epoch, eager, compiled))

    records["torch-compile"] = _summary([0.12], [0.02])      # compile faster: FAIL
    records["torch-eager"] = _summary([0.4], [0.04])         # 2.93x: FAIL
    _, _, (_, eager, compiled) = et.epoch_targets(records, "cuda")
    assert eager["verdict"] == "FAIL" and eager["value"] == pytest.approx(0.44 / 0.15)
    assert compiled["verdict"] == "FAIL" and compiled["value"] == pytest.approx(0.14 / 0.15)

    # run on a fifth of the images: the 0.2 s target applies to the scaled epoch
    small = {name: {"ran": False} for name in et.CONTENDERS}
    small["pyregnet-graph"] = _summary([0.03], [0.005], 10_000, 2_000)
    _, _, (epoch, eager, compiled) = et.epoch_targets(small, "cuda")
    assert epoch["value"] == pytest.approx(0.175) and epoch["verdict"] == "PASS"
    assert eager["verdict"] == compiled["verdict"] == "n/a" and "did not run" in eager["detail"]

    # no graph (the CPU): the eager pyregnet stands in, and the detail says so
    cpu = {name: {"ran": False} for name in et.CONTENDERS}
    cpu["pyregnet-eager"], cpu["torch-eager"] = _summary([2.0], [0.5]), _summary([3.0], [0.5])
    mine, _, (epoch, eager, _) = et.epoch_targets(cpu, "cpu")
    assert mine == "pyregnet-eager" and epoch["verdict"] == "FAIL" and not epoch["applies"]
    assert "pyregnet-eager" in epoch["detail"] and eager["value"] == pytest.approx(3.5 / 2.5)
    nothing = {name: {"ran": False} for name in et.CONTENDERS}
    assert [t["verdict"] for t in et.epoch_targets(nothing, "cuda")[2]] == ["n/a"] * 3


class FakeContender:
    def __init__(self, fail_at=None):
        self.epochs, self.fail_at, self.setup = 0, fail_at, {}

    def train_epoch(self):
        self.epochs += 1
        if self.epochs == self.fail_at:
            raise RuntimeError("boom")
        return {}

    def evaluate(self):
        return {}

    def kernel_weights(self):
        return np.zeros(3, np.float32)


def test_a_contender_that_fails_sits_out_and_none_left_is_no_crash(monkeypatch):
    monkeypatch.setattr(et, "build", lambda name, *rest: FakeContender(2 if name == "torch-eager" else None))
    sizes = SimpleNamespace(y_train=[0] * 64, y_test=[0] * 10)
    args = SimpleNamespace(contenders=["pyregnet-eager", "torch-eager"], warmup=0, epochs=3)
    records = et.run_epochs(args, "cpu", sizes, None, None)
    assert records["pyregnet-eager"]["ran"] and len(records["pyregnet-eager"]["samples"]["train_s"]) == 3
    failed = records["torch-eager"]
    assert not failed["ran"] and failed["error"] == "timed epoch 2: RuntimeError: boom"
    assert len(failed["samples"]["train_s"]) == 1
    args.contenders = []   # nothing to time: every contender reported as skipped
    assert not any(r["ran"] for r in et.run_epochs(args, "cpu", sizes, None, None).values())


# ---------------------------------------------------------------- PyTorch's augmentation

def encode_draw(dy, dx, flip, max_shift=tn.MAX_SHIFT):   # tn.decode_draw's inverse
    span = 2 * max_shift + 1
    return (dy + max_shift) + span * (dx + max_shift) + span * span * int(bool(flip))


def test_draw_codes_round_trip():
    span = 2 * tn.MAX_SHIFT + 1
    table = tn.shift_flip_table()
    assert table.shape == (span * span * 2, 32 * 32)
    seen = set()
    for d in range(len(table)):
        dy, dx, flip = tn.decode_draw(d)
        assert -tn.MAX_SHIFT <= dy <= tn.MAX_SHIFT and -tn.MAX_SHIFT <= dx <= tn.MAX_SHIFT
        assert encode_draw(dy, dx, flip) == d
        seen.add((dy, dx, flip))
    assert len(seen) == len(table)                      # every (shift, flip) exactly once: uniform draws
    assert np.array_equal(table[encode_draw(0, 0, False)], np.arange(32 * 32))   # identity


def _draws(seed, step, n):
    dy, dx, flips = reference.augment_draws(seed, step, n, tn.MAX_SHIFT, True)
    return np.array([encode_draw(a, b, f) for a, b, f in zip(dy, dx, flips)])


@pytest.mark.parametrize("step", [0, 1, 7])
def test_pixel_table_is_pyregnets_augmentation(step):
    """The table lookup with pyregnet's own draws reproduces reference.augment_batch exactly:
    the same shifts, nearest-edge fill and flips, only the random numbers differ in the benchmark."""
    images = np.random.default_rng(1).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    index = np.array([3, 0, 5, 1, 1, 4, 2, 0])
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3, 32 * 32)
    got = tn.gather_augment(flat, index, _draws(11, step, len(index)), tn.shift_flip_table(), np.arange(3))
    ref = reference.augment_batch(images, index, seed=11, step=step, max_shift=tn.MAX_SHIFT, flip=True)
    assert got.dtype == np.uint8 and got.shape == (len(index), 3, 32 * 32)
    np.testing.assert_array_equal(got.reshape(ref.shape) / 255.0, ref)


@pytest.mark.skipif(torch is None, reason=str(TORCH_SKIP))
def test_torch_baseline_augments_as_the_reference_and_starts_from_pyregnets_weights():
    ds = datasets.synthetic(n_train=96, n_test=40, seed=3)
    net = tn.TorchNet(torch, "cpu", "l1l2")
    net.data(ds, 8)
    index = np.array([5, 17, 0, 95, 40, 40])
    x = tn.gather_augment(net.x_train, torch.tensor(index), torch.tensor(_draws(2, 3, len(index))), net.table,
                          net.channels)
    ref = reference.augment_batch(ds.x_train, index, seed=2, step=3, max_shift=tn.MAX_SHIFT, flip=True)
    np.testing.assert_allclose((x * (1.0 / 255.0)).view(len(index), 3, 32, 32).numpy(), ref, rtol=1e-6, atol=1e-7)
    # the same network and weights: pyregnet's forward pass gives PyTorch's logits
    xf = ref.astype(np.float32)
    logits, _ = model.forward(model.init_params(0), xf)
    with torch.no_grad():
        theirs = net.net(torch.from_numpy(xf)).numpy()
    np.testing.assert_allclose(logits, theirs, rtol=1e-4, atol=1e-5)
    data_loss, total, _ = net.loss(torch.from_numpy(xf), torch.tensor(ds.y_train[index]))
    pen = Penalty.with_defaults("l1l2")
    want = pen.value(model.init_params(0)[:model.N_KERNEL])
    assert float((total - data_loss).detach()) == pytest.approx(want, rel=1e-5)   # the penalty is in the loss


# ---------------------------------------------------------------- a tiny run, in a subprocess

N_TRAIN, N_VAL = 256, 128
RUN = ["--device", "cpu", "--quick", "--train-size", str(N_TRAIN), "--val-size",
       str(N_VAL), "--epochs", "2", "--warmup", "0"]


def _run(tmp_path, args, no_torch=False):
    out = tmp_path / "epoch_time.json"
    script = str(BENCH / "epoch_time.py")
    argv = [script] + args + ["--out", str(out)]
    if no_torch:  # `import torch` raises ImportError in the benchmark's process
        cmd = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; "
               f"sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"]
    else:
        cmd = [sys.executable] + argv
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=600)
    print(proc.stdout)
    print(proc.stderr[-4000:], file=sys.stderr)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def _check_epoch(d, torch_ran):
    e = d["epoch"]
    assert (e["train_images"], e["val_images"], e["batch"]) == (N_TRAIN, N_VAL, 64)
    assert e["steps_per_epoch"] == math.ceil(N_TRAIN / 64) and e["reg"] == "l1l2"
    pen = Penalty.with_defaults("l1l2")
    assert e["lambda"] == {"l1": pen.l1, "l2": pen.l2}
    c = e["contenders"]
    assert list(c) == list(et.CONTENDERS)
    assert not c["pyregnet-graph"]["ran"] and "GPU" in c["pyregnet-graph"]["skipped"]
    assert ("--compile" if torch_ran else "PyTorch is not installed") in c["torch-compile"]["skipped"]
    assert e["headline"] == "pyregnet-eager"
    ran = ["pyregnet-eager"] + (["torch-eager"] if torch_ran else [])
    for name in ran:
        r = c[name]
        assert r["ran"] and r["error"] is None and r["skipped"] is None, r
        train, evals = r["samples"]["train_s"], r["samples"]["eval_s"]
        assert len(train) == len(evals) == 2 and min(train) > 0 and min(evals) > 0
        s = r["stats"]["total_s"]
        assert s["n"] == 2 and s["median"] == pytest.approx(float(np.median([a + b for a, b in zip(train, evals)])))
        assert r["images_per_s"]["train"] == pytest.approx(N_TRAIN / r["median_s"]["train_s"])
        assert r["scaled_total_s"] == pytest.approx(r["median_s"]["train_s"] * 50_000 / N_TRAIN
                                                    + r["median_s"]["eval_s"] * 10_000 / N_VAL)
        w = r["kernel_weights_at_end"]
        assert w["weights"] == model.N_KERNEL and 0 <= w["exact_zeros"] + w["subnormal"] <= w["weights"]
        m = r["metrics_last_epoch"]
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["val_acc"] <= 1
        assert math.isfinite(m["train_loss"]) and m["train_loss"] >= m["train_data_loss"] > 0   # + the penalty
    assert set(e["ratios"]) == set(ran) - {"pyregnet-eager"}
    if torch_ran:
        mine = c["pyregnet-eager"]["median_s"]["total_s"]
        assert e["ratios"]["torch-eager"] == pytest.approx(c["torch-eager"]["median_s"]["total_s"] / mine)
    else:
        assert not c["torch-eager"]["ran"] and "PyTorch" in c["torch-eager"]["skipped"]


def _check_targets(d, stdout):
    assert [t["key"] for t in d["targets"]] == ["epoch_time", "vs_torch_eager", "vs_torch_compile"]
    for t in d["targets"]:
        assert t["applies"] is False and t["device"] == "cpu"                 # the GPU's targets, informational
        assert f"{t['verdict']}: {t['target']} [{d['metadata']['device_description']}]" in stdout
    assert d["targets"][2]["verdict"] == "n/a"


def test_tiny_cpu_run(tmp_path):
    d, stdout = _run(tmp_path, RUN)
    assert d["benchmark"] == "epoch_time" and d["metadata"]["device"] == "cpu" and d["metadata"]["commit"]
    assert d["config"]["quick"] is True and d["config"]["compile"] is False
    assert d["torch"]["available"] == (torch is not None)
    flush = pyregnet.build_info()["flush_denormals"]   # PyTorch follows the build unless told otherwise
    assert d["config"]["pyregnet_flush_denormals"] == d["config"]["torch_flush_denormal"] == flush
    assert d["config"]["data"].startswith("synthetic")
    _check_epoch(d, d["torch"]["available"])
    _check_targets(d, stdout)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed: test_tiny_cpu_run already ran without it")
def test_tiny_cpu_run_without_torch(tmp_path):
    d, stdout = _run(tmp_path, RUN, no_torch=True)
    assert d["torch"]["available"] is False and "PyTorch is not installed" in d["torch"]["skipped"]
    _check_epoch(d, torch_ran=False)
    assert "torch-eager     skipped: PyTorch is not installed" in stdout


def test_bad_arguments(capsys):
    for argv, word in ((["--contenders", "pyregnet-eager,nope"], "--contenders"), (["--epochs", "0"], "--epochs"),
                       (["--train-size", "10", "--val-size", "10"], "less than one batch"),
                       (["--data", "/no/such/cifar"], "--data: no CIFAR-10 data at /no/such/cifar")):
        assert et.main(["--device", "cpu", *argv]) == 2
        err = capsys.readouterr().err
        assert word in err and err.count("\n") == 1, err
