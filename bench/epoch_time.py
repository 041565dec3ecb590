"""Epoch time, side by side in one run: pyregnet (CUDA graph and eager) against PyTorch (eager and
torch.compile).

One epoch: the training images (synthetic, or CIFAR-10's with --data) in batches, augmented, with
the --reg penalty, then the evaluation. pyregnet: train.Run's train_epoch() + evaluate(), as the
trainer runs them; PyTorch: bench/torch_net.py's baseline, compiled in the warm-up, flushing
subnormals as this pyregnet build does. The contenders take turns epoch by epoch, timed with
perf_counter between device synchronizations, and end with a census of their kernel weights.
Targets (the H200's): the pyregnet-graph epoch, scaled to 50,000 + 10,000 images, <= 0.2 s, >= 3x
faster than torch-eager, faster than torch-compile. A contender that fails is reported; the others run.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch_net  # noqa: E402
from pyregnet import build_info  # noqa: E402
from pyregnet import data as datasets  # noqa: E402
from pyregnet.options import UsageError, count, positive_int  # noqa: E402
from pyregnet.regularizers import KINDS, Penalty  # noqa: E402
from pyregnet.train import Config, Run  # noqa: E402

TRAIN_IMAGES, VAL_IMAGES = 50_000, 10_000   # CIFAR-10's training set, and its test set evaluated
CONTENDERS = ("pyregnet-graph", "pyregnet-eager", "torch-eager", "torch-compile")
EPOCH_TARGET_S, EAGER_TARGET, COMPILE_TARGET = 0.2, 3.0, 1.0
FULL, QUICK = dict(epochs=5, warmup=1), dict(epochs=1, warmup=0)


def parser():
    p = common.parser("epoch_time", __doc__, out="--out")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 (any source the trainer's --data takes) instead of "
                   "synthetic images: weights evolve as in training, so subnormals can appear")
    p.add_argument("--train-size", type=positive_int, help=f"training images (default {TRAIN_IMAGES:,})")
    p.add_argument("--val-size", type=positive_int, help=f"evaluated images (default {VAL_IMAGES:,})")
    p.add_argument("--reg", choices=KINDS, default="l1l2", help="every contender's penalty, default λ")
    p.add_argument("--epochs", type=positive_int, help="timed epochs per contender (default 5, --quick 1)")
    p.add_argument("--warmup", type=count, help="untimed epochs first (default 1, --quick 0)")
    p.add_argument("--contenders", type=common.names(CONTENDERS), default=list(CONTENDERS), help=",".join(CONTENDERS))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="run torch-compile (default: on the GPU)")
    p.add_argument("--compile-mode", default="max-autotune")
    p.add_argument("--torch-flush-denormal", action=argparse.BooleanOptionalAction,
                   help="PyTorch flushes float32 subnormals to zero (default: as this pyregnet build does, "
                   "build_info()['flush_denormals'])")
    return p


class Skip(Exception):
    """A contender that cannot run here; the message says why."""


class Pyregnet:
    """The trainer's epoch: Run.train_epoch() + Run.evaluate()."""

    def __init__(self, device, dataset, reg, batch, graph):
        pen = Penalty.with_defaults(reg)
        config = Config(reg=pen.kind, l1=pen.l1, l2=pen.l2, batch_size=batch, seed=common.SEED, device=device,
                        graph=graph)
        self.run, self.setup = Run(config, dataset), {"config": dataclasses.asdict(config)}

    def train_epoch(self):
        data_loss, loss, acc = self.run.train_epoch()
        self.run.epoch += 1   # the next epoch gets its own order, as in training
        return {"train_loss": loss, "train_data_loss": data_loss, "train_acc": acc}

    def evaluate(self):
        loss, acc = self.run.evaluate()
        return {"val_data_loss": loss, "val_acc": acc}

    def kernel_weights(self):
        return self.run.to_host(self.run.params[:self.run.net.N_KERNEL])


def build(name, args, device, dataset, torch, why_no_torch):
    if name == "pyregnet-graph" and device != "cuda":
        raise Skip("CUDA graphs need the GPU (on the CPU, pyregnet-eager is the pyregnet contender)")
    if name.startswith("pyregnet"):
        return Pyregnet(device, dataset, args.reg, args.batch_size, graph=name.endswith("graph"))
    if torch is None:
        raise Skip(why_no_torch)
    if name == "torch-compile" and not args.compile:
        raise Skip("torch.compile is off (the default on the CPU, where compiling is slow; --compile runs it)")
    net = torch_net.TorchNet(torch, device, args.reg, compile_mode=args.compile_mode if name == "torch-compile"
                             else None)
    net.data(dataset, args.batch_size)
    return net


