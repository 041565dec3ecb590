"""python -m pyregnet.prune RUN_DIR: what a run's small weights are worth once they are removed.

Loads the run's final checkpoint, sets the smallest-|w| fraction of the kernel weights (conv and
dense, not biases) to exactly zero at each level, and evaluates the test set with the same
evaluation program the trainer uses. Global magnitude pruning ranks all kernel weights together;
--per-layer prunes each layer to the same fraction. Writes RUN_DIR/prune.json and
RUN_DIR/prune.png. Weights that were already exact zeros count towards the level (the reported
sparsity is the fraction of kernel weights that are exactly zero after pruning). The kernels are
those of the run's --model; a network with batch normalization (resnet20) is evaluated with the
running statistics of its checkpoint, the unpruned network's (not recalibrated after pruning).

--finetune-epochs N then trains each globally pruned network N more epochs with the run's own
settings and optimizer state, the pruned weights held at exactly zero after every step (the data
gradient would revive them), and evaluates the test set again: the "finetuned" curve, level 0
being the unpruned run trained the same N epochs.
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from . import data as datasets
from . import model
from .files import atomic_write
from .launch import Launch
from .options import DEVICES, Parser, UsageError, count
from .tables import WITHIN_PP, largest_within
from .train import EXIT_USAGE, Config, Diverged, Run, load_checkpoint, resolve_device

LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def prune(params, fraction, per_layer=False, kernels=model.KERNEL_SLOTS):
    """A copy of the flat parameters with round(fraction * n) of the smallest-|w| kernel weights set
    to 0 (n: all kernel weights, or each layer's with per_layer). `kernels`: the network's kernel
    slots (KERNEL_SLOTS), which lead the flat buffer. Ties go to the lower index."""
    out = params.copy()
    n_kernel = sum(s.size for s in kernels)
    groups = kernels if per_layer else [model.Slot("kernels", (n_kernel,), 0)]
    for slot in groups:
        w = out[slot.offset:slot.offset + slot.size]
        k = int(round(fraction * slot.size))
        if k:
            w[np.argsort(np.abs(w), kind="stable")[:k]] = 0
    return out


def curve(run, params, levels, per_layer):
    """The test set per level, the run's parameters pruned from `params` (its network's state, BN's
    running statistics, left as the run has them: the unpruned network's)."""
    points, net = [], run.net
    for level in levels:
        pruned = prune(params, level, per_layer, net.KERNEL_SLOTS)
        run.params[...] = run.xp.asarray(pruned)
        loss, acc = run.evaluate("test")
        sparsity = float(np.count_nonzero(pruned[:net.N_KERNEL] == 0)) / net.N_KERNEL
        points.append({"level": level, "sparsity": sparsity, "test_acc": float(acc), "test_loss": float(loss)})
    return points


class KeepMask:
    """An optimizer whose step ends by setting the pruned kernel weights back to exactly 0, as one
    more launch inside the (captured) step; everything else is the wrapped optimizer's."""

    def __init__(self, optimizer, pruned):
        self.__dict__.update(optimizer=optimizer, pruned=pruned)  # pruned: bool (the network's N_KERNEL,), on the device

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):  # the engine advances optimizer.step
        setattr(self.optimizer, name, value)

    def launches(self, params, grad, penalty, mode, **kwargs):
        kernels = params[:self.pruned.size]
        xp = model.array_module(params)
        return [*self.optimizer.launches(params, grad, penalty, mode, **kwargs),
                Launch("mask", partial(xp.copyto, kernels, 0, where=self.pruned),
                       bytes=2 * kernels.nbytes + self.pruned.nbytes)]


