"""The sweep: aggregation over hand-made run directories (mean ± std, gap, chosen λ), the
markdown and CSV tables, --dry-run commands, resuming and skipping, failed runs and bad
arguments; one tiny end-to-end comparison on synthetic data."""

import csv
import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyregnet import options, sweep, tables, train
from pyregnet.runs import Spec, expected_config, load_runs, run_args
from pyregnet.regularizers import DEFAULT_L1, DEFAULT_L2

PINNED = ["--l1", "1e-4", "--l2", "1e-3", "--l1l2", "1e-4:1e-3"]  # λ named by the run directories below

TINY = ["--dataset", "synthetic", "--train-size", "256", "--val-size", "128", "--device", "cpu"]


def sparsity(s3, s4=0.0, s0=0.0):
    return {"total": {"0.001": s3, "0.0001": s4, "0": s0}}


def epoch(n, train_acc, val_acc, *, train_loss=1.0, val_loss=1.2, s3=0.1, s4=0.01, s0=0.0, t=2.0, ips=100.0):
    return {"epoch": n, "train_acc": train_acc, "val_acc": val_acc, "train_loss": train_loss, "val_loss": val_loss,
            "penalty": 0.0, "sparsity": sparsity(s3, s4, s0), "epoch_time_s": t, "images_per_s": ips,
            "device": "cpu"}


def config(reg="none", l1=0.0, l2=0.0, seed=0, epochs=2, **kw):
    c = {"reg": reg, "l1": l1, "l2": l2, "epochs": epochs, "batch_size": 64, "lr": 0.001, "seed": seed,
         "data": None, "dataset": "synthetic", "train_size": 256, "val_size": 128, "device": "cpu",
         "augment": True, "data_source": "synthetic (seed 0), train 256/5000, test 128/1000", "params": 315722}
    c.update(kw)
    return c


def make_run(root, spec, history, checkpoint=False, **kw):
    d = Path(root) / spec.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config(spec.reg, spec.l1, spec.l2, spec.seed,
                                                     epochs=kw.pop("epochs", len(history)), **kw)))
    (d / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if checkpoint:
        (d / "checkpoint.npz").write_bytes(b"not used by these tests")
    return d


def two_seed_dir(tmp_path):
    """none: val 0.60 / 0.70, train 0.80 / 0.90; l1 (1e-4): val 0.65 / 0.65, train 0.70 / 0.72."""
    make_run(tmp_path, Spec("none", 0.0, 0.0, 0),
             [epoch(1, 0.5, 0.55), epoch(2, 0.80, 0.60, s3=0.02, t=1.0, ips=200)])
    make_run(tmp_path, Spec("none", 0.0, 0.0, 1),
             [epoch(1, 0.5, 0.72), epoch(2, 0.90, 0.70, s3=0.04, t=3.0, ips=100)])
    make_run(tmp_path, Spec("l1", 1e-4, 0.0, 0), [epoch(1, 0.5, 0.5), epoch(2, 0.70, 0.65, s3=0.5)])
    make_run(tmp_path, Spec("l1", 1e-4, 0.0, 1), [epoch(1, 0.5, 0.5), epoch(2, 0.72, 0.65, s3=0.7)])
    return tmp_path


# ---------------------------------------------------------------- aggregation

def test_summarize_mean_std_gap(tmp_path):
    rows = tables.summarize(load_runs(two_seed_dir(tmp_path)))
    assert [(r["method"], r["l1"], r["runs"], r["seeds"]) for r in rows] == [("none", 0.0, 2, [0, 1]),
                                                                              ("l1", 1e-4, 2, [0, 1])]
    none, l1 = rows
    assert none["final_val_acc"].mean == pytest.approx(0.65)
    assert none["final_val_acc"].std == pytest.approx(math.sqrt(0.005))   # sample std (ddof 1)
    assert none["final_train_acc"].mean == pytest.approx(0.85)
    assert none["gap"].mean == pytest.approx(0.20) and none["gap"].std == pytest.approx(0.0, abs=1e-12)
    assert none["best_val_acc"].mean == pytest.approx((0.60 + 0.72) / 2)  # best epoch, not the last
    assert none["sparsity_1e-3"].mean == pytest.approx(0.03)
    assert none["epoch_time_s"].mean == pytest.approx((1.5 + 2.5) / 2)  # median per run of 2 epochs, then mean
    assert l1["gap"].mean == pytest.approx(0.06) and l1["gap"].std == pytest.approx(math.sqrt(0.0002))
    assert l1["final_val_acc"].std == pytest.approx(0.0, abs=1e-12)


def test_one_seed_has_no_std_and_epochs_cut(tmp_path):
    make_run(tmp_path, Spec("l2", 0.0, 1e-3, 0), [epoch(1, 0.3, 0.2), epoch(2, 0.6, 0.5), epoch(3, 0.9, 0.4)])
    (row,) = tables.summarize(load_runs(tmp_path, epochs=2))
    assert row["epochs"] == 2 and row["final_val_acc"].mean == 0.5 and math.isnan(row["final_val_acc"].std)
    md = tables.format_markdown([row], "compare")
    assert "| L2 | λ2=0.001 | 1 | 60.00 | 50.00 | 10.00 | 50.00 |" in md and "±" not in md.split("|---")[1]
    (line,) = list(csv.DictReader(io.StringIO(tables.csv_text([row]))))
    assert line["final_val_acc_mean"] == "0.5" and line["final_val_acc_std"] == ""


def test_load_runs_ignores_other_dirs_and_torn_lines(tmp_path):
    d = make_run(tmp_path, Spec("none", 0.0, 0.0, 0), [epoch(1, 0.5, 0.4)])
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_')                 # a process killed mid-write
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "grid.md").write_text("")
    runs = load_runs(tmp_path)
    assert [r["name"] for r in runs] == ["none_s0"] and len(runs[0]["history"]) == 1