def timed_epoch(obj, device):
    """(train seconds, evaluation seconds, metrics) of one epoch."""
    common.sync(device)
    t0 = time.perf_counter()
    m = obj.train_epoch()
    common.sync(device)
    t1 = time.perf_counter()
    m.update(obj.evaluate())
    common.sync(device)
    return t1 - t0, time.perf_counter() - t1, m


def run_epochs(args, device, dataset, torch, why_no_torch):
    """{contender: record}: each built and warmed up (or skipped, or failed), then timed in turns."""
    records, live = {}, {}
    for name in CONTENDERS:
        rec = records[name] = {"ran": False, "skipped": None, "error": None, "warmup_s": [],
                               "samples": {"train_s": [], "eval_s": []}}
        try:
            if name not in args.contenders:
                raise Skip("not selected (--contenders)")
            print(f"setting up and warming up {name} ...", file=sys.stderr, flush=True)
            obj = build(name, args, device, dataset, torch, why_no_torch)
            rec["setup"] = obj.setup
            for _ in range(max(args.warmup, 1 if name in ("pyregnet-graph", "torch-compile") else 0)):
                t, e, rec["metrics_last_epoch"] = timed_epoch(obj, device)   # captures or compiles first
                rec["warmup_s"].append(t + e)
            live[name] = obj
        except Skip as s:
            rec["skipped"] = str(s)
        except Exception as e:  # noqa: BLE001 -- one contender's failure must not stop the others
            rec["error"] = f"setup: {type(e).__name__}: {e}"[:2000]

    def turn(name):   # one that fails sits out the other turns
        rec, done = records[name], records[name]["samples"]
        if rec["error"] is None:
            try:
                t, e, rec["metrics_last_epoch"] = timed_epoch(live[name], device)
            except Exception as ex:  # noqa: BLE001
                rec["error"] = f"timed epoch {len(done['train_s']) + 1}: {type(ex).__name__}: {ex}"[:2000]
                return
            done["train_s"].append(t)
            done["eval_s"].append(e)
            print(f"  epoch {len(done['train_s'])}/{args.epochs} {name}: train {t:.3f} s, eval {e:.3f} s",
                  file=sys.stderr, flush=True)

    common.take_turns(list(live), args.epochs, turn)
    for name, obj in live.items():
        if records[name]["error"] is None:
            records[name].update(ran=True, **summary(records[name], len(dataset.y_train), len(dataset.y_test)))
            records[name]["kernel_weights_at_end"] = common.census(obj.kernel_weights())
    return records


def summary(rec, n_train, n_val):
    """Statistics of a contender's timed epochs, its epoch scaled to 50,000 + 10,000 images (both
    parts linear in the number of batches) and what its first warm-up epoch cost beyond a timed one."""
    train, evals = rec["samples"]["train_s"], rec["samples"]["eval_s"]
    s = {"train_s": common.stats(train), "eval_s": common.stats(evals),
         "total_s": common.stats([a + b for a, b in zip(train, evals)])}
    med = {k: v["median"] for k, v in s.items()}
    return {"stats": s, "median_s": med, "images_per_s": {"train": n_train / med["train_s"],
                                                          "total": (n_train + n_val) / med["total_s"]},
            "scaled_total_s": med["train_s"] * TRAIN_IMAGES / n_train + med["eval_s"] * VAL_IMAGES / n_val,
            "first_epoch_overhead_s": rec["warmup_s"][0] - med["total_s"] if rec["warmup_s"] else None}


