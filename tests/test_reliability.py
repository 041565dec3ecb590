"""The trainer under careless and unlucky use: every failure before the first checkpoint leaves
nothing that blocks a rerun, a run directory has one writer at a time (and a killed writer's
lock goes with it), bad arguments and damaged checkpoints are one line and exit 2 before any
data loads, and a run killed with SIGKILL anywhere in its first two epochs (inside the
checkpoint write included) finishes on a rerun with the metrics of an uninterrupted run."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import pyregnet
from pyregnet import data, imagefolder, rundir, train

TINY = ["--dataset", "synthetic", "--train-size", "64", "--val-size", "32", "--batch-size", "32", "--device", "cpu"]


def run(out, *args):
    return train.main([*TINY, "--epochs", "2", *args, "--out", str(out)])


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.lstrip("\n")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def history(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics):
    return [{k: v for k, v in m.items() if "time" not in k and "per_s" not in k} for m in metrics]


def files_in(out):
    return sorted(p.name for p in Path(out).iterdir()) if Path(out).exists() else []


# ---------------------------------------------------------------- failures in the first epoch

def test_divergence_in_the_first_epoch_leaves_nothing_and_says_so(tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    assert run(out, "--lr", "1e9") == train.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "stopped before any epoch finished, so nothing was kept" in err and "checkpoint" not in err
    assert not (tmp_path / "runs").exists()  # it made both folders, and removed them
    assert run(out) == 0 and len(history(out)) == 2


def test_interrupt_in_the_first_epoch_leaves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    out.mkdir()
    (out / "notes.txt").write_text("the user's, kept")

    def interrupted(self, progress=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(train.Run, "run_epoch", interrupted)
    assert run(out) == 130
    err = capsys.readouterr().err
    assert "no epoch had finished, so nothing was kept" in err
    assert files_in(out) == [".lock", "notes.txt"]
    monkeypatch.undo()
    assert run(out) == 0 and len(history(out)) == 2


def test_full_disk_during_the_first_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"

    def no_space(f, **arrays):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train.np, "savez", no_space)
    assert run(out) == train.EXIT_USAGE
    one_line_error(capsys, "cannot write", "No space left on device", "no epoch had finished")
    assert not [n for n in files_in(tmp_path) + files_in(out) if n.endswith(".part")]
    monkeypatch.undo()
    assert run(out) == 0 and len(history(out)) == 2


def test_full_disk_later_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    assert train.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    good = (out / "checkpoint.npz").read_bytes()

    def no_space(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train.np, "savez", no_space)
    assert run(out, "--resume") == train.EXIT_USAGE
    one_line_error(capsys, "No space left on device", f"the last finished epoch is in {out / 'checkpoint.npz'}")
    assert (out / "checkpoint.npz").read_bytes() == good and len(history(out)) == 1


def test_leftovers_of_a_killed_first_epoch_do_not_block(tmp_path, capsys):
    out = tmp_path / "a"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    (out / "config.json").write_text("{}")
    (out / ".checkpoint.npz.abc123.part").write_bytes(b"half a checkpoint")
    assert run(out, "--resume") == train.EXIT_USAGE  # nothing to resume, and it says what to do
    one_line_error(capsys, "holds no checkpoint", "without --resume")
    assert run(out) == 0 and len(history(out)) == 2
    assert not [n for n in files_in(out) if n.endswith(".part")]


def test_finished_epochs_without_a_checkpoint_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "a"
    assert run(out) == 0
    (out / "checkpoint.npz").unlink()
    before = (out / "metrics.jsonl").read_text()
    assert run(out) == train.EXIT_USAGE
    one_line_error(capsys, "holds finished epochs but", "no checkpoint.npz")
    assert (out / "metrics.jsonl").read_text() == before


def test_eleven_class_folders_are_refused_before_training(tmp_path, monkeypatch, capsys):
    PIL_Image = pytest.importorskip("PIL.Image")
    monkeypatch.setenv("PYREGNET_DATA", str(tmp_path / "cache"))
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for c in range(11):
            (root / split / f"class{c:02d}").mkdir(parents=True)
            PIL_Image.fromarray(np.full((32, 32, 3), c, np.uint8)).save(root / split / f"class{c:02d}" / "a.png")
    monkeypatch.setattr(imagefolder, "_decode_image", lambda *a: pytest.fail("decoded"))
    assert train.main(["--data", str(root), "--device", "cpu", "--out", str(tmp_path / "a")]) == train.EXIT_USAGE
    one_line_error(capsys, "has 11 classes", "the network has 10 outputs")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- one writer at a time

def test_second_writer_is_refused(tmp_path, capsys):
    out = tmp_path / "a"
    with rundir.locked(out, "--out"):
        assert run(out) == train.EXIT_USAGE
    one_line_error(capsys, f"--out: {out} is being written by another process (pid {os.getpid()})")
    assert run(out) == 0


def test_lock_does_not_outlive_a_killed_writer(tmp_path):
    out = tmp_path / "a"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pyregnet import rundir
        with rundir.locked({str(out)!r}, "--out"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirError, match=f"pid {holder.pid}"):
            with rundir.locked(out, "--out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / rundir.LOCK_NAME).exists()  # left behind by the killed process, but not held
    assert run(out) == 0


# ---------------------------------------------------------------- arguments, before any work

@pytest.mark.parametrize("case", ["file", "below_file", "cannot_create"])
def test_bad_out_is_one_line_before_data_loads(case, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    out, fragment = {"file": (a_file, "is a file"), "below_file": (a_file / "run", f"is below {a_file}, which is a file"),
                     "cannot_create": (Path("/proc/pyregnet-test/run"), "cannot write in")}[case]
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before --out was checked"))
    assert run(out) == train.EXIT_USAGE
    one_line_error(capsys, "--out:", fragment, "choose another --out")


def test_unwritable_out_is_one_line(tmp_path, monkeypatch, capsys):
    # As root every folder is writable: the check is os.access, so that is what is made to say no.
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    assert run(tmp_path / "a") == train.EXIT_USAGE
    one_line_error(capsys, f"--out: {tmp_path} is not writable")


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "argument --seed: expected an integer from 0 to 2**63 - 1 but got -1"),
    (["--seed", str(2**63)], f"but got {2**63}"),
    (["--seed", "2**63"], "argument --seed: expected an integer but got '2**63'"),
    (["--reg", "l1", "--l1", "1e-400"], "argument --l1: expected 0 or a number float64 can hold"),
    (["--reg", "l1l2", "--l1", "1e-4", "--l2", "2e-324"], "argument --l2: expected 0 or a number"),
])
def test_seeds_and_lambdas_that_cannot_be_used_are_refused(args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded"))
    assert run(tmp_path / "a", *args) == train.EXIT_USAGE
    one_line_error(capsys, fragment)


def test_a_zero_written_another_way_is_still_zero():
    for text in ("0", "0.0e-999", "0e5", "00.000"):
        assert train.parser().parse_args(["--l1", text]).l1 == 0.0
    assert train.parser().parse_args(["--l1", "5e-324"]).l1 == 5e-324  # the smallest float64 above 0


def test_largest_seed_is_the_same_seed_on_every_step(tmp_path):
    out = tmp_path / "a"
    assert train.main([*TINY, "--epochs", "1", "--seed", str(2**63 - 1), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 2**63 - 1
    assert history(out)[0]["epoch"] == 1


# ---------------------------------------------------------------- damaged checkpoints

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "a"
    assert train.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    with np.load(out / "checkpoint.npz") as z:
        return out, {k: z[k] for k in z.files}


@pytest.mark.parametrize("damage, fragment", [
    ("missing_key", "it lacks m"),
    ("short_params", "params is float32 (1000,), expected 315722 floats"),
    ("bad_config", "its config or history is not what this pyregnet writes"),
    ("unknown_config_key", "its config or history is not what this pyregnet writes"),
    ("bad_epoch", "epoch is float64 (), expected an integer >= 0"),
    ("short_history", "its history does not hold its 1 epochs"),
])
def test_damaged_checkpoint_on_resume_is_one_line(damage, fragment, good_checkpoint, tmp_path, capsys):
    src, state = good_checkpoint
    state = dict(state)
    if damage == "missing_key":
        del state["m"]
    elif damage == "short_params":
        state["params"] = state["params"][:1000]
    elif damage == "bad_config":
        state["config"] = np.array("{not json")
    elif damage == "unknown_config_key":
        state["config"] = np.array(json.dumps({**json.loads(str(state["config"])), "colour": "red"}))
    elif damage == "bad_epoch":
        state["epoch"] = np.float64(1.0)
    elif damage == "short_history":
        state["history"] = np.array("[]")
    out = tmp_path / "a"
    out.mkdir()
    np.savez(out / "checkpoint.npz", **state)
    assert run(out, "--resume") == train.EXIT_USAGE
    one_line_error(capsys, f"--resume: {out / 'checkpoint.npz'} is damaged: {fragment}")


# ---------------------------------------------------------------- SIGKILL anywhere in the first two epochs

# Runs pyregnet.train, SIGKILLing itself inside the Nth checkpoint write when KILL_PHASE says so:
# "mid-write" (half the bytes in the temporary file), "before-rename" (written and synced, not yet
# renamed), "after-rename" (the checkpoint in place, its epoch not yet in metrics.jsonl).
KILLER = textwrap.dedent("""
    import io, os, signal, sys
    from pyregnet import files, train
    phase, nth = os.environ.get("KILL_PHASE"), int(os.environ.get("KILL_AT_WRITE", "0"))
    writes = [0]
    real_write, real_replace = train.atomic_write, os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def atomic_write(dest, write):
        if dest.name != "checkpoint.npz":
            return real_write(dest, write)
        writes[0] += 1
        if writes[0] != nth:
            return real_write(dest, write)

        def partial(f):
            if phase == "mid-write":
                buf = io.BytesIO()
                write(buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                die()
            write(f)

        def replace(src, dst):
            if phase == "before-rename":
                die()
            real_replace(src, dst)
        files.os.replace = replace
        real_write(dest, partial)
        files.os.replace = real_replace
        if phase == "after-rename":
            die()

    train.atomic_write = atomic_write
    sys.exit(train.main(sys.argv[1:]))
""")


def _train_process(out, args, env=None, resume=False):
    cmd = [sys.executable, "-c", KILLER, *TINY, "--epochs", "2", "--seed", "3", "--reg", "l1",
           "--out", str(out), *(["--resume"] if resume else []), *args]
    child_env = {**os.environ, "PYTHONPATH": str(Path(pyregnet.__file__).resolve().parents[1]),
                 "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)


def _training_started(proc):
    """Waits for the line the trainer prints once its data are loaded, before epoch 1."""
    line = proc.stdout.readline()
    assert line.startswith("pyregnet.train:"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return time.perf_counter()


def _rerun_until_done(out):
    """What a user (or the sweep) does after a crash: --resume when there is a checkpoint, else
    the same command again."""
    resume = (out / "checkpoint.npz").exists()
    proc = _train_process(out, [], resume=resume)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return resume


def test_sigkill_anywhere_in_the_first_two_epochs_then_rerun_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    proc = _train_process(reference, [])
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    two_epochs = sum(m["epoch_time_s"] + m["eval_time_s"] for m in history(reference))
    expected = without_timing(history(reference))
    with np.load(reference / "checkpoint.npz") as z:
        expected_params = z["params"].copy()

    kills = [{"KILL_PHASE": phase, "KILL_AT_WRITE": str(n)}
             for phase, n in (("mid-write", 1), ("before-rename", 1), ("after-rename", 2))]
    rng = np.random.default_rng(13)
    # Stratified: one random point in each third of the two epochs' time.
    kills += [{"after_s": float(f * two_epochs)} for f in (np.arange(3) + rng.uniform(0, 1, 3)) / 3]
    for i, kill in enumerate(kills):
        out = tmp_path / f"killed{i}"
        proc = _train_process(out, [], env={k: v for k, v in kill.items() if k.startswith("KILL")})
        if "after_s" in kill:
            _training_started(proc)
            try:
                proc.wait(timeout=kill["after_s"])
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=300)
        left = files_in(out)
        resumed = _rerun_until_done(out)
        print(f"kill {kill}: exit {proc.returncode}, left {left}, rerun {'--resume' if resumed else 'plain'}")
        assert without_timing(history(out)) == expected, kill
        with np.load(out / "checkpoint.npz") as z:
            np.testing.assert_array_equal(z["params"], expected_params)
        assert not [n for n in files_in(out) if n.endswith(".part")], files_in(out)


# ---------------------------------------------------------------- the sweep

from pyregnet import options, sweep  # noqa: E402
from pyregnet.runs import Spec, expected_config, run_state  # noqa: E402
from test_sweep import two_seed_dir  # noqa: E402

SWEEP_TINY = ["--dataset", "synthetic", "--train-size", "64", "--val-size", "32", "--batch-size", "32",
              "--device", "cpu", "--epochs", "1"]


def test_second_sweep_on_one_directory_is_refused(tmp_path, capsys):
    with rundir.locked(tmp_path, "--out"):
        assert sweep.main(["grid", "--penalties", "none", "--out", str(tmp_path), *SWEEP_TINY]) == sweep.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is being written by another process (pid {os.getpid()})" in err
        assert sweep.main(["report", str(tmp_path)]) == sweep.EXIT_USAGE
        assert "is being written by another process" in capsys.readouterr().err
    assert not (tmp_path / "none_s0").exists()


def test_two_writers_in_one_run_directory_cannot_interleave(tmp_path, capsys):
    # What two concurrent sweeps did to a run before: epochs 1, 1, 2, 2 in its metrics.jsonl.
    out = tmp_path / "none_s0"
    with rundir.locked(out, "--out"):
        code = sweep.main(["compare", "--penalties", "none", "--seeds", "0", "--out", str(tmp_path), *SWEEP_TINY])
    err = capsys.readouterr().err
    assert code == sweep.EXIT_FAILED and "none_s0: exit 2: pyregnet.train: error: --out:" in err
    assert "being written by another process" in err and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("damage, fragment", [
    ("repeated_epochs", "line 2: expected epoch 2 but got 1 (two writers"),
    ("middle_line", "line 1 is not JSON"),
    ("missing_key", "line 2: lacks val_acc"),
    ("sparsity", "line 1: expected sparsity.total with thresholds"),
    ("config", "config.json is not JSON"),
    ("config_fields", "config.json: expected reg"),
    ("no_config", "config.json is missing beside metrics.jsonl"),
])
def test_damaged_run_is_named_not_dropped_silently(damage, fragment, tmp_path, capsys):
    two_seed_dir(tmp_path)
    d = tmp_path / "none_s0"
    lines = (d / "metrics.jsonl").read_text().splitlines()
    if damage == "repeated_epochs":
        lines = [lines[0], lines[0], lines[1], lines[1]]
    elif damage == "middle_line":
        lines[0] = lines[0][:20]
    elif damage == "missing_key":
        lines[1] = json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "val_acc"})
    elif damage == "sparsity":
        lines[0] = json.dumps({**json.loads(lines[0]), "sparsity": {"total": {"0.001": 0.1}}})
    elif damage == "config":
        (d / "config.json").write_text('{"reg": "none", ')
    elif damage == "config_fields":
        (d / "config.json").write_text(json.dumps({"reg": "none", "l1": 0.0, "l2": 0.0, "seed": "zero"}))
    elif damage == "no_config":
        (d / "config.json").unlink()
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert sweep.main(["report", str(tmp_path), "--kind", "compare"]) == 0
    err = capsys.readouterr().err
    assert f"warning: none_s0 left out of the tables: {d}" in err and fragment in err, err
    md = (tmp_path / "compare.md").read_text()
    assert "| none | — | 1 |" in md  # the other seed's run, alone
    # A sweep does not count the damaged run as finished: it is a conflict, named, exit 1.
    state, detail = run_state(d, expected_config(Spec("none", 0.0, 0.0, 0), _opts()), 2)
    assert state == "conflict" and str(d) in detail


def _opts():
    args = sweep.parser().parse_args(["compare", "--out", "x", "--dataset", "synthetic", "--train-size", "256",
                                      "--val-size", "128"])
    return args


def test_run_that_no_epoch_finished_is_started_over(tmp_path):
    d = tmp_path / "none_s0"
    d.mkdir()
    (d / "metrics.jsonl").write_text("")
    (d / "config.json").write_text("{")
    assert run_state(d, expected_config(Spec("none", 0.0, 0.0, 0), _opts()), 1) == ("new", "")


@pytest.mark.parametrize("content", ['{"grid": ', '{"grid": {"runs": "none_s0"}}', "[]"])
def test_damaged_sweep_json_is_named(content, tmp_path, capsys):
    two_seed_dir(tmp_path)
    (tmp_path / "sweep.json").write_text(content)
    assert sweep.main(["report", str(tmp_path)]) == sweep.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'sweep.json'}" in err and "remove it" in err
    assert sweep.main(["grid", "--penalties", "none", "--out", str(tmp_path), *SWEEP_TINY, "--dry-run"]) == 2
    assert "sweep.json" in capsys.readouterr().err


def test_huge_seed_ranges_are_refused_at_once(tmp_path, capsys):
    start = time.perf_counter()
    assert sweep.main(["compare", "--seeds", "0-100000000", "--out", str(tmp_path / "x"), "--dry-run"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"expected at most {options.MAX_SEEDS} seeds" in err
    start = time.perf_counter()
    seeds = options.seeds(f"0-{options.MAX_SEEDS - 1},5,3-7")
    assert seeds == list(range(options.MAX_SEEDS)) and time.perf_counter() - start < 1


@pytest.mark.parametrize("seeds, fragment", [
    ("-1", "expected seeds such as 0,1,2 or 0-4 but got '-1'"),
    (str(2**63), "expected an integer from 0 to 2**63 - 1"),
    ("5-2", "with low <= high but got '5-2'"),
])
def test_sweep_seeds_outside_the_range_are_refused(seeds, fragment, tmp_path, capsys):
    assert sweep.main(["grid", "--seeds", seeds, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "x").exists()


def test_sweep_lambda_that_would_be_zero_is_refused(tmp_path, capsys):
    assert sweep.main(["grid", "--l1", "1e-5,1e-400", "--out", str(tmp_path / "x")]) == 2
    assert "expected 0 or a number float64 can hold" in capsys.readouterr().err


def test_sweep_removes_a_killed_sweeps_temporary_files(tmp_path, capsys):
    (tmp_path / ".sweep.json.k1ll3d.part").write_text('{"grid": ')
    assert sweep.main(["grid", "--penalties", "none", "--out", str(tmp_path), *SWEEP_TINY, "--dry-run"]) == 0
    assert not list(tmp_path.glob("*.part")) and json.loads((tmp_path / "sweep.json").read_text())["grid"]["runs"]
