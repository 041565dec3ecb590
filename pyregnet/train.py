"""python -m pyregnet.train: train the paper's CNN on CIFAR-10 with no penalty, L1, L2 or L1L2.

One command runs the paper's experiment (DESIGN.md §1) on the CPU or the GPU and writes, under
--out: metrics.jsonl (one JSON line per epoch), checkpoint.npz (every epoch, atomically),
config.json and curves.png. --resume continues a run and ends with the metrics an uninterrupted
run would have: the data order, the augmentation and the initialization are functions of the
seed, the epoch and the step, not of a random state that a restart would lose.
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
from . import model, ops
from .files import atomic_write
from .optim import Adam
from .regularizers import KINDS, Penalty

EXIT_USAGE = 2      # bad arguments or data
EXIT_DIVERGED = 1   # the loss became NaN or infinite
MAX_SHIFT = 3       # ±3 px, 10% of 32 (DESIGN.md §1)
EVAL_BATCH = 1000
PENALTY_MODES = ("fused", "unfused", "loss")  # how the penalty is applied: training_step


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

    def same_run(self, other):
        """Everything but the number of epochs (and where it runs) must match to resume."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        for key in ("epochs",):
            mine.pop(key), theirs.pop(key)
        return {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}


class UsageError(Exception):
    """Bad arguments, data or state: one line for the user, exit code 2."""


class Diverged(Exception):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text}")
    return value


def _lambda(text):
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 but got {text}")
    return value


def _lr(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 but got {text}")
    return value


def parser():
    p = _Parser(prog="python -m pyregnet.train", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reg", default="none", choices=KINDS,
                   help="weight penalty on the conv and dense kernels: none, L1 (λ1 Σ|w|), L2 (λ2 Σw²) or both")
    p.add_argument("--l1", type=_lambda, default=None, help="λ1 (default: the grid-search choice for --reg)")
    p.add_argument("--l2", type=_lambda, default=None, help="λ2 (default: the grid-search choice for --reg)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=_lr, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="initialization, data order and augmentation")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH", default=None,
                     help="CIFAR-10 at PATH: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image-folder "
                          "tree (train/<class>, test/<class>) or its .tar.gz")
    src.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10",
                     help="cifar10: from the cache ($PYREGNET_DATA or ~/.cache/pyregnet), downloaded on first use")
    p.add_argument("--train-size", type=_positive_int, default=None, help="train on a subset of N images")
    p.add_argument("--val-size", type=_positive_int, default=None, help="validate on a subset of N images")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off the random flips and ±3 px shifts")
    p.add_argument("--penalty-mode", choices=PENALTY_MODES, default="fused",
                   help="how the penalty is applied (same result, different cost): fused into the Adam pass, "
                        "unfused (its own gradient pass), or loss (a value reduction plus a gradient pass, as "
                        "autodiff frameworks do); see bench/penalty_cost.py")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default runs/<reg>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
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
            usable, why = False, "CuPy is not installed (pip install cupy-cuda13x)"
    if choice == "cuda" and not usable:
        raise UsageError(f"--device cuda: {why}")
    return "cuda" if choice == "cuda" or (choice == "auto" and usable) else "cpu"


def config_from_args(args):
    try:
        penalty = Penalty.with_defaults(args.reg, args.l1, args.l2)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Config(reg=penalty.kind, l1=penalty.l1, l2=penalty.l2, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, seed=args.seed, data=args.data, dataset=args.dataset, train_size=args.train_size,
                  val_size=args.val_size, device=resolve_device(args.device), augment=args.augment,
                  penalty_mode=args.penalty_mode)


# ---------------------------------------------------------------- files

def save_checkpoint(path, state):
    atomic_write(path, lambda f: np.savez(f, **state))


