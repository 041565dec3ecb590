"""The experiments E1-E8 (docs/experiments.md states their criteria), as plans for
``python -m pyregnet.sweep run E1|...|E8 --root DIR``: E1-E4 test the paper's claims, E5-E7 go
beyond it (the proximal step, SGD, pruning), E8 asks E3's question of ResNet-20.

Each experiment writes its runs under DIR/<experiment>/<run>: 20 epochs on the full training set,
batch 64, Adam lr 1e-3. E1 is the baseline without augmentation, seeds 0-4. E2 is the λ grid
without augmentation on seed 0 with 5,000 training images held out, chosen by held-out accuracy;
its choice goes to DIR/E2/chosen.json. E3 (no augmentation, seeds 0-4) and E4 (augmentation,
seeds 0-2) compare none, L1, L2 and L1L2 at E2's λ; E3's baseline runs are E1's. E5 chooses
the proximal step's λ like E2 (E5-grid) and runs it at seeds 0-2; E6 trains with SGD; E7 prunes
the finished runs; E8 chooses ResNet-20's λ on held-out images (E8-grid) and compares the four
methods at seeds 0-1 for 10 epochs (a CPU's budget). Running the same command again skips
finished runs and resumes interrupted ones.
"""

import argparse
import json
import math
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from . import options, runs, sweep
from .options import UsageError
from .tables import lambda_text
from .train import Config

ENDPOINT_EPOCHS = 3  # the endpoint: the mean over the last 3 epochs (18-20 of 20)
E2_HOLDOUT = 5000
E2_GRID = {"l1": (1e-6, 3e-6, 1e-5, 3e-5, 1e-4), "l2": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)}
MAX_EXTENSIONS = 2  # grid points added beyond the first grid, per λ and direction
CHOSEN_FILE = "chosen.json"


E5_GRID = {"l1": (1e-4, 1e-3, 1e-2), "l2": (1e-3, 1e-2, 1e-1)}  # the proximal step's λ: docs/experiments.md E5
# E6's runs: (penalty, λ1, λ2, seeds); SGD's sparsity order at λ = 1e-3 is tested, 1e-4 only described.
E6_RUNS = (("none", 0.0, 0.0, (0, 1, 2)), ("l1", 1e-3, 0.0, (0, 1, 2)), ("l2", 0.0, 1e-3, (0, 1, 2)),
           ("l1", 1e-4, 0.0, (0,)), ("l2", 0.0, 1e-4, (0,)))
PRUNED = ("E1", "E3", "E5", "E6")  # E7 prunes the finished runs of these experiments
# E7's pruning levels: pyregnet.prune's default grid (50, 70, 80, ... 99%) with 10-40% and 60% added,
# since the largest sparsity within 1 pp of a baseline run fell at 0 or 50% on that grid.
E7_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
# E8: ResNet-20's λ, one decade apart around the CNN's (E2), and its epochs: a 2-core CPU trains
# ResNet-20 about ten times slower than the CNN, so 10 epochs (docs/experiments.md E8).
E8_GRID = {"l1": (1e-5, 1e-4), "l2": (1e-4, 1e-3)}
E8_EPOCHS = 10


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    augment: bool
    seeds: tuple
    holdout: int = 0
    train: tuple = ()  # further train options of every run: (dest, value) pairs
    epochs: int = None  # None: the trainer's default (20)


EXPERIMENTS = {
    "E1": Experiment("E1", "baseline without augmentation", False, (0, 1, 2, 3, 4)),
    "E2": Experiment("E2", "λ grid without augmentation, chosen on 5,000 held-out training images", False, (0,),
                     E2_HOLDOUT),
    "E3": Experiment("E3", "none, L1, L2, L1L2 at the chosen λ without augmentation", False, (0, 1, 2, 3, 4)),
    "E4": Experiment("E4", "none, L1, L2, L1L2 at the chosen λ with augmentation", True, (0, 1, 2)),
    "E5": Experiment("E5", "the proximal penalty step: L1 and L2 at λ chosen on held-out images (E5-grid), "
                     "then seeds 0-2", False, (0, 1, 2), train=(("penalty_step", "proximal"),)),
    "E6": Experiment("E6", "SGD (lr 0.01, momentum 0.9): none, L1 and L2", False, (0, 1, 2),
                     train=(("optimizer", "sgd"), ("lr", 0.01), ("momentum", 0.9))),
    "E7": Experiment("E7", "pruning curves of every finished run of E1, E3, E5, E6 whose checkpoint is here",
                     False, ()),
    "E8": Experiment("E8", "ResNet-20: L1 and L2 λ chosen on held-out images (E8-grid), then none, L1, L2, L1L2 "
                     "at seeds 0-1, 10 epochs", False, (0, 1), train=(("model", "resnet20"),), epochs=E8_EPOCHS),
}


