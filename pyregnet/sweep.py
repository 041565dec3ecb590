"""python -m pyregnet.sweep: the λ grid search and the four-way comparison (none, L1, L2, L1L2).

    python -m pyregnet.sweep grid    --out DIR [--l1 1e-5,1e-4,1e-3] [--l2 1e-4,1e-3,1e-2]
                                     [--l1l2 1e-5:1e-4,1e-4:1e-3,1e-3:1e-2] [--seeds 0] [train options]
    python -m pyregnet.sweep compare --out DIR [--seeds 0,1,2] [--l1 λ1] [--l2 λ2] [--l1l2 λ1:λ2]
                                     [--from-grid GRID_DIR] [train options]
    python -m pyregnet.sweep run     E1|E2|E3|E4 --root DIR [--data PATH] [--device D] [--jobs N]
    python -m pyregnet.sweep report  DIR | --root DIR

Every run is an independent process, ``python -m pyregnet.train ... --out DIR/<name>``, named
``none_s0``, ``l1_1e-05_s0``, ``l2_0.001_s0``, ``l1l2_1e-05_0.0001_s0`` (penalty, λ, seed). The train
options (--data/--dataset, --train-size, --val-size, --holdout, --epochs, --batch-size, --lr,
--device, --no-augment) are passed through. ``run`` runs one of the experiments of
docs/experiments.md (pyregnet.experiments) under DIR/E1 … DIR/E4. A run whose metrics.jsonl
already holds all epochs is skipped and one with a checkpoint but fewer epochs is resumed, so
running the same command again continues an interrupted sweep. --jobs N runs N at once; --gpus 0,1,... gives each running
process its own CUDA_VISIBLE_DEVICES (one process per GPU by default). A run that fails is
reported at the end (exit code, last line of its stderr), left out of the tables, and makes the
sweep exit 1; bad arguments, and a DIR that another sweep or report is writing (DIR/.lock), exit 2.

grid runs the baseline (none) and every λ of each penalty (--penalties picks which) and
writes DIR/grid.md and DIR/grid.csv: per penalty and λ, the final validation and training
accuracy, the train−val gap and the sparsity, mean ± std over seeds, and the λ chosen per penalty
(the highest mean final validation accuracy). compare writes DIR/compare.md and DIR/compare.csv
(accuracy, gap, best validation accuracy, sparsity at three thresholds, time per epoch, images/s)
and the paper's Figures 10 and 11: DIR/fig10_accuracy.png and DIR/fig11_loss.png. report
re-makes the tables and figures from the run directories without running anything.

Running a sweep on a cluster
----------------------------
``--dry-run`` prints the train commands, one per line, and runs nothing: hand them to the
cluster's own scheduler, then make the tables with ``report`` (it reads the plan that
--dry-run records in DIR/sweep.json: which runs, how many epochs). Each command is self-contained
(absolute --out; give --data as an absolute path too), so any node that sees the same file system
and has pyregnet installed (or the repository as its working directory) can run any line. A
second ``--dry-run`` lists only what is left: finished runs are left out and interrupted ones get
``--resume``.

Slurm job array, one GPU per task::

    python -m pyregnet.sweep compare --seeds 0,1,2 --data /data/cifar-10-python.tar.gz \\
        --out runs/compare --dry-run > commands.txt
    cat > sweep.sbatch <<'EOF'
    #!/bin/bash
    #SBATCH --gpus=1
    #SBATCH --time=02:00:00
    sed -n "$((SLURM_ARRAY_TASK_ID+1))p" commands.txt | bash
    EOF
    sbatch --array=0-$(( $(wc -l < commands.txt) - 1 )) sweep.sbatch
    # when the array is done:
    python -m pyregnet.sweep report runs/compare

Ray (``pip install ray``; ``ray.init(address="auto")`` on a running Ray cluster)::

    import subprocess, ray
    ray.init()

    @ray.remote(num_gpus=1)          # Ray sets CUDA_VISIBLE_DEVICES for the task
    def run(command):
        return command, subprocess.run(command, shell=True).returncode

    commands = open("commands.txt").read().splitlines()
    for command, code in ray.get([run.remote(c) for c in commands]):
        print(code, command)
    # then: python -m pyregnet.sweep report runs/compare
"""

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

from . import rundir
from .files import atomic_write
from .regularizers import DEFAULT_L1, DEFAULT_L2, KINDS, Penalty
from .rundir import RunDirError
from .engine import PENALTY_STEPS
from .optim import DEFAULT_LR, OPTIMIZERS
from .train import Config, UsageError, _lambda, _lr, _momentum, _Parser, _positive_int, _seed

EXIT_FAILED = 1
EXIT_USAGE = 2
PLAN_FILE = "sweep.json"
MAX_SEEDS = 10_000
# What the tables read from each metrics.jsonl line and from each run's config.json.
EPOCH_KEYS = ("epoch", "train_acc", "val_acc", "train_loss", "val_loss", "sparsity", "epoch_time_s", "images_per_s")
SPARSITY_KEYS = ("0.001", "0.0001", "0")

