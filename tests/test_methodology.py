"""The trainer's measurement methodology: the held-out validation split (fixed, stratified,
disjoint from training), the test and clean-train evaluations against a direct evaluation of the
checkpoint, sparsity and log10|w| histograms that no floating-point mode can change, the data
named by file name and SHA-256, and resume staying exact with the new metrics."""

import hashlib
import json
import math

import numpy as np
import pytest

from pyregnet import data as datasets
from pyregnet import model, reference, train

TINY = ["--dataset", "synthetic", "--train-size", "384", "--val-size", "128", "--device", "cpu"]
TIMING = set(train.TIMING_KEYS)


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_stratified_indices_by_hand():
    # 10 images: class 0 ×5, class 1 ×3, class 2 ×2. 4 of them: exact shares 2.0, 1.2, 0.8 ->
    # floors 2, 1, 0 and the one left over to the largest remainder (class 2, 0.8).
    y = np.array([0, 1, 0, 2, 0, 1, 0, 2, 1, 0])
    pick = datasets.stratified_indices(y, 4, "holdout")
    assert np.bincount(y[pick], minlength=3).tolist() == [2, 1, 1]
    assert pick.tolist() == sorted(set(pick.tolist()))
    np.testing.assert_array_equal(pick, datasets.stratified_indices(y, 4, "holdout"))
    assert len(datasets.stratified_indices(y, 0, "holdout")) == 0
    assert datasets.stratified_indices(y, 10, "holdout").tolist() == list(range(10))
    with pytest.raises(ValueError, match="size: expected 0 to 10 but got 11"):
        datasets.stratified_indices(y, 11, "holdout")


def test_holdout_split_is_fixed_stratified_and_disjoint():
    y = np.random.default_rng(3).integers(0, 10, 5000)
    train_idx, held = train.split_holdout(y, 500)
    assert len(held) == 500 and len(train_idx) == 4500
    assert not set(train_idx.tolist()) & set(held.tolist())
    assert sorted(np.concatenate([train_idx, held]).tolist()) == list(range(5000))
    share, held_share = np.bincount(y, minlength=10) / 5000, np.bincount(y[held], minlength=10) / 500
    assert np.all(np.abs(held_share - share) <= 1 / 500 + 1e-12)  # each class within one image of its share
    again_train, again_held = train.split_holdout(y, 500)
    np.testing.assert_array_equal(held, again_held)
    np.testing.assert_array_equal(train_idx, again_train)
    # a different use of the same labels draws differently (the clean-train pick is not the holdout)
    assert not np.array_equal(held, datasets.stratified_indices(y, 500, "train_clean"))


def _rows(images):
    return {hashlib.sha256(x.tobytes()).hexdigest() for x in images}


def test_runs_of_every_seed_validate_on_the_same_held_out_images_and_never_train_on_them():
    ds = datasets.load(dataset="synthetic", train_size=600, val_size=100)
    runs = [train.Run(train.Config(dataset="synthetic", holdout=150, seed=seed), ds) for seed in (0, 1)]
    for run in runs:
        assert len(run.y_val) == 150 and len(run.y_train) == 450 and len(run.y_test) == 100
        assert not _rows(run.x_val) & _rows(run.x_train)
        assert _rows(run.x_val) | _rows(run.x_train) == _rows(ds.x_train)
        np.testing.assert_array_equal(run.x_test, ds.x_test)
    np.testing.assert_array_equal(runs[0].x_val, runs[1].x_val)
    np.testing.assert_array_equal(runs[0].eval_sets["train_clean"][2], runs[1].eval_sets["train_clean"][2])
    plain = train.Run(train.Config(dataset="synthetic"), ds)  # --holdout 0: validation is the test set
    np.testing.assert_array_equal(plain.x_val, ds.x_test)
    np.testing.assert_array_equal(plain.x_train, ds.x_train)


def _direct(params, images, labels):
    """Mean cross-entropy and accuracy of the model on uint8 HWC images, through model.forward
    on the CPU, the input scaled by the NumPy reference."""
    x = reference.augment_batch(images, np.arange(len(images)), seed=0, step=0, max_shift=0, flip=False)
    logits, _ = model.forward(params, x.astype(np.float32))
    logits = logits.astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean(), (logits.argmax(1) == labels).mean()


