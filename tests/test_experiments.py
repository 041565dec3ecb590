"""The experiment plans E1-E4 of python -m pyregnet.sweep run: the λ ladder, the choice by
held-out accuracy with its extensions at an edge, E3/E4 reading E2's choice and E3 sharing E1's
baseline runs; one real E1 trial run end to end. The E2 flow runs against a stand-in job runner
that writes each run's metrics from a known accuracy surface, so the choice is known in advance."""

import argparse
import json
import math

import pytest

from pyregnet import experiments as ex
from pyregnet import runs, sweep


def test_ladder_steps():
    assert ex.ladder_step(1e-5, 1) == 3e-5 and ex.ladder_step(3e-5, 1) == 1e-4
    assert ex.ladder_step(1e-5, -1) == 3e-6 and ex.ladder_step(3e-6, -1) == 1e-6
    assert ex.ladder_step(1e-3, 1) == 3e-3 and ex.ladder_step(1.0, -1) == 0.3
    with pytest.raises(ValueError, match="expected 1 or 3 times a power of ten"):
        ex.ladder_step(2e-5, 1)


def test_endpoint_is_the_mean_of_the_last_three_epochs():
    history = [{"val_acc": a} for a in (0.1, 0.2, 0.5, 0.6, 0.7)]
    assert math.isclose(ex.endpoint(history), 0.6)


def test_single_grid_extends_at_an_edge_at_most_twice():
    first = (1e-6, 3e-6, 1e-5)
    assert ex.extend_single({1e-6: 0.5, 3e-6: 0.6, 1e-5: 0.4}, first) is None  # interior
    assert ex.extend_single({1e-6: 0.7, 3e-6: 0.6, 1e-5: 0.4}, first) == 3e-7
    assert ex.extend_single({3e-7: 0.8, 1e-6: 0.7, 3e-6: 0.6, 1e-5: 0.4}, first) == 1e-7
    assert ex.extend_single({1e-7: 0.9, 3e-7: 0.8, 1e-6: 0.7, 3e-6: 0.6, 1e-5: 0.4}, first) is None
    assert ex.extend_single({1e-6: 0.1, 3e-6: 0.6, 1e-5: 0.7}, first) == 3e-5
    assert ex.best({1e-6: 0.7, 3e-6: 0.7}) == 1e-6  # a tie goes to the weaker penalty


def test_pair_grid_starts_below_the_optima_and_extends_down():
    first = ex.l1l2_first_grid(1e-5, 1e-4)
    assert first == [(3e-6, 3e-5), (3e-6, 1e-4), (1e-5, 3e-5), (1e-5, 1e-4)]
    scores = dict.fromkeys(first, 0.5)
    scores[(1e-5, 1e-4)] = 0.6
    assert ex.extend_pair(scores, first) == []
    scores[(3e-6, 1e-4)] = 0.7
    assert ex.extend_pair(scores, first) == [(1e-6, 3e-5), (1e-6, 1e-4)]


def surface(reg, l1, l2):
    """Held-out accuracy of a made-up grid: L1 best at λ1 = 3e-7 (below E2's grid), L2 at
    λ2 = 1e-4, L1L2 at λ1 = 3e-8 (below its first 2×2), λ2 = 1e-4."""
    center = 3e-8 if reg == "l1l2" else 3e-7
    return 0.7 - 0.01 * abs(math.log10(l1 / center) if l1 else 0) - 0.01 * abs(math.log10(l2 / 1e-4) if l2 else 0)


def epoch_line(epoch, val_acc):
    """A metrics.jsonl line with every key the sweep checks (pyregnet.runs.EPOCH_KEYS)."""
    return {"epoch": epoch, "val_acc": val_acc, "train_acc": val_acc, "train_loss": 1.0, "val_loss": 1.0,
            "sparsity": {"total": dict.fromkeys(runs.SPARSITY_KEYS, 0.0)}, "epoch_time_s": 1.0, "images_per_s": 1.0}