def finetuned(config, dataset, state, params, levels, epochs):
    """The finetuned curve: per level, the globally pruned run trained `epochs` more epochs from its
    checkpoint `state` with the mask kept, then the test set; the sparsity counted afterwards."""
    points = []
    for level in levels:
        run = Run(config, dataset)
        run.restore(state)
        net = run.net
        pruned = prune(params, level, kernels=net.KERNEL_SLOTS)
        run.params[...] = run.xp.asarray(pruned)
        run.optimizer = KeepMask(run.optimizer, run.xp.asarray(pruned[:net.N_KERNEL] == 0))
        point = {"level": level, "epochs": epochs}
        try:
            for _ in range(epochs):
                run.train_epoch()
                run.epoch += 1
            loss, acc = run.evaluate("test")
        except Diverged as e:
            loss, acc, point["diverged"] = float("nan"), float("nan"), str(e)
        kernels = np.asarray(run.to_host(run.params[:net.N_KERNEL]))
        point.update(sparsity=float(np.count_nonzero(kernels == 0)) / net.N_KERNEL, test_acc=float(acc),
                     test_loss=float(loss))
        points.append(point)
    return points


def parser():
    p = Parser(prog="python -m pyregnet.prune", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of python -m pyregnet.train (its checkpoint.npz)")
    p.add_argument("--levels", type=_levels, default=LEVELS, metavar="F,F,...",
                   help="fractions of the kernel weights to zero, each in [0, 1); 0 is always evaluated first")
    p.add_argument("--per-layer", action="store_true", help="also prune each layer to the same fraction")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="the run's data, when its recorded --data path does not exist on this machine")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--finetune-epochs", type=count, default=0, metavar="N",
                   help="also train each globally pruned network N epochs with the mask kept, then evaluate")
    return p


def _levels(text):
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()} | {0.0})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions separated by commas but got {text!r}") from None
    if not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1) but got {text!r}")
    return tuple(values)


def load(args):
    """(the checkpoint's state, the run's Config on this machine, its data set) of args.run_dir."""
    run_dir = Path(args.run_dir)
    checkpoint = run_dir / "checkpoint.npz"
    if not checkpoint.is_file():
        raise UsageError(f"RUN_DIR: {checkpoint} does not exist; expected a run directory of python -m "
                         f"pyregnet.train that finished at least one epoch")
    state = load_checkpoint(checkpoint)
    config = Config(**json.loads(str(state["config"])))
    data = args.data or config.data
    if data is not None and not Path(data).exists():
        raise UsageError(f"--data: the run's data {data} does not exist here; pass --data PATH")
    config.data, config.device = data, resolve_device(args.device)
    try:
        dataset = datasets.load(config.data, dataset=config.dataset, train_size=config.train_size,
                                val_size=config.val_size, seed=0)
    except datasets.DataError as e:
        raise UsageError(str(e)) from None
    return state, config, dataset


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        run_dir = Path(args.run_dir)
        state, config, dataset = load(args)
        run = Run(config, dataset)
        run.restore(state)  # the parameters, and the network's state that evaluation reads
        params = np.asarray(state["params"])
        result = {"run": run_dir.name, "epoch": int(state["epoch"]), "within_pp": WITHIN_PP,
                  "global": curve(run, params, args.levels, per_layer=False)}
        result["largest_within_1pp"] = {"global": largest_within(result["global"])}
        if args.per_layer:
            result["per_layer"] = curve(run, params, args.levels, per_layer=True)
            result["largest_within_1pp"]["per_layer"] = largest_within(result["per_layer"])
        if args.finetune_epochs:
            result["finetuned"] = finetuned(config, dataset, state, params, args.levels, args.finetune_epochs)
            result["largest_within_1pp"]["finetuned"] = largest_within(result["finetuned"])
    except UsageError as e:
        print(f"pyregnet.prune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    atomic_write(run_dir / "prune.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    from .plots import plot_prune
    plot_prune(result, run_dir / "prune.png", title=f"{run_dir.name}: magnitude pruning, test set")
    for kind in ("global", "per_layer", "finetuned"):
        for point in result.get(kind, []):
            print(f"{kind:9} level {point['level']:.2f}  sparsity {point['sparsity']:.4f}  "
                  f"test_acc {point['test_acc']:.4f}  test_loss {point['test_loss']:.4f}")
    print(f"largest sparsity within {WITHIN_PP:g} pp of the unpruned accuracy: {result['largest_within_1pp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