def test_grid_chooses_best_val_and_says_so(tmp_path):
    for lam, val in ((1e-5, 0.60), (1e-4, 0.66), (1e-3, 0.55)):
        for seed, dv in ((0, -0.01), (1, 0.01)):
            make_run(tmp_path, Spec("l1", lam, 0.0, seed), [epoch(1, 0.7, val + dv)])
    make_run(tmp_path, Spec("none", 0.0, 0.0, 0), [epoch(1, 0.9, 0.7)])   # best, but no penalty
    make_run(tmp_path, Spec("l2", 0.0, 1e-3, 0), [epoch(1, 0.7, 0.5)])
    runs = load_runs(tmp_path)
    rows = tables.summarize(runs)
    chosen = tables.choose(rows)
    assert set(chosen) == {"l1", "l2"}
    assert chosen["l1"]["l1"] == 1e-4 and chosen["l1"]["final_val_acc"].mean == pytest.approx(0.66)
    md = tables.format_markdown(rows, "grid", runs)
    print(md)
    assert "| L1 | λ1=0.0001 | 2 | 66.00 ± 1.41 | 70.00 ± 0.00 | 4.00 ± 1.41 | 10.00 ± 0.00 | **chosen** |" in md
    assert "- L1: λ1=0.0001 — final val acc 66.00 ± 1.41% over 2 seed(s); next best λ1=1e-05 at 60.00 ± 1.41%." in md
    assert "- L2: λ2=0.001 — final val acc 50.00% over 1 seed(s) (the only λ tried)." in md
    assert "synthetic (seed 0)" in md and "1 epochs" in md
    lines = list(csv.DictReader(io.StringIO(tables.csv_text(rows, "grid"))))
    assert [(r["method"], r["l1"], r["chosen"]) for r in lines] == [
        ("none", "0.0", "0"), ("l1", "1e-05", "0"), ("l1", "0.0001", "1"), ("l1", "0.001", "0"), ("l2", "0.0", "1")]
    assert float(lines[2]["final_val_acc_mean"]) == pytest.approx(0.66)
    assert float(lines[2]["gap_mean"]) == pytest.approx(0.04)