def test_test_and_clean_train_metrics_match_a_direct_evaluation_of_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert train.main([*TINY, "--epochs", "2", "--reg", "l2", "--holdout", "64", "--out", str(out)]) == 0
    last = history(out)[-1]
    with np.load(out / "checkpoint.npz") as z:
        params = z["params"]
    ds = datasets.load(dataset="synthetic", train_size=384, val_size=128)
    train_idx, held = train.split_holdout(ds.y_train, 64)
    x_train, y_train = ds.x_train[train_idx], ds.y_train[train_idx]
    clean = datasets.stratified_indices(y_train, min(train.CLEAN_TRAIN_SIZE, len(y_train)), "train_clean")
    for prefix, images, labels in (("test", ds.x_test, ds.y_test), ("train_clean", x_train[clean], y_train[clean]),
                                   ("val", ds.x_train[held], ds.y_train[held])):
        loss, acc = _direct(params, images, labels)
        got_loss = last[f"{prefix}_data_loss" if prefix == "val" else f"{prefix}_loss"]
        assert math.isclose(got_loss, loss, rel_tol=1e-5), (prefix, got_loss, loss)
        assert last[f"{prefix}_acc"] == acc, prefix
    config = json.loads((out / "config.json").read_text())
    assert config["holdout"] == 64 and config["train_images"] == 320 and config["val_images"] == 64
    assert config["train_clean_images"] == 320 and config["test_images"] == 128
    assert config["weight_hist_log10_edges"] == list(model.HIST_LOG10_EDGES)
    assert config["build"]["version"] and config["processor"] and len(config["started_utc"]) == 16
    assert config["commit"] is None or len(config["commit"].rstrip("+")) >= 7
    for layer in model.KERNEL_NAMES:
        h = last["weight_hist"][layer]
        assert h["zeros"] + sum(h["counts"]) == model.views(params)[layer].size
        assert len(h["counts"]) == len(model.HIST_LOG10_EDGES) - 1
        w = model.views(params)[layer].astype(np.float64)
        assert math.isclose(h["norm"], math.sqrt(float(np.sum(w * w))), rel_tol=1e-12)
    assert set(last["sparsity"]["total"]) == {"0.01", "0.001", "0.0001", "1e-05", "1e-06", "1.17549e-38", "0"}


def test_without_holdout_the_test_metrics_are_the_validation_metrics(tmp_path):
    out = tmp_path / "run"
    assert train.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    m = history(out)[0]
    assert (m["test_acc"], m["test_loss"]) == (m["val_acc"], m["val_data_loss"])
    assert 0 <= m["train_clean_acc"] <= 1 and m["train_clean_loss"] > 0
    assert json.loads((out / "config.json").read_text())["holdout"] == 0