@pytest.fixture
def stand_in(monkeypatch):
    """Replaces sweep.execute: each job writes a finished run (config.json as the trainer would,
    metrics.jsonl with val_acc from surface()) instead of training."""
    ran = []

    def execute(jobs, n_jobs=1, gpus=None, log=print):
        for job in jobs:
            spec, command = job.spec, job.command

            def value(flag):
                return command[command.index(flag) + 1] if flag in command else None
            opts = argparse.Namespace(data=None, dataset=value("--dataset"), train_size=None, val_size=None,
                                      batch_size=None, lr=float(value("--lr")) if value("--lr") else None,
                                      augment="--no-augment" not in command, holdout=int(value("--holdout") or 0),
                                      optimizer=value("--optimizer"), penalty_step=value("--penalty-step"),
                                      momentum=float(value("--momentum")) if value("--momentum") else None,
                                      model=value("--model"))
            job.run_dir.mkdir(parents=True, exist_ok=True)
            (job.run_dir / "config.json").write_text(json.dumps(runs.expected_config(spec, opts)))
            acc = surface(spec.reg, spec.l1, spec.l2) if spec.reg != "none" else 0.6
            lines = [json.dumps(epoch_line(e, acc)) for e in range(1, int(value("--epochs")) + 1)]
            (job.run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            ran.append((job.run_dir.parent.name, spec))
        return {job.spec.name: (0, "") for job in jobs}

    monkeypatch.setattr(sweep, "execute", execute)
    return ran


def main(*argv):
    return sweep.main(list(argv))


def test_e2_extends_chooses_and_e3_e4_use_its_choice(tmp_path, stand_in, capsys):
    root = tmp_path / "results"
    args = ["--root", str(root), "--dataset", "synthetic", "--epochs", "4"]
    assert main("run", "E3", *args) == 2
    assert "E2/chosen.json does not exist: run E2 first" in capsys.readouterr().err
    assert main("run", "E2", *args) == 0
    chosen = json.loads((root / "E2" / "chosen.json").read_text())
    assert (chosen["l1"]["l1"], chosen["l2"]["l2"]) == (3e-7, 1e-4)  # λ1 found by one extension below the grid
    e2 = [spec for where, spec in stand_in if where == "E2"]
    assert sorted(s.l1 for s in e2 if s.reg == "l1") == [1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4]
    assert sorted(s.l2 for s in e2 if s.reg == "l2") == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    pairs = sorted((s.l1, s.l2) for s in e2 if s.reg == "l1l2")
    # the first 2×2 {1e-7, 3e-7} × {3e-5, 1e-4}; its best takes the lower λ1: extended down twice
    assert pairs == sorted([(a, b) for a in (1e-8, 3e-8, 1e-7, 3e-7) for b in (3e-5, 1e-4)])
    assert (chosen["l1l2"]["l1"], chosen["l1l2"]["l2"]) == (3e-8, 1e-4)
    assert all(s.seed == 0 for s in e2)
    config = json.loads((root / "E2" / e2[0].name / "config.json").read_text())
    assert config["holdout"] == 5000 and config["augment"] is False

    stand_in.clear()
    assert main("run", "E2", *args) == 0 and not stand_in  # finished: nothing runs again
    assert main("run", "E3", *args) == 0
    where = {(w, s.reg) for w, s in stand_in}
    assert where == {("E1", "none"), ("E3", "l1"), ("E3", "l2"), ("E3", "l1l2")}
    assert sorted({s.seed for _, s in stand_in}) == [0, 1, 2, 3, 4]
    assert {(s.l1, s.l2) for _, s in stand_in if s.reg == "l1l2"} == {(3e-8, 1e-4)}
    stand_in.clear()
    assert main("run", "E1", *args) == 0 and not stand_in  # E3 made E1's runs already
    assert main("run", "E4", *args) == 0
    assert {w for w, _ in stand_in} == {"E4"} and sorted({s.seed for _, s in stand_in}) == [0, 1, 2]
    assert json.loads((root / "E4" / "none_s0" / "config.json").read_text())["augment"] is True


def test_e5_chooses_on_held_out_images_then_runs_seeds_and_e6_trains_with_sgd(tmp_path, stand_in, capsys):
    root = tmp_path / "results"
    args = ["--root", str(root), "--dataset", "synthetic", "--epochs", "3"]
    assert main("run", "E5", "--dry-run", *args) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and "this stage's" in err and not stand_in
    assert all("--penalty-step proximal" in c and "--holdout 5000" in c for c in out.splitlines())
    assert main("run", "E5", *args) == 0
    grid = [s for w, s in stand_in if w == "E5-grid"]
    assert sorted((s.reg, s.l1 or s.l2) for s in grid) == [("l1", 1e-4), ("l1", 1e-3), ("l1", 1e-2),
                                                            ("l2", 1e-3), ("l2", 1e-2), ("l2", 0.1)]
    chosen = json.loads((root / "E5-grid" / "chosen.json").read_text())
    # surface(): L1 best near 3e-7 and L2 at 1e-4, both below this grid: its lowest points win
    assert (chosen["l1"]["l1"], chosen["l2"]["l2"]) == (1e-4, 1e-3)
    finals = [s for w, s in stand_in if w == "E5"]
    assert sorted((s.reg, s.l1 or s.l2, s.seed) for s in finals) == [("l1", 1e-4, k) for k in range(3)] + \
        [("l2", 1e-3, k) for k in range(3)]
    final = json.loads((root / "E5" / "l1_0.0001_s2" / "config.json").read_text())
    assert final["penalty_step"] == "proximal" and final["holdout"] == 0 and final["augment"] is False
    assert json.loads((root / "E5-grid" / "l2_0.1_s0" / "config.json").read_text())["holdout"] == 5000
    stand_in.clear()
    assert main("run", "E5", *args) == 0 and not stand_in  # finished: nothing runs again

    assert main("run", "E6", *args) == 0
    assert len(stand_in) == 11 and {w for w, _ in stand_in} == {"E6"}
    assert sorted({(s.reg, s.l1 or s.l2) for _, s in stand_in}) == [("l1", 1e-4), ("l1", 1e-3), ("l2", 1e-4),
                                                                    ("l2", 1e-3), ("none", 0.0)]
    config = json.loads((root / "E6" / "l2_0.001_s1" / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["momentum"]) == ("sgd", 0.01, 0.9)


def test_e8_chooses_resnet20s_lambda_then_compares_four_methods_for_ten_epochs(tmp_path, stand_in, capsys):
    root = tmp_path / "results"
    base = ["--root", str(root), "--dataset", "synthetic"]
    assert main("run", "E8", "--dry-run", *base) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4 and "this stage's" in err and not stand_in
    assert all("--model resnet20" in c and "--epochs 10" in c and "--holdout 5000" in c for c in out.splitlines())
    assert main("run", "E8", *base, "--epochs", "3") == 0
    chosen = json.loads((root / "E8-grid" / "chosen.json").read_text())
    # surface(): L1 best below the grid (its lower point wins), L2 at 1e-4
    assert (chosen["l1"]["l1"], chosen["l2"]["l2"]) == (1e-5, 1e-4) and "--model resnet20" in chosen["criterion"]
    finals = sorted((s.reg, s.l1, s.l2, s.seed) for w, s in stand_in if w == "E8")
    want = [("l1", 1e-5, 0.0), ("l1l2", 1e-5, 1e-4), ("l2", 0.0, 1e-4), ("none", 0.0, 0.0)]
    assert finals == [(*m, seed) for m in want for seed in (0, 1)]
    config = json.loads((root / "E8" / "l1l2_1e-05_0.0001_s1" / "config.json").read_text())
    assert config["model"] == "resnet20" and config["holdout"] == 0 and config["augment"] is False
    stand_in.clear()
    assert main("run", "E8", *base, "--epochs", "3") == 0 and not stand_in  # finished: nothing runs again


def test_e1_trial_runs_for_real_and_resumes(tmp_path, capsys):
    root = tmp_path / "r"
    args = ["--root", str(root), "--dataset", "synthetic", "--train-size", "128", "--val-size", "64",
            "--epochs", "1", "--device", "cpu"]
    assert main("run", "E1", "--dry-run", *args) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 5 and all("--no-augment" in c and "--reg none" in c for c in commands)
    (root / "E1" / "none_s1").mkdir(parents=True)
    (root / "E1" / "none_s1" / "config.json").write_text(json.dumps({"reg": "l1"}))
    # a directory holding another run (one that finished an epoch) is never overwritten
    (root / "E1" / "none_s1" / "metrics.jsonl").write_text(json.dumps(epoch_line(1, 0.5)) + "\n")
    assert main("run", "E1", *args) == 2
    err = capsys.readouterr().err
    assert "none_s1" in err and err.count("\n") == 1, err
    (root / "E1" / "none_s1" / "config.json").unlink()
    (root / "E1" / "none_s1" / "metrics.jsonl").unlink()
    assert main("run", "E1", "--jobs", "2", *args) == 0
    capsys.readouterr()
    for seed in range(5):
        lines = (root / "E1" / f"none_s{seed}" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1 and "train_clean_acc" in json.loads(lines[0])
    assert main("run", "E1", "--dry-run", *args) == 0 and capsys.readouterr().out == ""
    (root / "E1" / "none_s3" / "checkpoint.npz").unlink()
    (root / "E1" / "none_s3" / "metrics.jsonl").write_text("")  # as an interrupted first epoch leaves it
    assert main("run", "E1", "--dry-run", *args) == 0
    out, err = capsys.readouterr()
    assert "none_s3" in out and "--resume" not in out  # no epoch finished: it starts over
    assert main("run", "E1", *args) == 0  # for real, the empty run is cleared and run again
    assert len((root / "E1" / "none_s3" / "metrics.jsonl").read_text().splitlines()) == 1

    # E7 prunes every finished run that has its checkpoint here, once
    assert main("run", "E7", "--root", str(root), "--device", "cpu") == 0
    capsys.readouterr()
    for seed in range(5):
        result = json.loads((root / "E1" / f"none_s{seed}" / "prune.json").read_text())
        assert [p["level"] for p in result["global"]] == [0.0, *ex.E7_LEVELS] and "per_layer" in result
    assert main("run", "E7", "--root", str(root), "--dry-run") == 0 and capsys.readouterr().out == ""
    # a run pruned at other levels (pyregnet.prune's default grid) is pruned again at E7's
    (root / "E1" / "none_s2" / "prune.json").write_text(json.dumps({"global": [{"level": 0.0}, {"level": 0.5}]}))
    assert main("run", "E7", "--root", str(root), "--dry-run") == 0
    assert "none_s2 --per-layer --levels 0.1,0.2," in capsys.readouterr().out
    (root / "E1" / "none_s4" / "prune.json").unlink()
    (root / "E1" / "none_s4" / "checkpoint.npz").unlink()
    assert main("run", "E7", "--root", str(root), "--dry-run") == 0
    out, err = capsys.readouterr()
    assert "none_s4" not in out and "E1/none_s4: no checkpoint.npz on this machine" in err
