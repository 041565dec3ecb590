"""The run directories that python -m pyregnet.train writes, as a sweep sees them: what a run
is (Spec), reading its config.json and metrics.jsonl, and what a directory needs (start, resume,
nothing, or a conflict to report)."""

import argparse
import dataclasses
import json
import sys
from collections import namedtuple
from pathlib import Path

from . import options, train
from .options import OPTIONAL_KEYS, RUN_KEYS, num
from .regularizers import KINDS

# What the tables read from each metrics.jsonl line, and the sparsity thresholds among them.
EPOCH_KEYS = ("epoch", "train_acc", "val_acc", "train_loss", "val_loss", "sparsity", "epoch_time_s", "images_per_s")
SPARSITY_KEYS = ("0.001", "0.0001", "0")


class Damaged(Exception):
    """A run or sweep file that is not what pyregnet writes; the message names the file."""


class Spec(namedtuple("Spec", "reg l1 l2 seed")):
    """One training run: the penalty, its λ and the seed."""

    @property
    def name(self):
        lam = {"none": [], "l1": [self.l1], "l2": [self.l2], "l1l2": [self.l1, self.l2]}[self.reg]
        return "_".join([self.reg, *map(num, lam), f"s{self.seed}"])

    def train_args(self):
        args = ["--reg", self.reg]
        if self.reg in ("l1", "l1l2"):
            args += ["--l1", num(self.l1)]
        if self.reg in ("l2", "l1l2"):
            args += ["--l2", num(self.l2)]
        return args + ["--seed", str(self.seed)]


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


def run_args(opts):
    """The train options given to a sweep (an argparse namespace), as the train arguments of each
    of its runs; --data made absolute, since each run works in its own directory."""
    data = getattr(opts, "data", None)
    if data:
        opts = argparse.Namespace(**{**vars(opts), "data": str(Path(data).resolve())})
    return options.passed_args(opts)


def expected_config(spec, opts):
    """The config.json values (RUN_KEYS) that python -m pyregnet.train will write for this run:
    what train's own parser and settings make of the run's arguments."""
    values = train.settings(train.parser().parse_args([*spec.train_args(), *run_args(opts)]))
    values["data"] = Path(values["data"]).name if values["data"] else None
    return {key: values[key] for key in RUN_KEYS}


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
    """A RUN_KEYS value of a config.json, as the current trainer writes it: a run made before an
    option existed (OPTIONAL_KEYS) lacks it and ran with its default, and the data is named by its
    file name, not its path."""
    value = config.get(key, dataclasses.asdict(train.Config()).get(key) if key in OPTIONAL_KEYS else None)
    return Path(value).name if key == "data" and value is not None else value
