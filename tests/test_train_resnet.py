"""python -m pyregnet.train --model resnet20 on tiny synthetic data on the CPU: the network's BN
state is trained, checkpointed and resumed to the bits of an uninterrupted run, the penalty stays
on the kernels, sparsity and histograms cover its 20 kernels, and pruning reads its layout."""

import json

import numpy as np
import pytest

from pyregnet import data, optim, prune, resnet, train
from pyregnet.regularizers import Penalty

TINY = ["--model", "resnet20", "--dataset", "synthetic", "--train-size", "80", "--val-size", "32",
        "--batch-size", "32", "--device", "cpu"]
TIMING = set(train.TIMING_KEYS)


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def checkpoint(out):
    with np.load(out / "checkpoint.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs uninterrupted, and one epoch then --resume to two, with L1 (the penalty's value
    depends on which weights it covers)."""
    root = tmp_path_factory.mktemp("resnet")
    args = [*TINY, "--reg", "l1", "--l1", "1e-3"]
    assert train.main([*args, "--epochs", "2", "--out", str(root / "whole")]) == 0
    assert train.main([*args, "--epochs", "1", "--out", str(root / "part")]) == 0
    assert train.main([*args, "--epochs", "2", "--out", str(root / "part"), "--resume"]) == 0
    return root / "whole", root / "part"


def test_config_checkpoint_and_metrics_describe_the_resnet(runs):
    whole, _ = runs
    config = json.loads((whole / "config.json").read_text())
    assert config["model"] == "resnet20" and config["params"] == 269_722
    state = checkpoint(whole)
    assert state["params"].shape == state["m"].shape == (resnet.N_PARAMS,)
    assert state["state"].shape == (resnet.N_STATE,) and state["state"].dtype == state["params"].dtype
    # the running statistics moved from their start (mean 0, variance 1): training mode updated them
    assert not np.array_equal(state["state"], resnet.init_state())
    last = history(whole)[-1]
    assert set(last["sparsity"]) == {*resnet.KERNEL_NAMES, "total"} and set(last["weight_hist"]) == set(
        resnet.KERNEL_NAMES)
    hist = last["weight_hist"]["stage3.block3.conv2.w"]
    assert hist["zeros"] + sum(hist["counts"]) == 64 * 64 * 9
    kernels = state["params"][:resnet.N_KERNEL].astype(np.float64)
    assert last["penalty"] == pytest.approx(1e-3 * np.abs(kernels).sum(), rel=1e-5)  # not γ, β or the bias
    assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) for m in history(whole))


def test_resume_equals_uninterrupted(runs):
    whole, part = runs
    assert without_timing(history(whole)) == without_timing(history(part))  # bitwise: == on floats
    a, b = checkpoint(whole), checkpoint(part)
    for key in ("params", "state", "m", "v", "step"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def tiny_run(reg="none", l2=0.0, train_size=32, optimizer="adam"):
    pen = Penalty.with_defaults(reg, None, l2 or None)
    config = train.Config(model="resnet20", reg=pen.kind, l1=pen.l1, l2=pen.l2, batch_size=32, device="cpu",
                          dataset="synthetic", train_size=train_size, val_size=20, optimizer=optimizer,
                          lr=optim.DEFAULT_LR[optimizer])
    return train.Run(config, data.load(None, dataset="synthetic", train_size=train_size, val_size=20, seed=0))


def test_training_updates_the_state_and_evaluation_only_reads_it():
    run = tiny_run()
    before = run.net_state.copy()
    first = run.evaluate("val")
    np.testing.assert_array_equal(run.net_state, before)
    assert run.evaluate("val") == first
    run.train_epoch()
    assert not np.array_equal(run.net_state, before)
    moved = run.net_state.copy()
    changed = run.evaluate("val")
    np.testing.assert_array_equal(run.net_state, moved)
    assert changed != first  # the evaluation normalizes with the running statistics


def test_penalty_reaches_the_kernels_only():
    """One SGD step (its update is lr times the gradient) from the same start on the same batch: a
    strong L2 changes every kernel weight's update and none of the BN parameters' or the dense
    bias's."""
    plain, penalized = tiny_run(optimizer="sgd"), tiny_run("l2", l2=10.0, optimizer="sgd")
    for run in (plain, penalized):
        run.engine.train_epoch(np.arange(32))
    n = resnet.N_KERNEL
    np.testing.assert_array_equal(plain.params[n:], penalized.params[n:])
    assert np.all(plain.params[:n] != penalized.params[:n])
    assert plain.engine.net is resnet and plain.engine.state is plain.net_state


