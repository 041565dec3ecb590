"""python -m pyregnet.train: train the paper's CNN (or ResNet-20) on CIFAR-10 with no penalty, L1, L2 or L1L2.

One command runs the paper's experiment (docs/design.md §1) on the CPU or the GPU and writes, under
--out: metrics.jsonl (one JSON line per epoch), checkpoint.npz (every epoch, atomically),
config.json and curves.png. --resume continues a run and ends with the metrics an uninterrupted
run would have: the data order, the augmentation and the initialization are functions of the
seed, the epoch and the step, not of a random state that a restart would lose. --out is locked
while a run writes it (pyregnet.rundir), and a run that fails before its first checkpoint
leaves nothing there.
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import data as datasets
from . import engine, model, optim, options, rundir
from .extras import missing
from .files import atomic_write
from .optim import DEFAULT_LR, DEFAULT_MOMENTUM
from .options import Parser, UsageError
from .regularizers import Penalty
from .rundir import RunDirError

EXIT_USAGE = 2      # bad arguments or data
EXIT_DIVERGED = 1   # the loss became NaN or infinite
EVAL_BATCH = 1000
# The clean-train evaluation: up to this many training images, a fixed class-stratified pick
# (the same for every seed and epoch), evaluated without augmentation every epoch.
CLEAN_TRAIN_SIZE = 10_000
# The fields of a metrics.jsonl line that are wall-clock measurements: everything else is the same
# bits when a run is repeated, resumed or replayed from a captured graph.
TIMING_KEYS = ("epoch_time_s", "eval_time_s", "images_per_s", "extra_eval_time_s")


@dataclasses.dataclass
class Config:
    reg: str = "none"
    l1: float = 0.0
    l2: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    data: str | None = None
    dataset: str = "cifar10"
    train_size: int | None = None
    val_size: int | None = None
    device: str = "cpu"
    augment: bool = True
    penalty_mode: str = "fused"
    graph: bool = True  # on the GPU, replay each step as a captured CUDA graph (same results)
    holdout: int = 0  # training images held out as the validation set (0: validate on the test set)
    optimizer: str = "adam"
    momentum: float = DEFAULT_MOMENTUM  # SGD's (unused by Adam)
    penalty_step: str = "gradient"  # gradient: before the optimizer step (the paper's); proximal: after it
    model: str = "cnn"  # a key of engine.MODELS

    def same_run(self, other):
        """Everything but the number of epochs and how the steps are launched must match to
        resume."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        for key in ("epochs", "graph"):
            mine.pop(key), theirs.pop(key)
        return {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}


class Diverged(Exception):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------- arguments

