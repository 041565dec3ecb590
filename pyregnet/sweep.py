"""python -m pyregnet.sweep: the λ grid search and the four-way comparison (none, L1, L2, L1L2).

    python -m pyregnet.sweep grid    --out DIR [--l1 LIST] [--l2 LIST] [--l1l2 PAIRS] [--seeds 0] [train options]
    python -m pyregnet.sweep compare --out DIR [--seeds 0,1,2] [--l1 λ1] [--l2 λ2] [--l1l2 λ1:λ2]
                                     [--from-grid GRID_DIR] [train options]
    python -m pyregnet.sweep run     E1|E2|E3|E4 --root DIR [--data PATH] [--device D] [--jobs N]
    python -m pyregnet.sweep report  DIR | --root DIR

The sweep plans the runs, launches each as its own ``python -m pyregnet.train`` process with the
train options passed through (pyregnet.options), skips finished runs and resumes interrupted ones
(pyregnet.runs), and makes the tables and figures of those that finished (pyregnet.tables); ``run``
takes its plans from pyregnet.experiments, ``report --root`` its report from pyregnet.report.
Exit codes: 0 done, 1 a run failed (named at the end, left out of the tables), 2 bad arguments or a
DIR that another sweep or report is writing. README.md describes the commands, their files and
running the commands of ``--dry-run`` on a cluster.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import options, rundir
from .files import atomic_write
from .options import Parser, UsageError
from .regularizers import DEFAULT_L1, DEFAULT_L2, KINDS, Penalty
from .rundir import RunDirError
from .runs import Damaged, Spec, expected_config, is_complete, load_runs, read_history, run_args, run_state
from .tables import choose, summarize, write_report
from .train import Config

EXIT_FAILED = 1
EXIT_USAGE = 2
PLAN_FILE = "sweep.json"

DEFAULT_GRID = {
    "l1": "1e-5,1e-4,1e-3",
    "l2": "1e-4,1e-3,1e-2",
    "l1l2": "1e-5:1e-4,1e-4:1e-3,1e-3:1e-2",   # the l1 and l2 grids pairwise
}


# ---------------------------------------------------------------- launching

def train_command(spec, opts, run_dir, resume=False, python=None):
    return [python or sys.executable, "-m", "pyregnet.train", *spec.train_args(), *run_args(opts),
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


# ---------------------------------------------------------------- arguments

def _add_run_options(p, seeds):
    p.add_argument("--out", metavar="DIR", required=True, help="the sweep's directory: one subdirectory per run")
    p.add_argument("--seeds", type=options.seeds, metavar="LIST", default=options.seeds(seeds),
                   help=f"seeds, e.g. 0,1,2 or 0-4 (default {seeds})")
    p.add_argument("--penalties", type=options.penalties, metavar="LIST", default=list(KINDS),
                   help="which of none, l1, l2, l1l2 to run (default all; none is the baseline)")
    p.add_argument("--jobs", type=options.positive_int, metavar="N", default=None,
                   help="runs at once (default 1, or one per --gpus entry)")
    p.add_argument("--gpus", type=options.gpus, metavar="IDS", default=None,
                   help="GPU ids, e.g. 0,1,2,3: each running process gets one as CUDA_VISIBLE_DEVICES")
    p.add_argument("--dry-run", action="store_true",
                   help="print the train commands still to run, one per line, and run nothing")
    options.add_passed_options(p.add_argument_group("train options (passed through to python -m pyregnet.train)"),
                               help={"epochs": f"default {Config.epochs}"})


def parser():
    p = Parser(prog="python -m pyregnet.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="{grid,compare,run,report}")
    sub.required = True
    g = sub.add_parser("grid", help="the λ grid for each penalty, written to DIR/grid.md and grid.csv")
    g.add_argument("--l1", type=options.lams, metavar="λ1,...", default=options.lams(DEFAULT_GRID["l1"]),
                   help=f"λ1 values for L1 (default {DEFAULT_GRID['l1']})")
    g.add_argument("--l2", type=options.lams, metavar="λ2,...", default=options.lams(DEFAULT_GRID["l2"]),
                   help=f"λ2 values for L2 (default {DEFAULT_GRID['l2']})")
    g.add_argument("--l1l2", type=options.lam_pairs, metavar="λ1:λ2,...",
                   default=options.lam_pairs(DEFAULT_GRID["l1l2"]),
                   help=f"λ1:λ2 pairs for L1L2 (default {DEFAULT_GRID['l1l2']})")
    _add_run_options(g, "0")
    c = sub.add_parser("compare", help="none, L1, L2 and L1L2 over seeds: DIR/compare.md, compare.csv, "
                                       "fig10_accuracy.png, fig11_loss.png")
    c.add_argument("--l1", type=options.lam, metavar="λ1", default=None,
                   help=f"λ1 for L1 (default {DEFAULT_L1['l1']:g})")
    c.add_argument("--l2", type=options.lam, metavar="λ2", default=None,
                   help=f"λ2 for L2 (default {DEFAULT_L2['l2']:g})")
    c.add_argument("--l1l2", type=options.lam_pair, metavar="λ1:λ2", default=None,
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