def test_checkpoint_state_is_checked(runs, tmp_path, capsys):
    whole, _ = runs
    for damage, fragment in (("short", f"state is float32 (5,), expected {resnet.N_STATE} floats (resnet20)"),
                             ("missing", "it lacks state")):
        state = checkpoint(whole)
        if damage == "short":
            state["state"] = state["state"][:5]
        else:
            del state["state"]
        out = tmp_path / damage
        out.mkdir()
        np.savez(out / "checkpoint.npz", **state)
        assert train.main([*TINY, "--epochs", "3", "--out", str(out), "--resume"]) == train.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is damaged: {fragment}" in err, err


def test_resume_refuses_another_model(runs, capsys):
    whole, _ = runs
    args = [a for a in TINY if a not in ("--model", "resnet20")]
    assert train.main([*args, "--reg", "l1", "--l1", "1e-3", "--epochs", "3", "--out", str(whole),
                       "--resume"]) == train.EXIT_USAGE
    assert "model 'resnet20' (now 'cnn')" in capsys.readouterr().err


def test_a_checkpoint_from_before_the_option_resumes_as_the_cnn(tmp_path):
    """A checkpoint and config.json written before --model existed lack it: they are the CNN's."""
    args = ["--dataset", "synthetic", "--train-size", "64", "--val-size", "32", "--device", "cpu"]
    assert train.main([*args, "--epochs", "1", "--out", str(tmp_path / "old")]) == 0
    state = checkpoint(tmp_path / "old")
    assert "state" not in state  # the CNN has none: its checkpoints are as before
    config = json.loads(str(state["config"]))
    del config["model"]
    state["config"] = np.array(json.dumps(config))
    np.savez(tmp_path / "old" / "checkpoint.npz", **state)
    assert train.main([*args, "--epochs", "2", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert len(history(tmp_path / "old")) == 2


def test_prune_reads_the_resnet_layout(runs, tmp_path):
    whole, _ = runs
    pruned = prune.prune(checkpoint(whole)["params"], 0.5, per_layer=True, kernels=resnet.KERNEL_SLOTS)
    views = resnet.param_views(pruned)
    for name in resnet.KERNEL_NAMES:
        assert np.count_nonzero(views[name] == 0) == int(round(0.5 * views[name].size)), name
    np.testing.assert_array_equal(pruned[resnet.N_KERNEL:], checkpoint(whole)["params"][resnet.N_KERNEL:])

    assert prune.main([str(whole), "--levels", "0.5", "--per-layer", "--finetune-epochs", "1"]) == 0
    result = json.loads((whole / "prune.json").read_text())
    last = history(whole)[-1]
    # level 0 is the run's own test evaluation: the BN state came back with the parameters
    assert (result["global"][0]["test_acc"], result["global"][0]["test_loss"]) == (last["test_acc"],
                                                                                  last["test_loss"])
    assert result["global"][1]["sparsity"] == pytest.approx(0.5, abs=1e-5)
    assert result["per_layer"][1]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert 0.5 - 1e-5 <= result["finetuned"][1]["sparsity"] <= 0.5 + 1e-3


def test_update_modes_train_the_resnet_alike(tmp_path):
    """--penalty-mode fused, unfused and loss, and --optimizer sgd with --penalty-step proximal."""
    runs = {}
    for name, extra in (("fused", []), ("unfused", ["--penalty-mode", "unfused"]), ("loss", ["--penalty-mode", "loss"]),
                        ("sgd", ["--optimizer", "sgd", "--penalty-step", "proximal"])):
        args = [*TINY, "--train-size", "64", "--reg", "l1l2", "--l1", "1e-3", "--l2", "1e-3", "--epochs", "1", *extra]
        assert train.main([*args, "--out", str(tmp_path / name)]) == 0
        runs[name] = without_timing(history(tmp_path / name))
    assert runs["fused"] == runs["unfused"] == runs["loss"]
    assert runs["sgd"][0]["sparsity"]["total"]["0"] > 0  # the proximal step makes exact zeros