DEFAULT_GRID = {
    "l1": "1e-5,1e-4,1e-3",
    "l2": "1e-4,1e-3,1e-2",
    "l1l2": "1e-5:1e-4,1e-4:1e-3,1e-3:1e-2",   # the l1 and l2 grids pairwise
}
METHOD_NAMES = {"none": "none", "l1": "L1", "l2": "L2", "l1l2": "L1L2"}
METHOD_COLORS = {"none": "tab:gray", "l1": "tab:blue", "l2": "tab:orange", "l1l2": "tab:green"}
# The settings that must agree for two runs to be the same experiment (the epochs may grow).
RUN_KEYS = ("reg", "l1", "l2", "seed", "batch_size", "lr", "data", "dataset", "train_size", "val_size", "augment",
            "holdout", "optimizer", "momentum", "penalty_step")

# RUN_KEYS that runs made before they existed lack: read as the trainer's default then.
OPTIONAL_KEYS = ("holdout", "optimizer", "momentum", "penalty_step")

Stat = namedtuple("Stat", "mean std")   # std: sample standard deviation over seeds; nan for one seed


class Damaged(Exception):
    """A run or sweep file that is not what pyregnet writes; the message names the file."""


# ---------------------------------------------------------------- runs

class Spec(namedtuple("Spec", "reg l1 l2 seed")):
    """One training run: the penalty, its λ and the seed."""

    @property
    def name(self):
        lam = {"none": [], "l1": [self.l1], "l2": [self.l2], "l1l2": [self.l1, self.l2]}[self.reg]
        return "_".join([self.reg, *map(_num, lam), f"s{self.seed}"])

    def train_args(self):
        args = ["--reg", self.reg]
        if self.reg in ("l1", "l1l2"):
            args += ["--l1", _num(self.l1)]
        if self.reg in ("l2", "l1l2"):
            args += ["--l2", _num(self.l2)]
        return args + ["--seed", str(self.seed)]


def _num(x):
    """A float as the shortest text that reads back to it: 1e-05, 0.0001, 0.001."""
    return repr(float(x))


def lambda_text(reg, l1, l2):
    return {"none": "—", "l1": f"λ1={l1:g}", "l2": f"λ2={l2:g}", "l1l2": f"λ1={l1:g}, λ2={l2:g}"}[reg]


def method_label(reg, l1, l2):
    return METHOD_NAMES[reg] + ("" if reg == "none" else f" ({lambda_text(reg, l1, l2)})")


def read_history(path):
    """The epochs in a metrics.jsonl; a torn last line (a process killed mid-write) is ignored.
    Damaged when another line is not an epoch's metrics or the epochs are not 1, 2, 3, ..."""
    history = []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return history
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise Damaged(f"{path}: line {i + 1} is not JSON") from None
        problem = _epoch_problem(entry, len(history) + 1)
        if problem:
            raise Damaged(f"{path}: line {i + 1}: {problem}")
        history.append(entry)
    return history