def load_checkpoint(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise UsageError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- training

NO_PENALTY = Penalty()


def training_step(params, grad, adam, penalty, images, labels, index, seed, augment, penalty_mode="fused"):
    """One step: gather and augment the samples `index` of `images` on their device, forward,
    softmax cross-entropy, backward into `grad`, then the penalty and the Adam update of `params`.
    Returns (mean data loss, penalty value before the update, correct predictions). The
    augmentation draw is a function of (seed, adam.step, position), so a step is reproducible.

    penalty_mode, how the penalty is applied (the same numbers, different passes over memory):
      fused    one pass: penalty gradient + Adam, the penalty value summed in the same pass;
      unfused  the penalty gradient (and value) as its own pass, then Adam;
      loss     as autodiff frameworks do it: a reduction for the value, a pass for the gradient,
               then Adam.
    """
    x = ops.augment_batch(images, index, seed=seed, step=adam.step, max_shift=MAX_SHIFT if augment else 0,
                          flip=augment)
    logits, cache = model.forward(params, x)
    loss, dlogits, hits = ops.softmax_cross_entropy(logits, labels[index])
    if not math.isfinite(loss):  # before the update: the parameters stay as they were
        raise Diverged(f"the loss became {loss} at step {adam.step + 1}")
    model.backward(params, cache, dlogits, grad)
    n = model.N_KERNEL
    if penalty.kind == "none":
        value = 0.0
        adam.update(params, grad, NO_PENALTY, n)
    elif penalty_mode == "fused":
        value = adam.update(params, grad, penalty, n, with_penalty=True)
    elif penalty_mode == "unfused":
        value = ops.penalty_gradient(params, grad, penalty.l1, penalty.l2, penalized=n, with_penalty=True)
        adam.update(params, grad, NO_PENALTY, n)
    else:
        value = ops.penalty(params[:n], penalty.l1, penalty.l2)
        ops.penalty_gradient(params, grad, penalty.l1, penalty.l2, penalized=n)
        adam.update(params, grad, NO_PENALTY, n)
    if not math.isfinite(value):
        raise Diverged(f"the penalty became {value} at step {adam.step}")
    return loss, value, hits


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
        self.x_train, self.y_train = xp.asarray(dataset.x_train), xp.asarray(dataset.y_train)
        self.x_val, self.y_val = xp.asarray(dataset.x_test), xp.asarray(dataset.y_test)
        self.params = xp.asarray(model.init_params(config.seed))
        self.grad = xp.zeros_like(self.params)
        self.adam = Adam.zeros_like(self.params, lr=config.lr)
        self.epoch = 0
        self.history = []

    def to_host(self, a):
        return a.get() if self.xp is not np else a

    def state(self):
        return {"params": self.to_host(self.params), "m": self.to_host(self.adam.m), "v": self.to_host(self.adam.v),
                "step": np.int64(self.adam.step), "epoch": np.int64(self.epoch),
                "config": np.array(json.dumps(dataclasses.asdict(self.config))),
                "history": np.array(json.dumps(self.history))}

    def restore(self, state):
        xp = self.xp
        self.params[...] = xp.asarray(state["params"])
        self.adam.m[...] = xp.asarray(state["m"])
        self.adam.v[...] = xp.asarray(state["v"])
        self.adam.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(str(state["history"]))

    def train_epoch(self, progress=None):
        """One pass over the training set in a seeded random order. Returns the epoch's
        running means, as Keras reports them: data loss, loss with the penalty, accuracy."""
        cfg, xp = self.config, self.xp
        n = len(self.y_train)
        order = xp.asarray(np.random.default_rng([cfg.seed, self.epoch]).permutation(n))
        data_loss = total_loss = 0.0
        correct = 0
        steps = (n + cfg.batch_size - 1) // cfg.batch_size
        for i in range(steps):
            index = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            try:
                loss, penalty, hits = training_step(self.params, self.grad, self.adam, self.penalty, self.x_train,
                                                    self.y_train, index, cfg.seed, cfg.augment, cfg.penalty_mode)
            except Diverged as e:
                raise Diverged(f"{e} (epoch {self.epoch + 1}, batch {i + 1})") from None
            batch = len(index)
            data_loss += loss * batch
            total_loss += (loss + penalty) * batch
            correct += hits
            if progress:
                progress(i + 1, steps, total_loss / min(n, (i + 1) * cfg.batch_size),
                         correct / min(n, (i + 1) * cfg.batch_size))
        return data_loss / n, total_loss / n, correct / n

    def evaluate(self):
        """Mean data loss and accuracy on the validation set, no augmentation."""
        xp = self.xp
        n = len(self.y_val)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, EVAL_BATCH):
            index = xp.arange(start, min(n, start + EVAL_BATCH))
            x = ops.augment_batch(self.x_val, index, seed=0, step=0, max_shift=0, flip=False)
            loss, _, hits = ops.softmax_cross_entropy(model.forward(self.params, x)[0], self.y_val[index])
            loss_sum += loss * len(index)
            correct += hits
        return loss_sum / n, correct / n

    def run_epoch(self, progress=None):
        t0 = time.perf_counter()
        train_data_loss, train_loss, train_acc = self.train_epoch(progress)
        t1 = time.perf_counter()
        val_data_loss, val_acc = self.evaluate()
        t2 = time.perf_counter()
        self.epoch += 1
        penalty = self.penalty.value(self.params[:model.N_KERNEL])
        metrics = {
            "epoch": self.epoch, "train_loss": train_loss, "train_data_loss": train_data_loss, "train_acc": train_acc,
            # Keras adds the regularization losses to the validation loss too.
            "val_loss": val_data_loss + penalty, "val_data_loss": val_data_loss, "val_acc": val_acc,
            "penalty": penalty, "sparsity": model.sparsity(self.params),
            "epoch_time_s": t1 - t0, "eval_time_s": t2 - t1, "images_per_s": len(self.y_train) / (t1 - t0),
            "device": self.config.device, "step": self.adam.step,
        }
        self.history.append(metrics)
        return metrics


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