# ---------------------------------------------------------------- the λ ladder and the choice (pure)

def ladder_step(lam, direction):
    """The next λ on the 1-3-10 ladder (…, 1e-5, 3e-5, 1e-4, …) up (+1) or down (-1)."""
    exponent = math.floor(math.log10(lam) + 1e-9)
    mantissa = round(lam / 10 ** exponent)
    if mantissa not in (1, 3):
        raise ValueError(f"ladder_step: lam: expected 1 or 3 times a power of ten but got {lam!r}")
    if direction > 0:
        mantissa, exponent = (3, exponent) if mantissa == 1 else (1, exponent + 1)
    else:
        mantissa, exponent = (3, exponent - 1) if mantissa == 1 else (1, exponent)
    return float(f"{mantissa}e{exponent}")


def endpoint(history, key="val_acc"):
    """The mean of `key` over the last ENDPOINT_EPOCHS epochs."""
    return statistics.fmean(h[key] for h in history[-ENDPOINT_EPOCHS:])


def best(scores):
    """The key with the highest score; on a tie the smallest key (the weakest penalty)."""
    return min(scores, key=lambda k: (-scores[k], k))


def extend_single(scores, first_grid):
    """The λ to add to a one-penalty grid, or None: a ladder step beyond the best λ when it sits at
    an edge of the grid tried so far, at most MAX_EXTENSIONS steps beyond `first_grid` each way."""
    lam, tried = best(scores), sorted(scores)
    if lam == tried[0] and _steps(tried[0], min(first_grid)) < MAX_EXTENSIONS:
        return ladder_step(tried[0], -1)
    if lam == tried[-1] and _steps(tried[-1], max(first_grid)) < MAX_EXTENSIONS:
        return ladder_step(tried[-1], 1)
    return None


def _steps(a, b):
    """How many ladder steps lie between a and b (1 -> 3 and 3 -> 10 are one step each)."""
    return round(2 * abs(math.log10(b / a)))


def l1l2_first_grid(l1, l2):
    """The 2×2 around the two single-penalty optima: each λ and one ladder step below it (two
    penalties together regularize more than either alone, so their optimum lies at or below)."""
    return [(a, b) for a in (ladder_step(l1, -1), l1) for b in (ladder_step(l2, -1), l2)]


def extend_pair(scores, first_grid):
    """The (λ1, λ2) pairs to add to the L1L2 grid, or []: when the best pair takes the smallest λ1
    (λ2) tried, a ladder step below it, paired with every λ2 (λ1) tried; at most MAX_EXTENSIONS
    steps below the first grid."""
    l1s, l2s = sorted({p[0] for p in scores}), sorted({p[1] for p in scores})
    first_l1s, first_l2s = sorted({p[0] for p in first_grid}), sorted({p[1] for p in first_grid})
    b1, b2 = best(scores)
    if b1 == l1s[0] and _steps(l1s[0], first_l1s[0]) < MAX_EXTENSIONS:
        return [(ladder_step(l1s[0], -1), b) for b in l2s]
    if b2 == l2s[0] and _steps(l2s[0], first_l2s[0]) < MAX_EXTENSIONS:
        return [(a, ladder_step(l2s[0], -1)) for a in l1s]
    return []


# ---------------------------------------------------------------- launching

def _opts(args, experiment, holdout=None):
    """The train options of the experiment's runs, as pyregnet.runs.run_args takes them; `holdout`:
    the held-out images of a selection stage (the experiment's own when not given)."""
    holdout = holdout if holdout is not None else experiment.holdout
    holdout = args.holdout if holdout and args.holdout else holdout
    data = str(Path(args.data).expanduser().resolve()) if args.data else None
    return argparse.Namespace(data=data, dataset=args.dataset, train_size=args.train_size, val_size=args.val_size,
                              epochs=args.epochs or experiment.epochs, device=args.device, augment=experiment.augment,
                              holdout=holdout or None, **dict(experiment.train))