def epoch_targets(records, device):
    """(headline, ratios, targets): the pyregnet contender the ratios are taken against
    (pyregnet-graph if it ran, else eager), the others' median epoch / its, and the targets."""
    mine = next((n for n in ("pyregnet-graph", "pyregnet-eager") if records[n]["ran"]), None)
    ran = {n: r["median_s"]["total_s"] for n, r in records.items() if r["ran"]}
    ratios = {n: t / ran[mine] for n, t in ran.items() if n != mine} if mine else {}
    note = "" if mine == "pyregnet-graph" else f" (measured on {mine}: pyregnet-graph did not run)" if mine else ""
    targets = [common.target("epoch_time", f"pyregnet-graph epoch (train {TRAIN_IMAGES:,} + eval {VAL_IMAGES:,}) <= "
                             f"{EPOCH_TARGET_S:g} s", records[mine]["scaled_total_s"] if mine else None,
                             EPOCH_TARGET_S, "<=", device, "cuda", f"scaled to the full sizes{note}")]
    for key, other, threshold, op in (("vs_torch_eager", "torch-eager", EAGER_TARGET, ">="),
                                      ("vs_torch_compile", "torch-compile", COMPILE_TARGET, ">")):
        what = f">= {threshold:g}x faster than {other}" if op == ">=" else f"faster than {other}"
        detail = f"{other}'s epoch / {mine}'s{note}" if other in ratios else f"{other} did not run"
        targets.append(common.target(key, f"pyregnet-graph {what}", ratios.get(other), threshold, op, device, "cuda",
                                     detail))
    return mine, ratios, targets


def report(records, mine, ratios, n_train, n_val):
    print(f"\n{'contender':15} {'total s median [p10-p90]':26} {'train s':>8} {'eval s':>8} {'scaled s*':>9} "
          f"{'vs ' + str(mine):>20}")
    for name, r in records.items():
        if not r["ran"]:
            print(f"{name:15} {'skipped: ' + r['skipped'] if r['skipped'] else 'FAILED: ' + str(r['error'])}")
            continue
        ratio = ratios.get(name, 1.0)
        print(f"{name:15} {common.fmt(r['stats']['total_s'], 1):26} {r['median_s']['train_s']:8.3f} "
              f"{r['median_s']['eval_s']:8.3f} {r['scaled_total_s']:9.3f} {ratio:19.2f}x")
    print(f"* train x {TRAIN_IMAGES:,}/{n_train:,} + eval x {VAL_IMAGES:,}/{n_val:,}; the ratio: the contender's "
          f"median epoch / {mine}'s (> 1: pyregnet is faster)")


def main(argv=None):
    try:
        args, device = common.parse(parser(), argv, FULL, QUICK)
        args.compile = device == "cuda" if args.compile is None else args.compile
        if args.data:
            dataset = datasets.load(args.data, train_size=args.train_size, val_size=args.val_size, seed=common.SEED)
        else:
            dataset = datasets.synthetic(n_train=args.train_size or TRAIN_IMAGES, n_test=args.val_size or VAL_IMAGES,
                                         seed=common.SEED)
        if len(dataset.y_train) < args.batch_size:
            raise UsageError(f"--train-size: {len(dataset.y_train)} is less than one batch ({args.batch_size})")
    except UsageError as e:
        return common.usage_exit("epoch_time", e)
    except datasets.DataError as e:
        return common.usage_exit("epoch_time", f"--data: {e}")
    meta, notes = common.start("epoch_time", device, args.quick)
    torch, why_no_torch = torch_net.load(device)
    flush = build_info()["flush_denormals"] if args.torch_flush_denormal is None else args.torch_flush_denormal
    if torch is not None and not torch.set_flush_denormal(flush) and flush:
        notes.append("torch.set_flush_denormal(True) is not supported on this CPU: PyTorch keeps IEEE subnormals")
    records = run_epochs(args, device, dataset, torch, why_no_torch)
    mine, ratios, targets = epoch_targets(records, device)
    n_train, n_val = len(dataset.y_train), len(dataset.y_test)
    report(records, mine, ratios, n_train, n_val)
    pen = Penalty.with_defaults(args.reg)
    return common.finish("epoch_time", meta, notes, targets, {
        "config": {"device": device, "batch_size": args.batch_size, "epochs": args.epochs, "warmup": args.warmup,
                   "reg": pen.kind, "quick": args.quick, "contenders": args.contenders, "compile": args.compile,
                   "compile_mode": args.compile_mode, "timer": "time.perf_counter between device synchronizations",
                   "data": dataset.source, "pyregnet_flush_denormals": build_info()["flush_denormals"],
                   "torch_flush_denormal": flush},
        "torch": {"available": torch is not None, "skipped": why_no_torch,
                  "version": torch.__version__ if torch is not None else None},
        "epoch": {"train_images": n_train, "val_images": n_val, "batch": args.batch_size,
                  "steps_per_epoch": -(-n_train // args.batch_size), "reg": pen.kind, "penalty": pen.describe(),
                  "lambda": {"l1": pen.l1, "l2": pen.l2}, "headline": mine, "ratios": ratios, "contenders": records}},
        args.out, args.check)


if __name__ == "__main__":
    sys.exit(main())
