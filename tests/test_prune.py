"""python -m pyregnet.prune: magnitude pruning of a finished run, evaluated on the test set."""

import json

import numpy as np
import pytest

from pyregnet import model, optim, prune, train
from pyregnet.regularizers import Penalty


def test_prune_zeros_the_smallest_kernel_weights():
    params = model.init_params(3)
    params[:50] = 0  # already zero: they count towards the level
    for fraction in (0.0, 0.3, 0.9):
        pruned = prune.prune(params, fraction)
        kernels, before = pruned[:model.N_KERNEL], params[:model.N_KERNEL]
        k = int(round(fraction * model.N_KERNEL))
        assert np.count_nonzero(kernels == 0) == max(k, 50)
        kept = np.abs(before[kernels != 0])
        assert kept.size == 0 or kept.min() >= np.abs(before[kernels == 0]).max()
        np.testing.assert_array_equal(pruned[model.N_KERNEL:], params[model.N_KERNEL:])  # biases untouched
        np.testing.assert_array_equal(kernels[kernels != 0], before[kernels != 0])


def test_prune_per_layer_prunes_each_layer_to_the_fraction():
    params = model.init_params(4)
    model.views(params)["conv1.w"][...] *= 1e-3  # the smallest layer: global pruning takes it all
    assert np.count_nonzero(model.views(prune.prune(params, 0.5))["conv1.w"]) == 0
    pruned = prune.prune(params, 0.5, per_layer=True)
    for name, w in model.views(pruned).items():
        if name in model.KERNEL_NAMES:
            assert np.count_nonzero(w == 0) == int(round(0.5 * w.size)), name


def test_largest_within():
    curve = [{"sparsity": 0.0, "test_acc": 0.70}, {"sparsity": 0.5, "test_acc": 0.695},
             {"sparsity": 0.8, "test_acc": 0.689}, {"sparsity": 0.9, "test_acc": 0.60}]
    assert prune.largest_within(curve) == 0.5
    assert prune.largest_within(curve, pp=2) == 0.8


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = train.Config(dataset="synthetic", epochs=1, train_size=256, val_size=200, device="cpu",
                          reg="l1", l1=1e-4)
    train.train(config, out, log=lambda *a: None, progress=False)
    return out


def test_unpruned_point_is_the_runs_own_test_evaluation(finished_run, capsys):
    assert prune.main([str(finished_run), "--levels", "0.5,0.9", "--per-layer"]) == 0
    result = json.loads((finished_run / "prune.json").read_text())
    last = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["global"][0]["level"] == 0.0
    assert result["global"][0]["test_acc"] == last["test_acc"] and result["global"][0]["test_loss"] == last["test_loss"]
    assert [p["level"] for p in result["global"]] == [0.0, 0.5, 0.9] == [p["level"] for p in result["per_layer"]]
    assert result["global"][2]["sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert result["largest_within_1pp"]["global"] in {p["sparsity"] for p in result["global"]}
    assert (finished_run / "prune.png").stat().st_size > 0
    assert "largest sparsity within 1 pp" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nothing"], "RUN_DIR: "),
    (["{run}", "--levels", "0.5,1.5"], "--levels: expected fractions in [0, 1)"),
    (["{run}", "--levels", "half"], "--levels: expected fractions separated by commas"),
    (["{run}", "--data", "{tmp}/missing.tar.gz"], "--data: "),
])
def test_bad_input_is_one_line_and_exit_2(finished_run, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, run=finished_run) for a in args]
    assert prune.main(args) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("pyregnet.prune: error: ") and message in err and err.count("\n") == 1, err


def test_finetune_keeps_the_mask_and_trains(finished_run):
    assert prune.main([str(finished_run), "--levels", "0.5,0.9", "--finetune-epochs", "1"]) == 0
    result = json.loads((finished_run / "prune.json").read_text())
    tuned = result["finetuned"]
    assert [p["level"] for p in tuned] == [0.0, 0.5, 0.9] and all(p["epochs"] == 1 for p in tuned)
    for before, after in zip(result["global"], tuned):
        # every pruned weight is still exactly zero after an epoch of training (a handful more may
        # have landed on 0 by themselves; none of the pruned ones came back)
        assert before["sparsity"] <= after["sparsity"] <= before["sparsity"] + 1e-3
        assert after["test_acc"] != before["test_acc"] or after["test_loss"] != before["test_loss"]  # it trained
    assert result["largest_within_1pp"]["finetuned"] in {p["sparsity"] for p in tuned}


def test_keep_mask_zeros_the_pruned_weights_after_the_update():
    params = model.init_params(5)
    pruned = prune.prune(params, 0.5)
    grad = np.ones_like(params)  # a gradient that would move every weight
    opt = prune.KeepMask(optim.make("adam", pruned, 1e-3), pruned[:model.N_KERNEL] == 0)
    launches = opt.launches(pruned, grad, Penalty("none", 0.0, 0.0), "fused", penalized=model.N_KERNEL, step=1)
    assert [launch.name for launch in launches] == ["update", "mask"]
    for launch in launches:
        launch.fn()
    kernels = pruned[:model.N_KERNEL]
    assert np.count_nonzero(kernels == 0) == int(round(0.5 * model.N_KERNEL))
    assert not np.signbit(kernels[kernels == 0]).any()  # +0.0, not -0.0
    opt.step = 7
    assert opt.optimizer.step == 7  # the engine's step count reaches the wrapped optimizer