def parser():
    p = Parser(prog="python -m pyregnet.train", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    options.add_train_options(p)
    return p


def resolve_device(choice):
    import pyregnet
    info = pyregnet.build_info()
    usable, why = info["cuda_available"], ""
    if not info["cuda_compiled"]:
        usable, why = False, "this pyregnet was built without the CUDA backend"
    elif not info["cuda_available"]:
        why = "no usable CUDA GPU or driver was found"
    else:
        try:
            import cupy  # noqa: F401
        except ImportError:
            usable, why = False, missing("cupy")
    if choice == "cuda" and not usable:
        raise UsageError(f"--device cuda: {why}")
    return "cuda" if choice == "cuda" or (choice == "auto" and usable) else "cpu"


def settings(args):
    """The Config fields that parsed options give, as a run records them (the penalty's default λ,
    the optimizer's default lr and momentum filled in), all but the device. ValueError: a bad
    penalty."""
    penalty = Penalty.with_defaults(args.reg, args.l1, args.l2)
    return dict(reg=penalty.kind, l1=penalty.l1, l2=penalty.l2, epochs=args.epochs, batch_size=args.batch_size,
                lr=DEFAULT_LR[args.optimizer] if args.lr is None else args.lr, seed=args.seed, data=args.data,
                dataset=args.dataset, train_size=args.train_size, val_size=args.val_size, augment=args.augment,
                penalty_mode=args.penalty_mode, graph=args.graph, holdout=args.holdout, optimizer=args.optimizer,
                momentum=DEFAULT_MOMENTUM if args.momentum is None else args.momentum,
                penalty_step=args.penalty_step, model=args.model)


def config_from_args(args):
    try:
        values = settings(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.momentum is not None and args.optimizer != "sgd":
        raise UsageError(f"--momentum: applies to --optimizer sgd only (got --optimizer {args.optimizer})")
    if args.penalty_step == "proximal" and args.penalty_mode != "fused":
        raise UsageError(f"--penalty-mode: the proximal step is part of the fused update; use --penalty-mode fused "
                         f"(the default) with --penalty-step proximal, not {args.penalty_mode}")
    return Config(**values, device=resolve_device(args.device))


# ---------------------------------------------------------------- files

def save_checkpoint(path, state):
    atomic_write(path, lambda f: np.savez(f, **state))


def checkpoint_arrays(config):
    """{name: size} of the arrays a checkpoint holds: the parameters, the network's state when it
    has one (BN's running statistics) and the optimizer's state. KeyError: an unknown model or
    optimizer."""
    net = engine.MODELS[config.model]
    opt = {"adam": optim.Adam, "sgd": optim.SGD}[config.optimizer]
    return {"params": net.N_PARAMS, **({"state": net.N_STATE} if net.N_STATE else {}),
            **dict.fromkeys(opt.STATE, net.N_PARAMS)}


CHECKPOINT_SCALARS = ("step", "epoch")


def load_checkpoint(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except Exception as e:
        raise UsageError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    problem = _checkpoint_problem(state)
    if problem:
        raise UsageError(f"--resume: {path} is damaged: {problem}; remove it (and the run directory) to start over")
    return state


def _checkpoint_problem(state):
    """What is wrong with a checkpoint's contents, or None."""
    missing = [k for k in (*CHECKPOINT_SCALARS, "config", "history") if k not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        config = Config(**json.loads(str(state["config"])))
        arrays = checkpoint_arrays(config)
    except (ValueError, TypeError, KeyError) as e:
        return f"its config or history is not what this pyregnet writes ({type(e).__name__}: {e})"
    missing = [k for k in arrays if k not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for key, size in arrays.items():
        a = state[key]
        if a.shape != (size,) or a.dtype.kind != "f":
            return f"{key} is {a.dtype} {a.shape}, expected {size} floats ({config.model})"
    for key in CHECKPOINT_SCALARS:
        a = state[key]
        if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
            return f"{key} is {a.dtype} {a.shape}, expected an integer >= 0"
    try:
        history = json.loads(str(state["history"]))
    except ValueError as e:
        return f"its config or history is not what this pyregnet writes ({type(e).__name__}: {e})"
    if not isinstance(history, list) or len(history) != int(state["epoch"]):
        return f"its history does not hold its {int(state['epoch'])} epochs"
    return None


# ---------------------------------------------------------------- training

class Run:
    """The state of one training run on one device."""

    def __init__(self, config: Config, dataset: datasets.Dataset):
        self.config = config
        self.penalty = Penalty(config.reg, config.l1, config.l2)
        if config.device == "cuda":
            import cupy as xp
        else:
            xp = np
        self.xp = xp
        train, held = split_holdout(dataset.y_train, config.holdout)
        if config.holdout:
            self.x_train, self.y_train = xp.asarray(dataset.x_train[train]), xp.asarray(dataset.y_train[train])
            self.x_val, self.y_val = xp.asarray(dataset.x_train[held]), xp.asarray(dataset.y_train[held])
            self.x_test, self.y_test = xp.asarray(dataset.x_test), xp.asarray(dataset.y_test)
        else:
            self.x_train, self.y_train = xp.asarray(dataset.x_train), xp.asarray(dataset.y_train)
            self.x_val, self.y_val = xp.asarray(dataset.x_test), xp.asarray(dataset.y_test)
            self.x_test, self.y_test = self.x_val, self.y_val
        y_train = dataset.y_train[train]
        clean = datasets.stratified_indices(y_train, min(CLEAN_TRAIN_SIZE, len(y_train)), "train_clean")
        # name -> (images, labels, the indices evaluated): the engine's evaluation programs.
        self.eval_sets = {"val": (self.x_val, self.y_val, np.arange(len(self.y_val))),
                          "test": (self.x_test, self.y_test, np.arange(len(self.y_test))),
                          "train_clean": (self.x_train, self.y_train, clean)}
        self.net = engine.MODELS[config.model]
        self.params = xp.asarray(self.net.init_params(config.seed))
        self.net_state = xp.asarray(self.net.init_state(self.params.dtype))  # BN's running statistics
        self.grad = xp.zeros_like(self.params)
        self.optimizer = optim.make(config.optimizer, self.params, config.lr, config.momentum)
        self.epoch = 0
        self.history = []
        self._engine = None

    def to_host(self, a):
        return a.get() if self.xp is not np else a

    def buffers(self):
        """{checkpoint name: device array} of what a checkpoint saves (checkpoint_arrays)."""
        names = checkpoint_arrays(self.config)
        found = {"params": self.params, "state": self.net_state,
                 **{k: getattr(self.optimizer, k) for k in self.optimizer.STATE}}
        return {k: found[k] for k in names}

    def state(self):
        return {**{k: self.to_host(a) for k, a in self.buffers().items()},
                "step": np.int64(self.optimizer.step), "epoch": np.int64(self.epoch),
                "config": np.array(json.dumps(dataclasses.asdict(self.config))),
                "history": np.array(json.dumps(self.history))}

    def restore(self, state):
        for key, a in self.buffers().items():
            a[...] = self.xp.asarray(state[key])
        self.optimizer.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(str(state["history"]))

    @property
    def engine(self):
        """The device-resident epochs (pyregnet.engine), built on first use."""
        if self._engine is None:
            cfg = self.config
            self._engine = engine.Engine(self.params, self.grad, self.optimizer, self.penalty,
                                         (self.x_train, self.y_train), self.eval_sets, batch_size=cfg.batch_size,
                                         seed=cfg.seed, augment=cfg.augment,
                                         mode=optim.update_mode(cfg.penalty_mode, cfg.penalty_step),
                                         eval_batch=EVAL_BATCH, capture=cfg.graph, net=self.net,
                                         state=self.net_state)
        return self._engine

    def train_epoch(self, progress=None):
        """One pass over the training set in a seeded random order, every image once. Returns
        the epoch's means, as Keras reports them: data loss, loss with the penalty, accuracy.
        progress(done, total, running loss, running accuracy) is called after each step on the
        CPU and once at the end on the GPU (reading the sums mid-epoch would synchronize)."""
        cfg = self.config
        n, batch = len(self.y_train), cfg.batch_size
        last = n % batch

        def total_loss(m):  # a step's penalty counts once per image of its batch
            return m[engine.LOSS] + batch * m[engine.PENALTY_FULL] + last * m[engine.PENALTY_LAST]

        def report(done, steps, m):
            seen = min(n, done * batch)
            progress(done, steps, total_loss(m) / seen, m[engine.CORRECT] / seen)

        order = np.random.default_rng([cfg.seed, self.epoch]).permutation(n)
        sums, steps = self.engine.train_epoch(order, report if progress else None)
        self._check(sums, "training")
        if progress and self.xp is not np:
            report(steps, steps, sums)
        return sums[engine.LOSS] / n, total_loss(sums) / n, sums[engine.CORRECT] / n

    def evaluate(self, name="val"):
        """Mean data loss and accuracy on an image set, no augmentation: "val" (the validation
        set), "test" or "train_clean" (the fixed clean-train subset)."""
        sums = self.engine.evaluate(name)
        self._check(sums, {"val": "validation", "train_clean": "clean-train"}.get(name, name))
        n = len(self.eval_sets[name][2])
        return sums[engine.LOSS] / n, sums[engine.CORRECT] / n

    def _check(self, sums, what):
        if sums[engine.BAD_LABELS] or sums[engine.BAD_INDICES]:
            raise RuntimeError(f"{what}: {int(sums[engine.BAD_LABELS])} labels outside [0, {self.net.CLASSES}) and "
                               f"{int(sums[engine.BAD_INDICES])} sample indices out of range (a bug: the data were "
                               f"checked when loaded)")
        for key, name in ((engine.LOSS, "loss"), (engine.PENALTY_FULL, "penalty"), (engine.PENALTY_LAST, "penalty")):
            if not math.isfinite(sums[key]):
                raise Diverged(f"the {what} {name} became {sums[key]} in epoch {self.epoch + 1}")

    def run_epoch(self, progress=None):
        t0 = time.perf_counter()
        train_data_loss, train_loss, train_acc = self.train_epoch(progress)
        t1 = time.perf_counter()
        val_data_loss, val_acc = self.evaluate()
        t2 = time.perf_counter()
        # Without a holdout the validation set is the test set: one pass serves both.
        test_loss, test_acc = self.evaluate("test") if self.config.holdout else (val_data_loss, val_acc)
        t3 = time.perf_counter()
        clean_loss, clean_acc = self.evaluate("train_clean")
        t4 = time.perf_counter()
        sparsity, hist = model.weight_stats(self.params, kernels=self.net.KERNEL_SLOTS)
        t5 = time.perf_counter()
        self.epoch += 1
        penalty = self.penalty.value(self.params[:self.net.N_KERNEL])
        metrics = {
            "epoch": self.epoch, "train_loss": train_loss, "train_data_loss": train_data_loss, "train_acc": train_acc,
            # Keras adds the regularization losses to the validation loss too.
            "val_loss": val_data_loss + penalty, "val_data_loss": val_data_loss, "val_acc": val_acc,
            "penalty": penalty, "sparsity": sparsity,
            "epoch_time_s": t1 - t0, "eval_time_s": t2 - t1, "images_per_s": len(self.y_train) / (t1 - t0),
            "device": self.config.device, "step": self.optimizer.step,
            # Data losses (no penalty): the test set always; the clean-train subset, no augmentation.
            "test_loss": test_loss, "test_acc": test_acc, "train_clean_loss": clean_loss, "train_clean_acc": clean_acc,
            "extra_eval_time_s": {"test": t3 - t2, "train_clean": t4 - t3, "weights": t5 - t4},
            "weight_hist": hist,  # per layer: exact zeros, counts over model.HIST_LOG10_EDGES, norm
        }
        self.history.append(metrics)
        return metrics


def split_holdout(y_train, holdout):
    """(train indices, held-out indices) into the training set: a fixed class-stratified pick of
    `holdout` images, disjoint from the rest and the same for every seed."""
    held = datasets.stratified_indices(y_train, holdout, "holdout")
    return np.setdiff1d(np.arange(len(y_train)), held), held


# ---------------------------------------------------------------- command line

def _progress_bar(epoch, epochs, stream=sys.stderr):
    if not stream.isatty():
        return None
    last = [0.0]

    def show(done, total, loss, acc):
        now = time.perf_counter()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        filled = int(30 * done / total)
        stream.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                     f"loss {loss:.4f} acc {acc:.4f}")
        if done == total:
            stream.write("\r" + " " * 90 + "\r")
        stream.flush()
    return show


def summary_line(m, epochs, holdout=False):
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  "
            + (f"test_acc {m['test_acc']:.4f}  " if holdout else "")
            + f"clean_train_acc {m['train_clean_acc']:.4f}  penalty {m['penalty']:.4g}  "
            f"sparsity(1e-3) {m['sparsity']['total']['0.001']:.2%}  {m['epoch_time_s']:.1f}s "
            f"({m['images_per_s']:.0f} img/s)")


RUN_FILES = ("metrics.jsonl", "config.json", "curves.png")  # what a run without a checkpoint may have left


def train(config: Config, out, resume=False, log=print, progress=True):
    """Runs (or resumes) a training run writing into `out`, locked against other writers;
    returns the history. A run that fails before its first checkpoint leaves nothing behind."""
    out = Path(out)
    with rundir.locked(out, "--out") as run_dir:
        run_dir.remove_stale_parts()
        try:
            return _train(config, out, resume, log, progress, run_dir)
        except BaseException:
            if run_dir.writing and not (out / "checkpoint.npz").exists():
                run_dir.discard(RUN_FILES)
            raise


def _train(config, out, resume, log, progress, run_dir):
    checkpoint, metrics_path = out / "checkpoint.npz", out / "metrics.jsonl"
    if resume:
        if not checkpoint.exists():
            raise UsageError(f"--resume: {out} holds no checkpoint (no epoch of a run there finished); "
                             f"run the same command without --resume to start the run")
        state = load_checkpoint(checkpoint)
        saved = Config(**json.loads(str(state["config"])))
        diff = config.same_run(saved)
        if diff:
            raise UsageError("--resume: the checkpoint was made with other settings: " +
                             ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items()))
    elif checkpoint.exists():
        raise UsageError(f"--out: {out} already holds a run; use --resume to continue it or choose another --out")
    elif _finished_epochs(metrics_path):
        raise UsageError(f"--out: {metrics_path} holds finished epochs but {out} has no checkpoint.npz to resume "
                         f"from; move them away or choose another --out")

    try:
        dataset = datasets.load(config.data, dataset=config.dataset, train_size=config.train_size,
                                val_size=config.val_size, seed=0, n_classes=engine.MODELS[config.model].CLASSES)
    except datasets.DataError as e:
        raise UsageError(str(e)) from None
    if config.holdout >= len(dataset.y_train):
        raise UsageError(f"--holdout: expected fewer than the {len(dataset.y_train)} training images (some must "
                         f"remain to train on) but got {config.holdout}; lower --holdout or raise --train-size")
    run = Run(config, dataset)
    run_dir.writing = True  # from here on, the files in `out` are this run's
    if resume:
        run.restore(state)
        log(f"resuming {out} after epoch {run.epoch}")
    record = run_record(config, dataset, run)
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(record, indent=2).encode()))
    # metrics.jsonl holds exactly the checkpoint's epochs: an interrupted epoch leaves no line.
    atomic_write(metrics_path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in run.history).encode()))
    optimizer = "Adam" if config.optimizer == "adam" else f"SGD momentum {config.momentum:g}"
    step = ", proximal penalty step" if config.penalty_step == "proximal" and config.reg != "none" else ""
    log(f"pyregnet.train: {run.penalty.describe()}{step}, {dataset.source}, device {config.device}, "
        f"{config.model} ({run.net.N_PARAMS:,} parameters), {optimizer}, batch {config.batch_size}, lr {config.lr:g}, "
        f"augmentation {'on' if config.augment else 'off'}")
    while run.epoch < config.epochs:
        bar = _progress_bar(run.epoch + 1, config.epochs) if progress else None
        try:
            m = run.run_epoch(bar)
        except Diverged as e:
            if checkpoint.exists():
                raise Diverged(f"{e}; stopped. The last good checkpoint ({run.epoch} epochs) stays in "
                               f"{checkpoint}") from None
            raise Diverged(f"{e}; stopped before any epoch finished, so nothing was kept in {out}") from None
        # The checkpoint first: metrics.jsonl never holds an epoch that the checkpoint lacks
        # (--resume rewrites it from the checkpoint's history).
        save_checkpoint(checkpoint, run.state())
        with open(metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
        log(summary_line(m, config.epochs, config.holdout > 0))
    from .plots import plot_curves
    plot_curves(run.history, out / "curves.png", title=f"{run.penalty.describe()}, seed {config.seed}")
    return run.history


def run_record(config, dataset, run):
    """config.json: the settings, the data named by file name and SHA-256 (a path of this machine
    would mean nothing elsewhere), the image counts, and how the metrics are defined."""
    record = dataclasses.asdict(config)
    source = dataset.source
    if config.data is not None:
        name = Path(config.data).name
        for path in sorted({str(Path(config.data).expanduser().absolute()), config.data}, key=len, reverse=True):
            source = source.replace(path, name)
        record["data"] = name
    return {**record, "data_source": source, "data_file": datasets.source_identity(config.data, config.dataset),
            "params": run.net.N_PARAMS, "train_images": len(run.y_train), "val_images": len(run.y_val),
            "test_images": len(run.y_test), "train_clean_images": len(run.eval_sets["train_clean"][2]),
            "sparsity_thresholds": [model.threshold_key(t) for t in model.SPARSITY_THRESHOLDS],
            "weight_hist_log10_edges": list(model.HIST_LOG10_EDGES), **provenance(config.device)}


def provenance(device):
    """What ran the run: the source commit (None outside a git checkout; "+" marks uncommitted
    changes), the build (pyregnet.build_info), the processor or GPU, and when (UTC) this
    process started or resumed the run."""
    import datetime
    import platform
    import subprocess

    import pyregnet
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "--short", "HEAD") if top and Path(top).resolve() == root else None
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", "pyregnet", "csrc"):
        commit += "+"
    processor = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    if device == "cuda":
        import cupy
        processor = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    return {"commit": commit, "build": pyregnet.build_info(), "processor": processor,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}


def _finished_epochs(metrics_path):
    try:
        lines = Path(metrics_path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    return sum(line.strip().endswith("}") for line in lines)


def _kept(out):
    checkpoint = Path(out) / "checkpoint.npz"
    if checkpoint.exists():
        return f"the last finished epoch is in {checkpoint} (--resume continues)"
    return f"no epoch had finished, so nothing was kept in {out} (run the same command again)"


def main(argv=None):
    out = None
    try:
        args = parser().parse_args(argv)
        config = config_from_args(args)
        out = args.out or f"runs/{config.reg}-seed{config.seed}"
        train(config, out, resume=args.resume)
    except (UsageError, RunDirError) as e:
        print(f"pyregnet.train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as e:
        print(f"pyregnet.train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as e:  # a full disk, a folder made read-only under a running run
        where = e.filename or out
        print(f"pyregnet.train: error: cannot write {where} ({e.strerror or e}); {_kept(out)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\npyregnet.train: interrupted; {_kept(out) if out else 'nothing was written'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