def test_resume_stays_exact_with_the_new_metrics(tmp_path):
    args = [*TINY, "--train-size", "192", "--reg", "l1l2", "--seed", "4", "--holdout", "50"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main([*args, "--epochs", "2", "--out", str(a)]) == 0
    assert train.main([*args, "--epochs", "1", "--out", str(b)]) == 0
    assert train.main([*args, "--epochs", "2", "--out", str(b), "--resume"]) == 0
    assert without_timing(history(b)) == without_timing(history(a))  # bitwise: == on floats
    assert history(a)[-1]["test_acc"] != history(a)[-1]["val_acc"] or history(a)[-1]["test_loss"] != \
        history(a)[-1]["val_data_loss"]  # with a holdout the test set is another set
    assert train.main([*args[:-1], "60", "--epochs", "2", "--out", str(b), "--resume"]) == 2  # another holdout


@pytest.mark.parametrize("holdout, message", [("384", "--holdout: expected fewer than the 384 training images"),
                                              ("-1", "--holdout: .*expected an integer >= 0 but got -1")])
def test_bad_holdout_exits_2_with_one_line(holdout, message, tmp_path, capsys):
    assert train.main([*TINY, "--holdout", holdout, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_weight_stats_count_subnormals_apart_from_zeros_whatever_the_mode():
    params = np.zeros(model.N_PARAMS, dtype=np.float32)
    w = model.views(params)["conv1.w"].reshape(-1)
    tiny = np.finfo(np.float32).tiny
    values = [-0.0, 1e-45, -1e-40, np.nextafter(tiny, np.float32(0)), tiny, -1e-6, 1e-6, 2e-3, -0.5, 20.0]
    w[:len(values)] = np.array(values, dtype=np.float32)
    w[len(values):] = 1.0
    spars, hists = model.weight_stats(params)
    n = w.size
    s = spars["conv1.w"]
    assert s["0"] * n == 1                  # only -0.0 (and not the subnormals) is an exact zero
    assert s["1.17549e-38"] * n == 4        # zero and the three subnormals: below the smallest normal
    assert s["1e-06"] * n == 7 and s["0.001"] * n == 7 and s["0.01"] * n == 8
    h = hists["conv1.w"]
    assert h["zeros"] == 1 and sum(h["counts"]) == n - 1
    edges = model.HIST_LOG10_EDGES
    nonzero = np.abs(np.array(values[1:] + [1.0], dtype=np.float64))
    want = {}
    for v in nonzero:  # the bin of each value by its float64 log10 (none lies on an edge)
        i = min(int(np.searchsorted(edges, np.log10(v), side="right")) - 1, len(edges) - 2)
        want[i] = want.get(i, 0) + (n - len(values) if v == 1.0 else 1)
    assert {i: c for i, c in enumerate(h["counts"]) if c} == want
    assert h["counts"][0] == 1 and h["counts"][-1] == 1  # 1.4e-45 in the first bin, 20 in the open last one
    # the other layers are all exact zeros
    assert hists["dense1.w"]["zeros"] == 128 * 2304 and not any(hists["dense1.w"]["counts"])
    assert spars["total"]["0"] == (1 + model.N_KERNEL - n) / model.N_KERNEL


def test_source_identity_names_a_file_and_a_directory_without_their_path(tmp_path):
    f = tmp_path / "data.tar.gz"
    f.write_bytes(b"pyregnet" * 1000)
    assert datasets.source_identity(str(f)) == {"name": "data.tar.gz",
                                                "sha256": hashlib.sha256(b"pyregnet" * 1000).hexdigest()}
    d = tmp_path / "tree"
    (d / "a").mkdir(parents=True)
    (d / "a" / "x").write_bytes(b"1")
    first = datasets.source_identity(str(d))
    (d / "a" / "x").write_bytes(b"2")
    assert first["name"] == "tree" and datasets.source_identity(str(d))["sha256"] != first["sha256"]
    assert datasets.source_identity(None, "synthetic") == {"name": "synthetic", "sha256": None}


def test_config_names_the_data_by_file_name_and_hash_not_by_path(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("PYREGNET_DATA", str(tmp_path / "cache"))
    tree = tmp_path / "somewhere" / "mini-cifar"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in datasets.CLASSES:  # the trainer refuses a class count other than the network's
            (tree / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tree / split / c / f"{i}.png")
    out = tmp_path / "run"
    assert train.main(["--data", str(tree), "--epochs", "1", "--device", "cpu", "--holdout", "20",
                       "--out", str(out)]) == 0
    text = (out / "config.json").read_text()
    assert str(tmp_path) not in text
    config = json.loads(text)
    assert config["data"] == "mini-cifar" and config["data_source"] == "image folder (mini-cifar)"
    assert config["data_file"] == datasets.source_identity(str(tree))
    assert config["train_images"] == 60 and config["val_images"] == 20 and config["test_images"] == 20
    assert config["holdout"] == 20
    # the sweep recognizes the finished run from its config.json
    from pyregnet.runs import Spec, expected_config, run_state
    opts = __import__("argparse").Namespace(data=str(tree), dataset=None, train_size=None, val_size=None,
                                            batch_size=None, lr=None, augment=True, holdout=20)
    assert run_state(out, expected_config(Spec("none", 0.0, 0.0, 0), opts), 1)[0] == "done"