def test_compare_table_columns(tmp_path):
    runs = load_runs(two_seed_dir(tmp_path))
    md = tables.format_markdown(tables.summarize(runs), "compare", runs)
    print(md)
    header = next(line for line in md.splitlines() if line.startswith("| penalty"))
    for column in ("final train acc", "final val acc", "train − val gap", "best val acc", "sparsity ≤1e-3",
                   "sparsity ≤1e-4", "exact zeros", "time/epoch (s)", "images/s"):
        assert column in header
    assert "| none | — | 2 | 85.00 ± 7.07 | 65.00 ± 7.07 | 20.00 ± 0.00 | 66.00 ± 8.49 | 3.00 ± 1.41 |" in md
    assert "chosen" not in md


def test_report_remakes_tables_and_figures(tmp_path, capsys):
    two_seed_dir(tmp_path)
    assert sweep.main(["report", str(tmp_path)]) == 0      # one λ per penalty: a comparison
    for name in ("compare.md", "compare.csv", "fig10_accuracy.png", "fig11_loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    make_run(tmp_path, Spec("l1", 1e-3, 0.0, 0), [epoch(1, 0.5, 0.5), epoch(2, 0.6, 0.6)])
    assert sweep.main(["report", str(tmp_path)]) == 0      # two λ for l1: a grid
    assert "**chosen**" in (tmp_path / "grid.md").read_text()


def test_report_leaves_out_incomplete_runs(tmp_path, capsys):
    two_seed_dir(tmp_path)
    make_run(tmp_path, Spec("l2", 0.0, 1e-3, 0), [epoch(1, 0.5, 0.5)], epochs=2)
    assert sweep.main(["report", str(tmp_path), "--kind", "compare"]) == 0
    assert "l2_0.001_s0: incomplete (1/2 epochs)" in capsys.readouterr().err
    assert "| L2 |" not in (tmp_path / "compare.md").read_text()


# ---------------------------------------------------------------- planning and --dry-run

def dry_run(capsys, *args):
    code = sweep.main([*args, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def test_dry_run_lists_the_commands(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, lines, _ = dry_run(capsys, "compare", "--seeds", "0,1", "--l2", "0.01", "--out", str(out), *TINY,
                             "--epochs", "3", "--no-augment")
    assert code == 0
    common = "--epochs 3 --dataset synthetic --train-size 256 --val-size 128 --device cpu --no-augment"
    expected = [f"python -m pyregnet.train --reg none --seed {s} {common} --out {out}/none_s{s}" for s in (0, 1)]
    l1, l1l2 = f"{DEFAULT_L1['l1']:g}", (f"{DEFAULT_L1['l1l2']:g}", f"{DEFAULT_L2['l1l2']:g}")  # the defaults
    expected += [f"python -m pyregnet.train --reg l1 --l1 {l1} --seed {s} {common} --out {out}/l1_{l1}_s{s}"
                 for s in (0, 1)]
    expected += [f"python -m pyregnet.train --reg l2 --l2 0.01 --seed {s} {common} --out {out}/l2_0.01_s{s}"
                 for s in (0, 1)]
    expected += [f"python -m pyregnet.train --reg l1l2 --l1 {l1l2[0]} --l2 {l1l2[1]} --seed {s} {common} "
                 f"--out {out}/l1l2_{l1l2[0]}_{l1l2[1]}_s{s}" for s in (0, 1)]
    assert lines == expected
    assert not any(p.is_dir() for p in out.iterdir())     # nothing ran
    assert json.loads((out / "sweep.json").read_text())["compare"]["epochs"] == 3


def test_dry_run_grid_names(tmp_path, capsys):
    code, lines, _ = dry_run(capsys, "grid", "--out", str(tmp_path), "--l1l2", "1e-5:1e-4,1e-4:1e-3")
    assert code == 0
    names = [Path(line.split("--out ")[1]).name for line in lines]
    assert names == ["none_s0", "l1_1e-05_s0", "l1_0.0001_s0", "l1_0.001_s0", "l2_0.0001_s0", "l2_0.001_s0",
                     "l2_0.01_s0", "l1l2_1e-05_0.0001_s0", "l1l2_0.0001_0.001_s0"]
    assert "--reg l1l2 --l1 1e-05 --l2 0.0001 --seed 0 --out" in lines[-2]
    code, lines, _ = dry_run(capsys, "grid", "--out", str(tmp_path), "--penalties", "l2", "--l2", "1e-3",
                             "--seeds", "0-2")
    assert [Path(line.split("--out ")[1]).name for line in lines] == ["l2_0.001_s0", "l2_0.001_s1", "l2_0.001_s2"]


def test_dry_run_skips_finished_and_resumes_partial(tmp_path, capsys):
    args = ["compare", "--seeds", "0", "--penalties", "none,l2", "--l2", "1e-3", "--out", str(tmp_path), *TINY,
            "--epochs", "2"]
    make_run(tmp_path, Spec("none", 0.0, 0.0, 0), [epoch(1, 0.5, 0.5), epoch(2, 0.6, 0.6)], checkpoint=True,
             epochs=2)
    make_run(tmp_path, Spec("l2", 0.0, 1e-3, 0), [epoch(1, 0.5, 0.5)], checkpoint=True, epochs=2)
    code, lines, err = dry_run(capsys, *args)
    assert code == 0 and len(lines) == 1
    assert lines[0].endswith(f"--out {tmp_path}/l2_0.001_s0 --resume")
    assert "1 finished, 1 to resume, 0 to start" in err
    # more epochs than before: both resume
    code, lines, _ = dry_run(capsys, *args[:-1], "3")
    assert code == 0 and len(lines) == 2 and all(line.endswith("--resume") for line in lines)


def test_from_grid_uses_the_chosen_lambda(tmp_path, capsys):
    grid = tmp_path / "grid"
    for lam, val in ((1e-5, 0.5), (1e-3, 0.6)):
        make_run(grid, Spec("l1", lam, 0.0, 0), [epoch(1, 0.7, val)])
    code, lines, _ = dry_run(capsys, "compare", "--seeds", "0", "--penalties", "l1", "--from-grid", str(grid),
                             "--out", str(tmp_path / "cmp"))
    assert code == 0 and len(lines) == 1 and "--reg l1 --l1 0.001 --seed 0" in lines[0]
    code = sweep.main(["compare", "--penalties", "l2", "--from-grid", str(grid), "--out", str(tmp_path / "c"),
                       "--dry-run"])
    assert code == 2 and "has no finished runs for l2" in capsys.readouterr().err


def test_every_passed_option_reaches_train_and_the_expected_config(tmp_path):
    """Each option a sweep passes through arrives at train with its value, and the config.json the
    sweep expects is what train makes of it."""
    given = {"--epochs": "3", "--batch-size": "32", "--optimizer": "sgd", "--lr": "0.05", "--momentum": "0.5",
             "--penalty-step": "proximal", "--data": "d.tar.gz", "--train-size": "100", "--val-size": "50",
             "--holdout": "10", "--device": "cpu", "--model": "resnet20"}
    args = sweep.parser().parse_args(["compare", "--out", str(tmp_path), *sum(given.items(), ()), "--no-augment"])
    passed = train.parser().parse_args(run_args(args))
    unset = [o.flag for o in options.PASSED if o.flag not in given and o.flag not in ("--no-augment", "--dataset")]
    assert not unset, f"add {unset} to this test"
    for option in options.PASSED:
        if option.flag != "--dataset":  # one of --data and --dataset: --dataset below
            expected = str(Path("d.tar.gz").resolve()) if option.dest == "data" else getattr(args, option.dest)
            assert getattr(passed, option.dest) == expected, option.flag
    synthetic = sweep.parser().parse_args(["grid", "--out", "x", "--dataset", "synthetic"])
    assert train.parser().parse_args(run_args(synthetic)).dataset == "synthetic"
    config = expected_config(Spec("l1", 1e-4, 0.0, 7), args)
    assert config == {"reg": "l1", "l1": 1e-4, "l2": 0.0, "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                      "momentum": 0.5, "penalty_step": "proximal", "seed": 7, "data": "d.tar.gz", "dataset": "cifar10",
                      "train_size": 100, "val_size": 50, "holdout": 10, "augment": False,
                      "model": "resnet20"}
    defaults = expected_config(Spec("none", 0.0, 0.0, 0), sweep.parser().parse_args(["grid", "--out", "x"]))
    assert (defaults["lr"], defaults["momentum"], defaults["holdout"], defaults["augment"], defaults["model"]) == (
        1e-3, 0.9, 0, True, "cnn")


def test_child_env_sets_gpu_and_threads_and_leaves_the_import_path(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = sweep.child_env(gpu="3", threads=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["OMP_NUM_THREADS"] == "2"
    assert "PYTHONPATH" not in env  # the installed (editable) pyregnet is found from any directory


# ---------------------------------------------------------------- running (a stand-in trainer)

FAKE_TRAIN = textwrap.dedent("""
    import json, os, sys
    args = sys.argv[1:]
    get = lambda flag, default=None: args[args.index(flag) + 1] if flag in args else default
    out, reg, seed = get("--out"), get("--reg"), int(get("--seed"))
    if reg == "l1":
        print("starting", flush=True)
        sys.stderr.write("Traceback ...\\nRuntimeError: boom in " + reg + "\\n")
        sys.exit(3)
    os.makedirs(out, exist_ok=True)
    cfg = {"reg": reg, "l1": float(get("--l1", 0)), "l2": float(get("--l2", 0)), "seed": seed, "epochs": 1,
           "batch_size": 64, "lr": 0.001, "data": None, "dataset": "synthetic", "train_size": 256,
           "val_size": 128, "augment": True, "device": "cpu", "data_source": "fake"}
    open(os.path.join(out, "config.json"), "w").write(json.dumps(cfg))
    m = {"epoch": 1, "train_acc": 0.5, "val_acc": 0.4 + seed / 100, "train_loss": 1.0, "val_loss": 1.1,
         "sparsity": {"total": {"0.001": 0.1, "0.0001": 0.01, "0": 0.0}}, "epoch_time_s": 1.0, "images_per_s": 9.0}
    open(os.path.join(out, "metrics.jsonl"), "w").write(json.dumps(m) + "\\n")
    open(os.path.join(out, "gpu.txt"), "w").write(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
""")


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    real = sweep.train_command
    monkeypatch.setattr(sweep, "train_command",
                        lambda *a, **kw: [sys.executable, str(script), *real(*a, **kw)[3:]])
    return script


def test_failed_run_is_reported_and_left_out(tmp_path, fake_train, capsys):
    out = tmp_path / "s"
    code = sweep.main(["compare", "--seeds", "0,1", *PINNED, "--out", str(out), *TINY, "--epochs", "1", "--jobs", "2"])
    err = capsys.readouterr().err
    print(err)
    assert code == 1
    assert "2 of 8 runs failed" in err
    assert "l1_0.0001_s0: exit 3: RuntimeError: boom in l1" in err and "l1_0.0001_s1: exit 3" in err
    md = (out / "compare.md").read_text()
    assert "| none |" in md and "| L2 |" in md and "| L1L2 |" in md and "| L1 |" not in md
    assert "RuntimeError: boom" in (out / "l1_0.0001_s0" / "train.err").read_text()
    assert "starting" in (out / "l1_0.0001_s0" / "train.log").read_text()


def test_gpus_one_process_per_gpu(tmp_path, fake_train, capsys):
    out = tmp_path / "s"
    code = sweep.main(["grid", "--penalties", "none,l2", "--seeds", "0,1", "--out", str(out), *TINY[:-2],
                       "--epochs", "1", "--gpus", "4,7"])
    assert code == 0
    used = {(d / "gpu.txt").read_text() for d in out.iterdir() if (d / "gpu.txt").exists()}
    assert used == {"4", "7"}
    assert "[1/8] none_s0: started on GPU 4" in capsys.readouterr().out


def test_conflicting_run_dir_is_not_overwritten(tmp_path, capsys):
    make_run(tmp_path, Spec("none", 0.0, 0.0, 0), [epoch(1, 0.5, 0.5)], train_size=512)
    code = sweep.main(["compare", "--seeds", "0", "--penalties", "none", "--out", str(tmp_path), *TINY,
                       "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "none_s0: exit 2:" in err and "train_size 512 (now 256)" in err
    assert json.loads((tmp_path / "none_s0" / "config.json").read_text())["train_size"] == 512


def test_real_train_failure_exits_1(tmp_path, capsys):
    d = tmp_path / "none_s0"
    d.mkdir()
    (d / "checkpoint.npz").write_bytes(b"garbage")       # resumed, and pyregnet.train exits 2 on it
    code = sweep.main(["compare", "--seeds", "0", "--penalties", "none", "--out", str(tmp_path), *TINY,
                       "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "none_s0: exit 2: pyregnet.train: error: --resume:" in err and "not a readable checkpoint" in err


# ---------------------------------------------------------------- end to end

def test_compare_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--seeds", "0", *PINNED, "--out", str(out), *TINY, "--epochs", "1", "--jobs", "2"]
    assert sweep.main(args) == 0
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "0 finished" in printed
    for name in ("compare.md", "compare.csv", "fig10_accuracy.png", "fig11_loss.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "compare.md").read_text()
    print(md)
    assert all(f"| {m} |" in md for m in ("none", "L1", "L2", "L1L2"))
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["method"] for r in rows] == ["none", "l1", "l2", "l1l2"] and all(r["runs"] == "1" for r in rows)
    stamps = {d.name: (d / "metrics.jsonl").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    assert sorted(stamps) == ["l1_0.0001_s0", "l1l2_0.0001_0.001_s0", "l2_0.001_s0", "none_s0"]
    assert sweep.main(args) == 0                            # again: everything is skipped
    printed = capsys.readouterr().out
    assert "4 finished, 0 to resume, 0 to start" in printed and "started" not in printed
    assert stamps == {d.name: (d / "metrics.jsonl").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("args", [
    [],
    ["grid"],                                                   # no --out
    ["compare", "--out", "X", "--l1", "-1"],
    ["compare", "--out", "X", "--l1l2", "1e-4"],
    ["grid", "--out", "X", "--l1", "a,b"],
    ["grid", "--out", "X", "--seeds", "x"],
    ["grid", "--out", "X", "--penalties", "l3"],
    ["grid", "--out", "X", "--jobs", "0"],
    ["grid", "--out", "X", "--data", "d", "--dataset", "synthetic"],
    ["grid", "--out", "X", "--device", "cpu", "--gpus", "0"],
    ["report", "does/not/exist"],
    ["sideways"],
], ids=lambda a: " ".join(a) or "empty")
def test_bad_arguments_exit_2(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyregnet.sweep: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "X").exists()


def test_command_line_usage_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyregnet.sweep", "compare", "--out", "x", "--seeds", "a"],
                            capture_output=True, text=True, cwd=tmp_path, env=sweep.child_env())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--seeds" in result.stderr


def test_compare_report_with_pruned_runs(tmp_path, capsys):
    two_seed_dir(tmp_path)

    def pruned(name, accs):
        points = [{"level": lv, "sparsity": lv, "test_acc": a, "test_loss": 1.0}
                  for lv, a in zip((0.0, 0.5, 0.9), accs)]
        (tmp_path / name / "prune.json").write_text(json.dumps({"global": points}))
    pruned("none_s0", [0.60, 0.595, 0.50])   # within 1 pp up to 50%
    pruned("none_s1", [0.70, 0.60, 0.50])    # only unpruned
    pruned("l1_0.0001_s0", [0.65, 0.65, 0.645])
    assert sweep.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "compare.md").read_text()
    assert "largest sparsity within 1 pp after pruning (%)" in md
    assert "| 25.0 ± 35.4 |" in md  # none: 50% and 0%
    assert "| not pruned |" in md    # l1's seed 1 has no prune.json: no mean over a part of the seeds
    assert (tmp_path / "pruning.png").stat().st_size > 1000  # none's curve already
    series = tables.pruning_series(load_runs(tmp_path))
    assert [s["label"] for s in series] == ["none"]  # l1 is left out until all its runs are pruned
    assert series[0]["test_acc"] == pytest.approx([0.65, 0.5975, 0.50])
    pruned("l1_0.0001_s1", [0.66, 0.66, 0.60])
    assert sweep.main(["report", str(tmp_path)]) == 0
    assert "| 70.0 ± 28.3 |" in (tmp_path / "compare.md").read_text()  # l1: 90% and 50%
    assert (tmp_path / "pruning.png").stat().st_size > 1000