class Launcher:
    """Runs the runs of a stage that are not finished (skipping finished ones, resuming
    interrupted ones), through sweep's job runner; with --dry-run prints their commands."""

    def __init__(self, args, log=print, epochs=None):
        self.args, self.log = args, log
        self.epochs = args.epochs or epochs or Config.epochs
        self.failed = {}

    def __call__(self, entries):
        """entries: [(Spec, run directory, train options)]. Returns True when every run is done."""
        jobs = []
        for spec, run_dir, opts in entries:
            state, detail = runs.run_state(run_dir, runs.expected_config(spec, opts), self.epochs)
            if state == "conflict":
                raise UsageError(detail)
            if state == "done":
                continue
            python = "python" if self.args.dry_run else None
            jobs.append(sweep.Job(spec, run_dir, sweep.train_command(spec, opts, run_dir, resume=state == "resume",
                                                                     python=python)))
        if self.args.dry_run:
            for job in jobs:
                print(shlex.join(job.command))
            return not jobs
        if jobs:
            self.log(f"pyregnet.sweep run: {len(entries)} runs, {len(entries) - len(jobs)} finished, "
                     f"{len(jobs)} to run")
        results = sweep.execute(jobs, self.args.jobs or 1, self.args.gpus, self.log)
        self.failed.update({name: r for name, r in results.items() if r[0] != 0})
        return not self.failed


def _entries(root, experiment, opts, specs):
    return [(spec, root / experiment / spec.name, opts) for spec in specs]


def _scores(entries):
    """{spec: endpoint held-out accuracy} of the finished runs among `entries`."""
    out = {}
    for spec, run_dir, _ in entries:
        run = runs.load_run(run_dir)
        if run is not None and runs.is_complete(run):
            out[spec] = endpoint(run["history"])
    return out


def run_e2(args, root, launch, log=print):
    """The grid in stages: L1 and L2 (extended at an edge), then L1L2 around their optima.
    Writes E2/chosen.json when every stage is done. Returns True when it is."""
    opts = _opts(args, EXPERIMENTS["E2"])
    grids = {kind: list(E2_GRID[kind]) for kind in ("l1", "l2")}
    chosen = {}
    while True:
        specs = [runs.Spec("l1", lam, 0.0, 0) for lam in grids["l1"]] + \
                [runs.Spec("l2", 0.0, lam, 0) for lam in grids["l2"]]
        entries = _entries(root, "E2", opts, specs)
        if not launch(entries):
            return False
        scores = {kind: {s.l1 if kind == "l1" else s.l2: v for s, v in _scores(entries).items() if s.reg == kind}
                  for kind in ("l1", "l2")}
        added = {kind: extend_single(scores[kind], E2_GRID[kind]) for kind in ("l1", "l2")}
        if not any(added.values()):
            break
        for kind, lam in added.items():
            if lam is not None:
                log(f"E2: the best {kind} λ sits at the edge of the grid; adding {lam:g}")
                grids[kind].append(lam)
    for kind in ("l1", "l2"):
        lam = best(scores[kind])
        chosen[kind] = {"l1": lam if kind == "l1" else 0.0, "l2": lam if kind == "l2" else 0.0,
                        "score": scores[kind][lam],
                        "grid": {options.num(k): v for k, v in sorted(scores[kind].items())}}
    first = l1l2_first_grid(chosen["l1"]["l1"], chosen["l2"]["l2"])
    pairs = list(first)
    while True:
        entries = _entries(root, "E2", opts, [runs.Spec("l1l2", a, b, 0) for a, b in pairs])
        if not launch(entries):
            return False
        pair_scores = {(s.l1, s.l2): v for s, v in _scores(entries).items()}
        more = extend_pair(pair_scores, first)
        if not more:
            break
        log(f"E2: the best L1L2 pair sits at a lower edge; adding {', '.join(f'{a:g}:{b:g}' for a, b in more)}")
        pairs += more
    a, b = best(pair_scores)
    chosen["l1l2"] = {"l1": a, "l2": b, "score": pair_scores[(a, b)],
                      "grid": {f"{options.num(x)}:{options.num(y)}": v for (x, y), v in sorted(pair_scores.items())}}
    record = {"criterion": f"mean held-out accuracy over the last {ENDPOINT_EPOCHS} epochs, seed 0, "
                           f"--holdout {opts.holdout}, no augmentation; ties go to the smaller λ", **chosen}
    (root / "E2" / CHOSEN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log("E2: chosen " + ", ".join(f"{k} {lambda_text(k, v['l1'], v['l2'])} ({v['score']:.4f})"
                                         for k, v in chosen.items()) + f"; written to {root / 'E2' / CHOSEN_FILE}")
    return True


def read_chosen(root):
    """{penalty: (λ1, λ2)} from E2/chosen.json; UsageError when E2 has not finished."""
    path = Path(root) / "E2" / CHOSEN_FILE
    try:
        record = json.loads(path.read_text())
        return {kind: (float(record[kind]["l1"]), float(record[kind]["l2"])) for kind in ("l1", "l2", "l1l2")}
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: run E2 first (python -m pyregnet.sweep run E2 --root {root} ...)") \
            from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} is not a λ choice written by E2 ({type(e).__name__}: {e}); run E2 again") from None