def summary_line(m, epochs):
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  penalty {m['penalty']:.4g}  "
            f"sparsity(1e-3) {m['sparsity']['total']['0.001']:.2%}  {m['epoch_time_s']:.1f}s "
            f"({m['images_per_s']:.0f} img/s)")


def train(config: Config, out, resume=False, log=print, progress=True):
    """Runs (or resumes) a training run writing into `out`; returns the history."""
    out = Path(out)
    checkpoint, metrics_path = out / "checkpoint.npz", out / "metrics.jsonl"
    if resume:
        if not checkpoint.exists():
            raise UsageError(f"--resume: no checkpoint at {checkpoint}")
        state = load_checkpoint(checkpoint)
        saved = Config(**json.loads(str(state["config"])))
        diff = config.same_run(saved)
        if diff:
            raise UsageError("--resume: the checkpoint was made with other settings: " +
                             ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items()))
    elif metrics_path.exists() or checkpoint.exists():
        raise UsageError(f"--out: {out} already holds a run; use --resume to continue it or choose another --out")

    try:
        dataset = datasets.load(config.data, dataset=config.dataset, train_size=config.train_size,
                                val_size=config.val_size, seed=0)
    except datasets.DataError as e:
        raise UsageError(str(e)) from None
    run = Run(config, dataset)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        run.restore(state)
        log(f"resuming {out} after epoch {run.epoch}")
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(
        {**dataclasses.asdict(config), "data_source": dataset.source, "params": model.N_PARAMS}, indent=2).encode()))
    # metrics.jsonl holds exactly the checkpoint's epochs: an interrupted epoch leaves no line.
    atomic_write(metrics_path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in run.history).encode()))
    log(f"pyregnet.train: {run.penalty.describe()}, {dataset.source}, device {config.device}, "
        f"{model.N_PARAMS:,} parameters, batch {config.batch_size}, lr {config.lr:g}, "
        f"augmentation {'on' if config.augment else 'off'}")
    while run.epoch < config.epochs:
        bar = _progress_bar(run.epoch + 1, config.epochs) if progress else None
        try:
            m = run.run_epoch(bar)
        except Diverged as e:
            raise Diverged(f"{e}; stopped. The last good checkpoint ({run.epoch} epochs) stays in {checkpoint}") from None
        with open(metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
        save_checkpoint(checkpoint, run.state())
        log(summary_line(m, config.epochs))
    from .plots import plot_curves
    plot_curves(run.history, out / "curves.png", title=f"{run.penalty.describe()}, seed {config.seed}")
    return run.history


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        config = config_from_args(args)
        out = args.out or f"runs/{config.reg}-seed{config.seed}"
        train(config, out, resume=args.resume)
    except UsageError as e:
        print(f"pyregnet.train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as e:
        print(f"pyregnet.train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("\npyregnet.train: interrupted; the last finished epoch is in the checkpoint (--resume continues)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
