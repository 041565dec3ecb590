"""The trainer end to end on synthetic data on the CPU: the loss falls, L1 raises sparsity,
resume equals an uninterrupted run, the same seed gives the same metrics, divergence stops
cleanly, and bad command lines exit 2 with one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pyregnet import ops, train

TINY = ["--dataset", "synthetic", "--train-size", "384", "--val-size", "128", "--device", "cpu"]
TIMING = set(train.TIMING_KEYS)


def run(tmp_path, name, *args):
    out = tmp_path / name
    code = train.main([*TINY, *args, "--out", str(out)])
    return code, out


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_loss_falls_and_outputs_are_written(tmp_path):
    code, out = run(tmp_path, "a", "--epochs", "3", "--reg", "l2")
    assert code == 0
    h = history(out)
    assert [m["epoch"] for m in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < h[0]["train_loss"] and h[-1]["val_loss"] < h[0]["val_loss"]
    assert h[-1]["val_acc"] > 0.3  # chance is 0.1
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "penalty", "sparsity", "epoch_time_s",
                "images_per_s", "device"):
        assert key in h[0]
    assert set(h[0]["sparsity"]) == {"conv1.w", "conv2.w", "dense1.w", "dense2.w", "total"}
    assert {"0.001", "0.0001", "0"} <= set(h[0]["sparsity"]["total"])
    assert h[0]["penalty"] > 0 and h[0]["train_loss"] > h[0]["train_data_loss"]
    assert (out / "curves.png").stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["reg"] == "l2" and config["params"] == 315_722
    with np.load(out / "checkpoint.npz") as z:
        assert int(z["epoch"]) == 3 and z["params"].shape == (315_722,)


def test_l1_raises_sparsity_over_none(tmp_path):
    _, none = run(tmp_path, "none", "--epochs", "2", "--reg", "none")
    _, l1 = run(tmp_path, "l1", "--epochs", "2", "--reg", "l1", "--l1", "1e-3")
    sparse_none = history(none)[-1]["sparsity"]["total"]["0.001"]
    sparse_l1 = history(l1)[-1]["sparsity"]["total"]["0.001"]
    print(f"fraction |w| <= 1e-3: none {sparse_none:.4f}, l1 {sparse_l1:.4f}")
    assert sparse_l1 > 2 * sparse_none


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(tmp_path):
    _, a = run(tmp_path, "a", "--epochs", "3", "--reg", "l1l2", "--seed", "5")
    _, b = run(tmp_path, "b", "--epochs", "3", "--reg", "l1l2", "--seed", "5")
    assert without_timing(history(a)) == without_timing(history(b))  # bitwise: == on floats

    _, c = run(tmp_path, "c", "--epochs", "1", "--reg", "l1l2", "--seed", "5")
    code, _ = run(tmp_path, "c", "--epochs", "3", "--reg", "l1l2", "--seed", "5", "--resume")
    assert code == 0
    assert without_timing(history(c)) == without_timing(history(a))
    with np.load(a / "checkpoint.npz") as za, np.load(c / "checkpoint.npz") as zc:
        for key in ("params", "m", "v", "step"):
            np.testing.assert_array_equal(za[key], zc[key])

    _, d = run(tmp_path, "d", "--epochs", "3", "--reg", "l1l2", "--seed", "6")
    assert without_timing(history(d)) != without_timing(history(a))


def test_penalty_modes_compute_the_same_training(tmp_path):
    # fused, unfused and loss apply the same penalty in different passes: identical metrics.
    runs = [history(run(tmp_path, mode, "--epochs", "2", "--reg", "l1l2", "--l1", "1e-3", "--l2", "1e-3",
                        "--penalty-mode", mode)[1]) for mode in ("fused", "unfused", "loss")]
    assert runs[0][-1]["penalty"] > 0
    for other in runs[1:]:
        assert [{k: v for k, v in m.items() if k not in TIMING} for m in other] == without_timing(runs[0])


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _, out = run(tmp_path, "a", "--epochs", "1")
    with np.load(out / "checkpoint.npz") as z:
        good = z["params"].copy()
    real = ops.softmax_cross_entropy
    calls = []

    def poisoned(logits, labels, *, dlogits=None, into=None):
        # The engine sums the loss on the device: a NaN there is what a diverging run leaves.
        calls.append(1)
        result = real(logits, labels, dlogits=dlogits, into=into)
        if len(calls) > 3:
            into[0] = float("nan")
        return result

    monkeypatch.setattr(ops, "softmax_cross_entropy", poisoned)
    code, _ = run(tmp_path, "a", "--epochs", "2", "--resume")
    assert code == train.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "nan" in err and "last good checkpoint (1 epochs)" in err
    with np.load(out / "checkpoint.npz") as z:
        assert int(z["epoch"]) == 1
        np.testing.assert_array_equal(z["params"], good)
    assert len(history(out)) == 1


@pytest.mark.parametrize("args, message", [
    (["--reg", "foo"], "argument --reg: invalid choice"),
    (["--l1", "-1"], "argument --l1: expected a finite number >= 0"),
    (["--l2", "nan"], "argument --l2: expected a finite number >= 0"),
    (["--reg", "l2", "--l1", "1e-3"], "l1: λ1 = 0.001 given but --reg l2 has no L1 term"),
    (["--reg", "l1", "--l2", "1e-3"], "l2: λ2 = 0.001 given but --reg l1 has no L2 term"),
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--batch-size", "x"], "argument --batch-size: invalid"),
    (["--lr", "0"], "argument --lr: expected a finite number > 0"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--train-size", "0"], "argument --train-size: expected an integer >= 1"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path / "x"), *args]
    if "--data" in args:
        argv = argv[2:]  # --data and --dataset exclude each other
    assert train.main(argv) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyregnet.train: error: ") and message in err, err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_data_path_that_is_not_a_dataset(tmp_path, capsys):
    junk = tmp_path / "junk.txt"
    junk.write_text("not a data set")
    assert train.main(["--data", str(junk), "--out", str(tmp_path / "x")]) == train.EXIT_USAGE
    assert "junk.txt" in capsys.readouterr().err


def test_device_cuda_without_a_gpu(tmp_path, capsys):
    import pyregnet
    if pyregnet.build_info()["cuda_available"]:
        pytest.skip("a GPU is present: --device cuda is valid here")
    assert train.main([*TINY[:-2], "--device", "cuda", "--out", str(tmp_path / "x")]) == train.EXIT_USAGE
    assert "--device cuda:" in capsys.readouterr().err


def test_existing_run_needs_resume_and_matching_settings(tmp_path, capsys):
    run(tmp_path, "a", "--epochs", "1")
    code, _ = run(tmp_path, "a", "--epochs", "2")
    assert code == train.EXIT_USAGE and "already holds a run" in capsys.readouterr().err
    code, _ = run(tmp_path, "a", "--epochs", "2", "--lr", "0.01", "--resume")
    assert code == train.EXIT_USAGE and "lr 0.001 (now 0.01)" in capsys.readouterr().err
    code, _ = run(tmp_path, "b", "--epochs", "2", "--resume")
    assert code == train.EXIT_USAGE and "no checkpoint" in capsys.readouterr().err


def test_command_line_exit_code_and_no_traceback(tmp_path):
    # From a directory outside the checkout: the installed pyregnet is found from anywhere.
    out = subprocess.run([sys.executable, "-m", "pyregnet.train", "--reg", "foo"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_help_explains():
    with pytest.raises(SystemExit) as exit_info:
        train.parser().parse_args(["--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize("optimizer, penalty_step", [("sgd", "gradient"), ("sgd", "proximal"), ("adam", "proximal")])
def test_optimizers_and_penalty_steps_train_and_resume_exactly(tmp_path, optimizer, penalty_step):
    """--optimizer and --penalty-step: the loss falls, config.json records them, and a run stopped
    after one epoch and resumed ends with the metrics of an uninterrupted one."""
    args = [*TINY, "--reg", "l1", "--l1", "1e-3", "--optimizer", optimizer, "--penalty-step", penalty_step]
    assert train.main([*args, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert train.main([*args, "--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    assert train.main([*args, "--epochs", "2", "--out", str(tmp_path / "part"), "--resume"]) == 0
    whole, part = (history(tmp_path / name) for name in ("whole", "part"))
    assert without_timing(whole) == without_timing(part)
    assert whole[1]["train_loss"] < whole[0]["train_loss"]
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert (config["optimizer"], config["penalty_step"]) == (optimizer, penalty_step)
    assert config["lr"] == train.DEFAULT_LR[optimizer]
    if penalty_step == "proximal":  # the proximal step leaves weights exactly at zero
        assert whole[-1]["sparsity"]["total"]["0"] > 0


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum: applies to --optimizer sgd only"),
    (["--optimizer", "sgd", "--momentum", "1"], "--momentum"),
    (["--penalty-step", "proximal", "--penalty-mode", "unfused"], "--penalty-mode: the proximal step"),
    (["--optimizer", "rmsprop"], "--optimizer"),
])
def test_optimizer_arguments_are_checked(tmp_path, capsys, args, message):
    assert train.main([*TINY, *args, "--out", str(tmp_path / "r")]) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