def choose_each(args, root, launch, name, grid, log=print):
    """The selection stage of E5 and E8: L1 and L2 at grid[kind] on held-out images (seed 0,
    `name`-grid), the best of each written to `name`-grid/chosen.json. Returns {kind: (λ1, λ2)},
    or None while runs remain."""
    experiment = EXPERIMENTS[name]
    specs = [runs.Spec("l1", lam, 0.0, 0) for lam in grid["l1"]] + [runs.Spec("l2", 0.0, lam, 0) for lam in grid["l2"]]
    entries = _entries(root, f"{name}-grid", _opts(args, experiment, holdout=E2_HOLDOUT), specs)
    if not launch(entries):
        return None
    scores, chosen = _scores(entries), {}
    for kind in ("l1", "l2"):
        mine = {(s.l1 if kind == "l1" else s.l2): v for s, v in scores.items() if s.reg == kind}
        lam = best(mine)
        chosen[kind] = {"l1": lam if kind == "l1" else 0.0, "l2": lam if kind == "l2" else 0.0, "score": mine[lam],
                        "grid": {options.num(k): v for k, v in sorted(mine.items())}}
    steps = ", ".join(f"--{dest.replace('_', '-')} {value}" for dest, value in experiment.train)
    record = {"criterion": f"mean held-out accuracy over the last {ENDPOINT_EPOCHS} epochs, seed 0, --holdout "
                           f"{E2_HOLDOUT}, no augmentation, {steps}; ties go to the smaller λ", **chosen}
    (root / f"{name}-grid" / CHOSEN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log(f"{name}: chosen " + ", ".join(f"{k} {lambda_text(k, v['l1'], v['l2'])} ({v['score']:.4f})"
                                       for k, v in chosen.items()))
    return {kind: (v["l1"], v["l2"]) for kind, v in chosen.items()}


def run_e5(args, root, launch, log=print):
    """Proximal L1 and L2: the grid on held-out images (E5-grid), then the chosen λ at seeds 0-2
    on the full training set (E5)."""
    chosen = choose_each(args, root, launch, "E5", E5_GRID, log)
    if chosen is None:
        return False
    finals = [runs.Spec(k, l1, l2, seed) for k, (l1, l2) in chosen.items() for seed in EXPERIMENTS["E5"].seeds]
    return launch(_entries(root, "E5", _opts(args, EXPERIMENTS["E5"]), finals))


def run_e8(args, root, launch, log=print):
    """ResNet-20: L1 and L2 chosen on held-out images (E8-grid); then none, L1, L2 and L1L2 (the
    two chosen λ together, not gridded) at seeds 0-1 on the full training set (E8)."""
    chosen = choose_each(args, root, launch, "E8", E8_GRID, log)
    if chosen is None:
        return False
    chosen.update(none=(0.0, 0.0), l1l2=(chosen["l1"][0], chosen["l2"][1]))
    finals = [runs.Spec(k, *chosen[k], seed) for k in ("none", "l1", "l2", "l1l2") for seed in EXPERIMENTS["E8"].seeds]
    return launch(_entries(root, "E8", _opts(args, EXPERIMENTS["E8"]), finals))


def e6_entries(args, root):
    opts = _opts(args, EXPERIMENTS["E6"])
    return _entries(root, "E6", opts, [runs.Spec(kind, l1, l2, seed) for kind, l1, l2, seeds in E6_RUNS
                                       for seed in seeds])


def _pruned_at(run_dir, levels):
    """Whether run_dir/prune.json holds a global curve at exactly these levels."""
    try:
        curve = json.loads((Path(run_dir) / "prune.json").read_text())["global"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return [p.get("level") for p in curve] == list(levels)


def run_e7(args, root, log=print):
    """Prunes (python -m pyregnet.prune --per-layer at E7_LEVELS) every finished run of PRUNED that
    has its checkpoint on this machine and no prune.json at those levels yet. Checkpoints are not committed, so a run
    whose checkpoint is gone is named and left out. Returns {run: (exit code, last line)} of the
    failures."""
    jobs, gone = [], []
    for name in PRUNED:
        d = root / name
        for run in (runs.load_runs(d) if d.is_dir() else []):
            run_dir = Path(run["dir"])
            if not runs.is_complete(run) or _pruned_at(run_dir, (0.0, *E7_LEVELS)):
                continue
            if not (run_dir / "checkpoint.npz").exists():
                gone.append(f"{name}/{run_dir.name}")
                continue
            command = ["python" if args.dry_run else sys.executable, "-m", "pyregnet.prune", str(run_dir),
                       "--per-layer", "--levels", ",".join(f"{lv:g}" for lv in E7_LEVELS),
                       *(["--data", str(Path(args.data).expanduser().resolve())] if args.data else []),
                       *(["--device", args.device] if args.device else [])]
            jobs.append(sweep.Job(argparse.Namespace(name=f"{name}/{run_dir.name}"), run_dir, command))
    for run in gone:
        print(f"pyregnet.sweep run E7: {run}: no checkpoint.npz on this machine (not committed); not pruned",
              file=sys.stderr)
    if args.dry_run:
        for job in jobs:
            print(shlex.join(job.command))
        return {}
    results = sweep.execute(jobs, args.jobs or 1, args.gpus, log)
    return {name: r for name, r in results.items() if r[0] != 0}


def comparison_entries(args, root, name):
    """E3's or E4's runs: none, L1, L2, L1L2 at E2's λ over the experiment's seeds. E3's none
    runs are E1's (the same settings), kept in E1's directory."""
    experiment = EXPERIMENTS[name]
    chosen = read_chosen(root)
    opts = _opts(args, experiment)
    entries = []
    for kind in ("none", "l1", "l2", "l1l2"):
        l1, l2 = chosen.get(kind, (0.0, 0.0))
        home = "E1" if name == "E3" and kind == "none" else name
        entries += _entries(root, home, opts, [runs.Spec(kind, l1, l2, seed) for seed in experiment.seeds])
    return entries


def run_experiment(args, log=print):
    """python -m pyregnet.sweep run: exit code 0 when the experiment is done (or, with --dry-run,
    its next commands printed), 1 when a run failed."""
    root = Path(args.root).expanduser().resolve()
    name = args.experiment
    launch = Launcher(args, log, EXPERIMENTS[name].epochs)
    if name == "E2":
        done = run_e2(args, root, launch, log)
    elif name in ("E5", "E8"):
        done = (run_e5 if name == "E5" else run_e8)(args, root, launch, log)
    elif name == "E7":
        launch.failed.update(run_e7(args, root, log))
        done = True
    else:
        if name == "E1":
            entries = _entries(root, "E1", _opts(args, EXPERIMENTS["E1"]),
                               [runs.Spec("none", 0.0, 0.0, seed) for seed in EXPERIMENTS["E1"].seeds])
        elif name == "E6":
            entries = e6_entries(args, root)
        else:
            entries = comparison_entries(args, root, name)
        done = launch(entries)
    if launch.failed:
        print(f"pyregnet.sweep run {name}: {len(launch.failed)} runs failed:", file=sys.stderr)
        for run, (code, line) in launch.failed.items():
            print(f"  {run}: exit {code}: {line or '(no message)'}", file=sys.stderr)
        return sweep.EXIT_FAILED
    if args.dry_run and not done and name in ("E2", "E5", "E8"):
        print(f"pyregnet.sweep run {name}: the commands above are this stage's; run them, then --dry-run again for "
              "the next stage (the next runs depend on their results)", file=sys.stderr)
    elif not args.dry_run:
        log(f"pyregnet.sweep run {name}: done; tables and figures: python -m pyregnet.sweep report --root {root}")
    return 0


def add_parser(sub):
    r = sub.add_parser("run", help="run one of the experiments E1-E8 (docs/experiments.md) under --root DIR")
    r.add_argument("experiment", choices=sorted(EXPERIMENTS), help="; ".join(
        f"{e.name}: {e.title}" for e in EXPERIMENTS.values()))
    r.add_argument("--root", metavar="DIR", required=True,
                   help="where the experiments live: DIR/E1, DIR/E2, ... (E3 and E4 read DIR/E2/chosen.json)")
    r.add_argument("--jobs", type=options.positive_int, metavar="N", default=None, help="runs at once (default 1)")
    r.add_argument("--gpus", type=options.gpus, metavar="IDS", default=None,
                   help="GPU ids, e.g. 0,1: each running process gets one as CUDA_VISIBLE_DEVICES")
    r.add_argument("--dry-run", action="store_true",
                   help="print the train commands still to run (for E2: of the current stage) and run nothing")
    t = r.add_argument_group("data and device (the protocol itself is fixed; --epochs, --train-size, --val-size "
                             "and --holdout are for trials only)")
    options.add_passed_options(t, names=("data", "dataset", "device", "epochs", "train_size", "val_size"))
    t.add_argument("--holdout", type=options.positive_int, metavar="N", default=None,
                   help=f"E2's held-out images (default {E2_HOLDOUT})")
    return r