def _epoch_problem(entry, epoch):
    if not isinstance(entry, dict):
        return "expected a JSON object"
    missing = [k for k in EPOCH_KEYS if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    if entry["epoch"] != epoch:
        return f"expected epoch {epoch} but got {entry['epoch']!r} (two writers, or lines from another run)"
    total = entry["sparsity"].get("total") if isinstance(entry["sparsity"], dict) else None
    if not isinstance(total, dict) or any(k not in total for k in SPARSITY_KEYS):
        return f"expected sparsity.total with thresholds {', '.join(SPARSITY_KEYS)}"
    numbers = [entry[k] for k in EPOCH_KEYS[1:] if k != "sparsity"] + [total[k] for k in SPARSITY_KEYS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return "expected numbers for the accuracies, losses, sparsity and times"
    return None


def read_config(run_dir):
    """A run's config.json; None when there is none. Damaged when it is not one pyregnet wrote."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise Damaged(f"{path} is not JSON ({e})") from None
    numbers = isinstance(config, dict) and all(
        isinstance(config.get(k), (int, float)) and not isinstance(config.get(k), bool) for k in ("l1", "l2"))
    if not (numbers and config.get("reg") in KINDS and type(config.get("seed")) is int):
        raise Damaged(f"{path}: expected reg ({', '.join(KINDS)}), l1, l2 and an integer seed")
    return config


def run_state(run_dir, expected, epochs):
    """What a run directory needs: ("new" | "resume" | "done" | "conflict", detail). A run that
    no epoch finished (no checkpoint, no epoch in metrics.jsonl) is "new": pyregnet.train starts
    it over."""
    run_dir = Path(run_dir)
    metrics, checkpoint = run_dir / "metrics.jsonl", run_dir / "checkpoint.npz"
    if not metrics.exists() and not checkpoint.exists():
        return "new", ""
    try:
        done = len(read_history(metrics))
    except Damaged as e:
        return "conflict", f"{e}; remove {run_dir} to rerun it"
    if done == 0 and not checkpoint.exists():  # no epoch finished: pyregnet.train starts it over
        return "new", ""
    try:
        config = read_config(run_dir)
        if config is None and done:
            raise Damaged(f"{run_dir / 'config.json'} is missing beside metrics.jsonl")
    except Damaged as e:
        if checkpoint.exists() and done < epochs:
            return "resume", f"{done}/{epochs} epochs"  # train checks the checkpoint's settings, rewrites config.json
        return "conflict", f"{e}; remove {run_dir} to rerun it"
    if config is not None:
        diff = [f"{k} {_recorded(config, k)!r} (now {expected[k]!r})" for k in RUN_KEYS
                if _recorded(config, k) != expected[k]]
        if diff:
            return "conflict", (f"{run_dir} holds a run with other settings: {', '.join(diff)}; "
                                "use another --out or remove it")
    if done >= epochs:
        return "done", f"{done} epochs"
    if checkpoint.exists():
        return "resume", f"{done}/{epochs} epochs"
    return "conflict", f"{run_dir} has {done} epochs in metrics.jsonl but no checkpoint.npz; remove it to rerun"


def _recorded(config, key):
    """A RUN_KEYS value of a config.json, as the current trainer writes it: runs made before
    --holdout existed held out nothing, and the data is named by its file name, not its path."""
    value = config.get(key, dataclasses.asdict(Config()).get(key) if key in OPTIONAL_KEYS else None)
    return Path(value).name if key == "data" and value is not None else value


def expected_config(spec, opts):
    """The config.json values (RUN_KEYS) that `python -m pyregnet.train` will write for this run."""
    defaults = Config()
    optimizer = getattr(opts, "optimizer", None) or defaults.optimizer
    momentum = getattr(opts, "momentum", None)
    return {"reg": spec.reg, "l1": spec.l1, "l2": spec.l2, "seed": spec.seed,
            "batch_size": opts.batch_size or defaults.batch_size, "lr": opts.lr or DEFAULT_LR[optimizer],
            "optimizer": optimizer, "momentum": defaults.momentum if momentum is None else momentum,
            "penalty_step": getattr(opts, "penalty_step", None) or defaults.penalty_step,
            "data": Path(opts.data).name if opts.data else None, "dataset": opts.dataset or defaults.dataset,
            "train_size": opts.train_size,
            "val_size": opts.val_size, "augment": opts.augment, "holdout": getattr(opts, "holdout", None) or 0}


def passthrough(opts):
    """The train options given to the sweep, as train arguments (--data made absolute: the
    train processes run in their own directories)."""
    args = []
    data = str(Path(opts.data).resolve()) if opts.data else None
    for flag, value in (("--data", data), ("--dataset", opts.dataset), ("--train-size", opts.train_size),
                        ("--val-size", opts.val_size), ("--epochs", opts.epochs),
                        ("--batch-size", opts.batch_size), ("--lr", opts.lr), ("--device", opts.device),
                        ("--holdout", getattr(opts, "holdout", None) or None),
                        ("--optimizer", getattr(opts, "optimizer", None)), ("--momentum", getattr(opts, "momentum", None)),
                        ("--penalty-step", getattr(opts, "penalty_step", None))):
        if value is not None:
            args += [flag, str(value) if not isinstance(value, float) else _num(value)]
    if not opts.augment:
        args.append("--no-augment")
    return args


def train_command(spec, opts, run_dir, resume=False, python=None):
    return [python or sys.executable, "-m", "pyregnet.train", *spec.train_args(), *passthrough(opts),
            "--out", str(run_dir), *(["--resume"] if resume else [])]


def child_env(gpu=None, threads=None):
    """The environment of a train process: this one's, with its GPU and thread count."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _last_line(path):
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


class Job:
    def __init__(self, spec, run_dir, command):
        self.spec, self.run_dir, self.command = spec, run_dir, command
        self.proc = None
        self.start = 0.0
        self.slot = None


def execute(jobs, n_jobs=1, gpus=None, log=print):
    """Runs the jobs' commands, at most n_jobs at once. Returns {name: (exit code, last stderr line)}.
    Each process writes its stdout to <run>/train.log and its stderr to <run>/train.err."""
    results = {}
    pending = list(jobs)
    running = []
    free = list(range(n_jobs))
    threads = max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 1 else None
    total, started = len(jobs), 0
    try:
        while pending or running:
            while pending and free:
                job = pending.pop(0)
                job.slot = free.pop(0)
                gpu = gpus[job.slot % len(gpus)] if gpus else None
                job.run_dir.mkdir(parents=True, exist_ok=True)
                with open(job.run_dir / "train.log", "a") as out, open(job.run_dir / "train.err", "w") as err:
                    out.write(f"$ {shlex.join(job.command)}\n")
                    out.flush()
                    job.proc = subprocess.Popen(job.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                                env=child_env(gpu, threads), cwd=job.run_dir)
                job.start = time.perf_counter()
                started += 1
                log(f"[{started}/{total}] {job.spec.name}: started" + (f" on GPU {gpu}" if gpu is not None else ""))
                running.append(job)
            time.sleep(0.05)
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    continue
                running.remove(job)
                free.append(job.slot)
                free.sort()
                seconds = time.perf_counter() - job.start
                if code == 0:
                    try:
                        history = read_history(job.run_dir / "metrics.jsonl")
                    except Damaged:
                        history = []  # named when the tables are made
                    acc = f", val acc {history[-1]['val_acc']:.4f}" if history else ""
                    log(f"{job.spec.name}: done in {seconds:.1f}s{acc}")
                    results[job.spec.name] = (0, "")
                else:
                    line = _last_line(job.run_dir / "train.err")
                    log(f"{job.spec.name}: FAILED (exit {code}) after {seconds:.1f}s: {line}")
                    results[job.spec.name] = (code, line)
    except KeyboardInterrupt:
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
        for job in running:
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
        raise
    return results


# ---------------------------------------------------------------- aggregation (pure)

def load_run(run_dir, epochs=None):
    """{"name", "dir", "config", "history"} of one run directory, the history cut to `epochs`;
    None when it holds no run (no metrics.jsonl). Damaged when a file of the run is."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        return None
    config = read_config(run_dir)
    if config is None:
        raise Damaged(f"{run_dir / 'config.json'} is missing beside metrics.jsonl")
    history = read_history(run_dir / "metrics.jsonl")
    return {"name": run_dir.name, "dir": str(run_dir), "config": config,
            "history": history[:epochs] if epochs else history}


def load_runs(directory, names=None, epochs=None, warn=None):
    """The runs in the subdirectories of `directory` (only `names`, when given), sorted by name.
    A damaged run is left out and named in a warning on stderr (or to `warn`)."""
    directory = Path(directory)
    dirs = [directory / n for n in names] if names is not None else sorted(p for p in directory.iterdir() if p.is_dir())
    runs = []
    for d in dirs:
        try:
            run = load_run(d, epochs)
        except Damaged as e:
            message = f"pyregnet.sweep: warning: {d.name} left out of the tables: {e}"
            warn(message) if warn else print(message, file=sys.stderr)
            continue
        if run is not None:
            runs.append(run)
    return runs


def is_complete(run, epochs=None):
    """A run is complete when it has the epochs asked for (its config's, when not given)."""
    need = epochs or run["config"].get("epochs") or 1
    return len(run["history"]) >= need


def _stat(values):
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    return Stat(mean, statistics.stdev(values) if len(values) > 1 else math.nan)


def run_metrics(run):
    """The numbers of one run: its final epoch, its best validation accuracy, and the median over
    its epochs of the training time per epoch and of images/s."""
    history = run["history"]
    last = history[-1]
    total = last["sparsity"]["total"]
    return {
        "final_train_acc": last["train_acc"], "final_val_acc": last["val_acc"],
        "gap": last["train_acc"] - last["val_acc"], "best_val_acc": max(h["val_acc"] for h in history),
        "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "sparsity_1e-3": total["0.001"], "sparsity_1e-4": total["0.0001"], "sparsity_0": total["0"],
        "epoch_time_s": statistics.median(h["epoch_time_s"] for h in history),
        "images_per_s": statistics.median(h["images_per_s"] for h in history),
    }


METRICS = ("final_train_acc", "final_val_acc", "gap", "best_val_acc", "final_train_loss", "final_val_loss",
           "sparsity_1e-3", "sparsity_1e-4", "sparsity_0", "epoch_time_s", "images_per_s")


def group_key(run):
    c = run["config"]
    return c["reg"], float(c["l1"]), float(c["l2"])


def summarize(runs):
    """One row per (penalty, λ1, λ2), ordered none, l1, l2, l1l2 then by λ: the runs' seeds and,
    per metric, Stat(mean, std) over the runs (the seeds)."""
    groups = {}
    for run in runs:
        if run["history"]:
            groups.setdefault(group_key(run), []).append(run)
    rows = []
    for (reg, l1, l2), members in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        members.sort(key=lambda r: r["config"]["seed"])
        per_run = [run_metrics(r) for r in members]
        row = {"method": reg, "l1": l1, "l2": l2, "runs": len(members),
               "seeds": [r["config"]["seed"] for r in members], "names": [r["name"] for r in members],
               "epochs": min(len(r["history"]) for r in members),
               "device": ",".join(sorted({str(r["config"].get("device")) for r in members}))}
        for key in METRICS:
            row[key] = _stat(m[key] for m in per_run)
        rows.append(row)
    return rows


def choose(rows):
    """The chosen λ per penalty: the row with the highest mean final validation accuracy (the
    first, i.e. the smallest λ, on a tie). {penalty: row}; the baseline "none" is not chosen."""
    best = {}
    for row in rows:
        if row["method"] != "none":
            current = best.get(row["method"])
            if current is None or row["final_val_acc"].mean > current["final_val_acc"].mean:
                best[row["method"]] = row
    return best


def mean_curves(runs):
    """Per (penalty, λ): the label, and per epoch the mean and std over seeds of train/val
    accuracy and loss, over the epochs every seed has. [{"method", "label", "epochs", key: ...}]."""
    groups = {}
    for run in runs:
        if run["history"]:
            groups.setdefault(group_key(run), []).append(run)
    series = []
    for (reg, l1, l2), members in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        n = min(len(r["history"]) for r in members)
        entry = {"method": reg, "label": method_label(reg, l1, l2), "runs": len(members),
                 "epochs": [members[0]["history"][i]["epoch"] for i in range(n)]}
        for key in ("train_acc", "val_acc", "train_loss", "val_loss"):
            stats = [_stat(r["history"][i][key] for r in members) for i in range(n)]
            entry[key] = [s.mean for s in stats]
            entry[key + "_std"] = [0.0 if math.isnan(s.std) else s.std for s in stats]
        series.append(entry)
    return series


def settings(runs):
    """The settings the runs share, as {key: value}; a key on which they differ maps to a list."""
    out = {}
    for key in ("data_source", "epochs", "batch_size", "lr", "augment", "device"):
        values = []
        for run in runs:
            value = len(run["history"]) if key == "epochs" else run["config"].get(key)
            if value not in values:
                values.append(value)
        out[key] = values[0] if len(values) == 1 else values
    return out


def mixed_settings(runs):
    """The settings (other than the device) on which the runs differ: the table would mix experiments."""
    return [k for k, v in settings(runs).items() if isinstance(v, list) and k != "device"]


# ---------------------------------------------------------------- tables

def _pm(stat, scale=1.0, digits=2):
    if math.isnan(stat.std):
        return f"{stat.mean * scale:.{digits}f}"
    return f"{stat.mean * scale:.{digits}f} ± {stat.std * scale:.{digits}f}"


GRID_COLUMNS = [("final val acc (%)", "final_val_acc", 100, 2), ("final train acc (%)", "final_train_acc", 100, 2),
                ("train − val gap (pp)", "gap", 100, 2), ("sparsity ≤1e-3 (%)", "sparsity_1e-3", 100, 2)]
COMPARE_COLUMNS = [("final train acc (%)", "final_train_acc", 100, 2), ("final val acc (%)", "final_val_acc", 100, 2),
                   ("train − val gap (pp)", "gap", 100, 2), ("best val acc (%)", "best_val_acc", 100, 2),
                   ("sparsity ≤1e-3 (%)", "sparsity_1e-3", 100, 2), ("sparsity ≤1e-4 (%)", "sparsity_1e-4", 100, 3),
                   ("exact zeros (%)", "sparsity_0", 100, 3), ("time/epoch (s)", "epoch_time_s", 1, 2),
                   ("images/s", "images_per_s", 1, 0)]


def _settings_line(s):
    def show(v, fmt=str):
        return "mixed: " + ", ".join(fmt(x) for x in v) if isinstance(v, list) else fmt(v)
    aug = show(s["augment"], lambda a: "on" if a else "off")
    return (f"Data: {show(s['data_source'])}; {show(s['epochs'])} epochs; batch {show(s['batch_size'])}; "
            f"Adam lr {show(s['lr'])}; augmentation {aug}; device {show(s['device'])}.")


def format_markdown(rows, kind="compare", runs=None):
    """The table of `rows` (from summarize) as markdown; kind "grid" adds the chosen λ per penalty."""
    columns = GRID_COLUMNS if kind == "grid" else COMPARE_COLUMNS
    lines = ["# λ grid search" if kind == "grid" else "# Comparison of penalties: none, L1, L2, L1L2", ""]
    if runs:
        lines += [_settings_line(settings(runs)), ""]
    seeds = sorted({s for row in rows for s in row["seeds"]})
    lines += [f"Mean ± sample standard deviation over the seeds ({', '.join(map(str, seeds))}); one seed shows "
              "the value alone. Final = the last epoch; gap = final train − final val accuracy, in percentage "
              "points; sparsity = fraction of kernel weights with |w| ≤ the threshold, over all layers"
              + ("; time/epoch and images/s = median over a run's epochs of the training pass (no evaluation)."
                 if kind != "grid" else "."), ""]
    chosen = choose(rows) if kind == "grid" else {}
    head = ["penalty", "λ", "seeds", *(c[0] for c in columns)] + (["chosen"] if kind == "grid" else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [METHOD_NAMES[row["method"]], lambda_text(row["method"], row["l1"], row["l2"]), str(row["runs"])]
        cells += [_pm(row[key], scale, digits) for _, key, scale, digits in columns]
        if kind == "grid":
            cells.append("**chosen**" if chosen.get(row["method"]) is row else "")
        lines.append("| " + " | ".join(cells) + " |")
    if kind == "grid" and chosen:
        lines += ["", "Chosen λ per penalty: the highest mean final validation accuracy.", ""]
        for method, row in chosen.items():
            others = sorted((r for r in rows if r["method"] == method and r is not row),
                            key=lambda r: -r["final_val_acc"].mean)
            text = (f"- {METHOD_NAMES[method]}: {lambda_text(method, row['l1'], row['l2'])} — final val acc "
                    f"{_pm(row['final_val_acc'], 100)}% over {row['runs']} seed(s)")
            if others:
                text += (f"; next best {lambda_text(method, others[0]['l1'], others[0]['l2'])} at "
                         f"{_pm(others[0]['final_val_acc'], 100)}%")
            else:
                text += " (the only λ tried)"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"


def csv_text(rows, kind="compare"):
    """The rows as CSV: method, l1, l2, runs, seeds, epochs, device, then <metric>_mean and
    <metric>_std (fractions, seconds; std empty for one seed), and for a grid `chosen` (1 or 0)."""
    chosen = choose(rows) if kind == "grid" else {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method", "l1", "l2", "runs", "seeds", "epochs", "device"]
    header += [f"{m}_{part}" for m in METRICS for part in ("mean", "std")]
    writer.writerow(header + (["chosen"] if kind == "grid" else []))
    for row in rows:
        cells = [row["method"], _num(row["l1"]), _num(row["l2"]), row["runs"], " ".join(map(str, row["seeds"])),
                 row["epochs"], row["device"]]
        for m in METRICS:
            cells += [repr(row[m].mean), "" if math.isnan(row[m].std) else repr(row[m].std)]
        writer.writerow(cells + ([int(chosen.get(row["method"]) is row)] if kind == "grid" else []))
    return buf.getvalue()


def write_csv(rows, path, kind="compare"):
    Path(path).write_text(csv_text(rows, kind))


def write_report(directory, runs, kind, log=print):
    """Writes <kind>.md and <kind>.csv (and for compare the Figures 10-11) from complete runs."""
    directory = Path(directory)
    rows = summarize(runs)
    (directory / f"{kind}.md").write_text(format_markdown(rows, kind, runs))
    write_csv(rows, directory / f"{kind}.csv", kind)
    written = [directory / f"{kind}.md", directory / f"{kind}.csv"]
    if kind == "compare":
        from .plots import plot_methods
        series = mean_curves(runs)
        for s in series:
            s["color"] = METHOD_COLORS[s["method"]] if sum(t["method"] == s["method"] for t in series) == 1 else None
        plot_methods(series, directory / "fig10_accuracy.png", "acc", "accuracy",
                     "Figure 10: training vs validation accuracy by method")
        plot_methods(series, directory / "fig11_loss.png", "loss", "loss (with penalty)",
                     "Figure 11: training vs validation loss by method")
        written += [directory / "fig10_accuracy.png", directory / "fig11_loss.png"]
    mixed = mixed_settings(runs)
    if mixed:
        log(f"pyregnet.sweep: warning: the runs in the {kind} table differ in {', '.join(mixed)}")
    log(f"wrote {', '.join(str(p) for p in written)}")
    return rows


# ---------------------------------------------------------------- arguments

def _floats(text):
    values = []
    for part in text.split(","):
        if part.strip():
            value = _lambda(part.strip())
            if value not in values:
                values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers but got {text!r}")
    return values


def _pairs(text):
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        halves = part.split(":")
        if len(halves) != 2:
            raise argparse.ArgumentTypeError(f"expected λ1:λ2 pairs such as 1e-5:1e-4 but got {part!r}")
        pair = (_lambda(halves[0].strip()), _lambda(halves[1].strip()))
        if pair not in values:
            values.append(pair)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated λ1:λ2 pairs but got {text!r}")
    return values


def _pair(text):
    values = _pairs(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one λ1:λ2 pair but got {text!r}")
    return values[0]


def _seeds(text):
    seeds = {}  # a dict: unique and in order, in linear time
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            lo, hi = _seed(lo), _seed(hi) if hi else _seed(lo)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or 0-4 but got {part!r}: {e}") from None
        if hi < lo:
            raise argparse.ArgumentTypeError(f"expected a range low-high with low <= high but got {part!r}")
        if hi - lo >= MAX_SEEDS or len(seeds.keys() | range(lo, hi + 1)) > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"expected at most {MAX_SEEDS} seeds but {text!r} names more")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    seeds = list(seeds)
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or 0-4 but got {text!r}")
    return seeds


def _penalties(text):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"expected a list of {', '.join(KINDS)} but got {text!r}")
    return list(dict.fromkeys(kinds))


def _gpus(text):
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected GPU ids such as 0,1 but got {text!r}")
    return gpus


def _add_run_options(p, seeds):
    p.add_argument("--out", metavar="DIR", required=True, help="the sweep's directory: one subdirectory per run")
    p.add_argument("--seeds", type=_seeds, metavar="LIST", default=_seeds(seeds), help=f"seeds, e.g. 0,1,2 or 0-4 (default {seeds})")
    p.add_argument("--penalties", type=_penalties, metavar="LIST", default=list(KINDS),
                   help="which of none, l1, l2, l1l2 to run (default all; none is the baseline)")
    p.add_argument("--jobs", type=_positive_int, metavar="N", default=None,
                   help="runs at once (default 1, or one per --gpus entry)")
    p.add_argument("--gpus", type=_gpus, metavar="IDS", default=None,
                   help="GPU ids, e.g. 0,1,2,3: each running process gets one as CUDA_VISIBLE_DEVICES")
    p.add_argument("--dry-run", action="store_true",
                   help="print the train commands still to run, one per line, and run nothing")
    t = p.add_argument_group("train options (passed through to python -m pyregnet.train)")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH", default=None)
    src.add_argument("--dataset", choices=("cifar10", "synthetic"), default=None)
    t.add_argument("--train-size", type=_positive_int, metavar="N", default=None)
    t.add_argument("--val-size", type=_positive_int, metavar="N", default=None)
    t.add_argument("--holdout", type=_positive_int, metavar="N", default=None)
    t.add_argument("--epochs", type=_positive_int, metavar="N", default=None, help=f"default {Config.epochs}")
    t.add_argument("--batch-size", type=_positive_int, metavar="N", default=None)
    t.add_argument("--lr", type=_lr, default=None)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    t.add_argument("--momentum", type=_momentum, default=None)
    t.add_argument("--penalty-step", choices=PENALTY_STEPS, default=None)
    t.add_argument("--device", choices=("auto", "cuda", "cpu"), default=None)
    t.add_argument("--no-augment", dest="augment", action="store_false")


def parser():
    p = _Parser(prog="python -m pyregnet.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="{grid,compare,run,report}")
    sub.required = True
    g = sub.add_parser("grid", help="the λ grid for each penalty, written to DIR/grid.md and grid.csv")
    g.add_argument("--l1", type=_floats, metavar="λ1,...", default=_floats(DEFAULT_GRID["l1"]),
                   help=f"λ1 values for L1 (default {DEFAULT_GRID['l1']})")
    g.add_argument("--l2", type=_floats, metavar="λ2,...", default=_floats(DEFAULT_GRID["l2"]),
                   help=f"λ2 values for L2 (default {DEFAULT_GRID['l2']})")
    g.add_argument("--l1l2", type=_pairs, metavar="λ1:λ2,...", default=_pairs(DEFAULT_GRID["l1l2"]),
                   help=f"λ1:λ2 pairs for L1L2 (default {DEFAULT_GRID['l1l2']})")
    _add_run_options(g, "0")
    c = sub.add_parser("compare", help="none, L1, L2 and L1L2 over seeds: DIR/compare.md, compare.csv, "
                                       "fig10_accuracy.png, fig11_loss.png")
    c.add_argument("--l1", type=_lambda, metavar="λ1", default=None, help=f"λ1 for L1 (default {DEFAULT_L1['l1']:g})")
    c.add_argument("--l2", type=_lambda, metavar="λ2", default=None, help=f"λ2 for L2 (default {DEFAULT_L2['l2']:g})")
    c.add_argument("--l1l2", type=_pair, metavar="λ1:λ2", default=None,
                   help=f"λ1:λ2 for L1L2 (default {DEFAULT_L1['l1l2']:g}:{DEFAULT_L2['l1l2']:g})")
    c.add_argument("--from-grid", metavar="GRID_DIR", default=None,
                   help="use the λ a grid sweep chose (explicit --l1/--l2/--l1l2 win)")
    _add_run_options(c, "0,1,2")
    from .experiments import add_parser as add_experiment_parser
    add_experiment_parser(sub)
    r = sub.add_parser("report", help="re-make the tables and figures from the run directories in DIR")
    r.add_argument("dir", metavar="DIR", nargs="?", default=None)
    r.add_argument("--root", metavar="ROOT", default=None,
                   help="instead of DIR: the experiments E1-E4 under ROOT (python -m pyregnet.sweep run), reported "
                        "in ROOT/report.md and ROOT/figures/ (pyregnet.report)")
    r.add_argument("--kind", choices=("auto", "grid", "compare"), default="auto",
                   help="which tables (default: those the sweep recorded in DIR/sweep.json, else compare when "
                        "every penalty has one λ and grid otherwise)")
    return p


def plan(args):
    """The runs the grid or compare command asks for, in order."""
    if min(args.seeds) < 0:
        raise UsageError(f"--seeds: expected seeds >= 0 but got {min(args.seeds)}")
    specs = []
    if args.command == "grid":
        lambdas = {"none": [(0.0, 0.0)], "l1": [(x, 0.0) for x in args.l1], "l2": [(0.0, x) for x in args.l2],
                   "l1l2": list(args.l1l2)}
    else:
        chosen = {}
        if args.from_grid:
            grid_runs = [r for r in load_runs_safe(args.from_grid) if is_complete(r)]
            chosen = {k: (row["l1"], row["l2"]) for k, row in choose(summarize(grid_runs)).items()}
            missing = [k for k in args.penalties if k != "none" and k not in chosen]
            if missing:
                raise UsageError(f"--from-grid: {args.from_grid} has no finished runs for {', '.join(missing)}")
        lambdas = {"none": [(0.0, 0.0)]}
        for kind in ("l1", "l2", "l1l2"):
            base = Penalty.with_defaults(kind)
            l1, l2 = chosen.get(kind, (base.l1, base.l2))
            if kind == "l1" and args.l1 is not None:
                l1 = args.l1
            if kind == "l2" and args.l2 is not None:
                l2 = args.l2
            if kind == "l1l2" and args.l1l2 is not None:
                l1, l2 = args.l1l2
            lambdas[kind] = [(l1, l2)]
    for kind in KINDS:
        if kind not in args.penalties:
            continue
        for l1, l2 in lambdas[kind]:
            try:
                Penalty(kind, l1, l2)
            except ValueError as e:
                raise UsageError(str(e)) from None
            for seed in args.seeds:
                specs.append(Spec(kind, l1, l2, seed))
    return specs


def load_runs_safe(directory):
    if not Path(directory).is_dir():
        raise UsageError(f"{directory} is not a directory")
    return load_runs(directory)


def _read_plan(directory):
    path = Path(directory) / PLAN_FILE
    try:
        recorded = json.loads(path.read_text(errors="replace"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON ({e}); remove it (the next sweep command writes it again)") from None
    entries = recorded.values() if isinstance(recorded, dict) else [None]
    if not all(isinstance(e, dict) and isinstance(e.get("runs"), list) and all(isinstance(n, str) for n in e["runs"])
               and (e.get("epochs") is None or type(e.get("epochs")) is int) for e in entries):
        raise UsageError(f"{path}: expected {{kind: {{epochs, runs: [names]}}}} as a sweep writes it; remove it "
                         f"(the next sweep command writes it again)")
    return recorded


def _write_plan(directory, kind, specs, epochs, argv):
    directory.mkdir(parents=True, exist_ok=True)
    recorded = _read_plan(directory)
    recorded[kind] = {"epochs": epochs, "runs": [s.name for s in specs], "argv": list(argv)}
    atomic_write(directory / PLAN_FILE, lambda f: f.write((json.dumps(recorded, indent=2) + "\n").encode()))


# ---------------------------------------------------------------- commands

def run_sweep(args, argv, log=print):
    specs = plan(args)
    out = Path(args.out).resolve()
    epochs = args.epochs or Config.epochs
    if args.gpus and args.device == "cpu":
        raise UsageError("--gpus: the runs are on --device cpu")
    n_jobs = args.jobs or (len(args.gpus) if args.gpus else 1)
    jobs, skipped, conflicts = [], [], {}
    for spec in specs:
        run_dir = out / spec.name
        state, detail = run_state(run_dir, expected_config(spec, args), epochs)
        if state == "done":
            skipped.append(spec)
        elif state == "conflict":
            conflicts[spec.name] = (EXIT_USAGE, detail)
        else:
            python = "python" if args.dry_run else None
            jobs.append(Job(spec, run_dir, train_command(spec, args, run_dir, resume=state == "resume", python=python)))
    _write_plan(out, args.command, specs, epochs, argv)
    resumed = sum("--resume" in j.command for j in jobs)
    summary = (f"pyregnet.sweep {args.command}: {len(specs)} runs in {out}: {len(skipped)} finished, "
               f"{resumed} to resume, {len(jobs) - resumed} to start"
               + (f", {len(conflicts)} in conflict" if conflicts else ""))
    if args.dry_run:
        print(summary, file=sys.stderr)
        for name, (_, detail) in conflicts.items():
            print(f"conflict: {name}: {detail}", file=sys.stderr)
        for job in jobs:
            print(shlex.join(job.command))
        return EXIT_FAILED if conflicts else 0
    log(summary + (f"; {min(n_jobs, len(jobs))} at a time" if jobs else ""))
    results = execute(jobs, n_jobs, args.gpus, log)
    results.update(conflicts)
    failed = {name: r for name, r in results.items() if r[0] != 0}
    ok = [s.name for s in specs if s.name not in failed]
    runs = [r for r in load_runs(out, ok, epochs) if is_complete(r, epochs)]
    if runs:
        write_report(out, runs, args.command, log)
    if failed:
        print(f"pyregnet.sweep: {len(failed)} of {len(specs)} runs failed (left out of the tables):", file=sys.stderr)
        for name, (code, line) in failed.items():
            print(f"  {name}: exit {code}: {line or '(no message)'}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def report(args, log=print):
    if (args.dir is None) == (args.root is None):
        raise UsageError("report: expected a sweep directory DIR or --root ROOT (the experiments), one of the two")
    if args.root is not None:
        if not Path(args.root).is_dir():
            raise UsageError(f"--root: {args.root} is not a directory; give the --root the experiments ran in")
        from .report import write_report as write_experiments_report
        write_experiments_report(args.root, log)
        return 0
    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    recorded = _read_plan(directory)
    kinds = [args.kind] if args.kind != "auto" else [k for k in ("grid", "compare") if k in recorded]
    if not kinds:
        everything = load_runs(directory, warn=lambda message: None)  # warned below
        rows = summarize(everything)
        kinds = ["compare" if len({r["method"] for r in rows}) == len(rows) else "grid"]
    wrote = 0
    for kind in kinds:
        entry = recorded.get(kind, {})
        runs = load_runs(directory, [n for n in entry["runs"] if (directory / n).is_dir()] if entry else None,
                         entry.get("epochs"))
        complete = [r for r in runs if is_complete(r, entry.get("epochs"))]
        for r in runs:
            if r not in complete:
                need = entry.get("epochs") or r["config"].get("epochs")
                print(f"pyregnet.sweep: {r['name']}: incomplete ({len(r['history'])}/{need} epochs), left out",
                      file=sys.stderr)
        missing = [n for n in entry.get("runs", []) if not (directory / n / "metrics.jsonl").exists()]
        if missing:
            print(f"pyregnet.sweep: {len(missing)} planned runs not found: {', '.join(missing)}", file=sys.stderr)
        if complete:
            write_report(directory, complete, kind, log)
            wrote += 1
    if not wrote:
        raise UsageError(f"{directory} holds no finished runs")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(argv)
        if args.command == "report":
            if args.dir is None:  # --root: the experiments' report (pyregnet.report) reads, writes only ROOT/report*
                return report(args)
            with rundir.locked(args.dir, "report", create=False):
                return report(args)
        if args.command == "run":
            from .experiments import run_experiment
            with rundir.locked(Path(args.root) / args.experiment, "--root"):
                return run_experiment(args)
        with rundir.locked(args.out, "--out") as sweep_dir:
            sweep_dir.remove_stale_parts()  # of a sweep that was killed writing sweep.json
            return run_sweep(args, argv)
    except (UsageError, RunDirError) as e:
        print(f"pyregnet.sweep: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\npyregnet.sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
