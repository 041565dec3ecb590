"""What the weight penalty costs: per epoch of training, and in the update kernel alone.

1. Epochs: Engine.train_epoch on synthetic images for each optimizer, penalty (default λ) and
   update mode (optim.UPDATE_MODES), beside the optimizer's baseline (fused, no penalty) and an A/A
   copy of it (how far alike cases land apart), taking turns epoch by epoch.
2. The update alone, float32, every parameter penalized, at each --sizes: each optimizer's own
   launches in each mode, against the bytes the fused update must move over the measured copy
   bandwidth; beside PyTorch's Adam (fused and foreach, the peers), each first checked against
   pyregnet.reference (or skipped with the reason).
Targets: GPU: the fused Adam update moves >= 90% of the copy bandwidth at >= 16M parameters and
beats every peer; fused l1l2 adds <= 1% to Adam's epoch (within noise). CPU: the fused penalty adds
<= 1% to Adam's epoch (l1, l2, l1l2). Results: bench/results/penalty_cost_<device>[_quick].json.
"""

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from pyregnet import data as datasets, model, optim, reference  # noqa: E402
from pyregnet.extras import missing  # noqa: E402
from pyregnet.launch import run  # noqa: E402
from pyregnet.options import UsageError, count, positive_int  # noqa: E402
from pyregnet.regularizers import Penalty  # noqa: E402

PENALIZED = ("l1", "l2", "l1l2")
HYPER = {"adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7), "sgd": dict(lr=1e-2, momentum=0.9)}
BW_TARGET, BW_MIN_N, EPOCH_TARGET = 0.90, 16 * 2**20, 0.01
FULL = dict(epoch_images=50_000, epochs=5, warmup_epochs=1, repeats=20,
            sizes=(model.N_PARAMS, 2**20, 4 * 2**20, 16 * 2**20, 64 * 2**20, 10**8))
QUICK = dict(epoch_images=1024, epochs=3, warmup_epochs=1, repeats=5, sizes=(model.N_PARAMS, 2**20))
CHECK_N, CHECK_STEP, CHECK_LAMBDA = 1037, 3, 1e-2   # odd n; λ large enough that a wrong term shows
CHECK_ATOL, CHECK_RTOL = 1e-7, 1e-6                 # float32 against the float64 reference


# ---------------------------------------------------------------- implementations of the update

def pyregnet_build(optimizer, mode):
    """build(w, g, state, penalty, step0, into) -> update(): the optimizer's own launches."""
    def build(w, g, state, pen, step0, into):
        opt = optim.Adam(*state, **HYPER["adam"]) if optimizer == "adam" else optim.SGD(*state, **HYPER["sgd"])
        launches = opt.launches(w, g, pen, mode, penalized=w.size, step=step0 + 1, into=into)
        return lambda: run(launches)
    return build


def torch_build(impl):
    """torch.optim.Adam([w], fused=True or foreach=True) on tensors sharing the arrays' memory.
    PyTorch adds eps after the bias correction: eps / sqrt(1 - β2^t) makes the step the same."""
    def build(w, g, state, pen, step0, into):
        import torch
        as_t = torch.as_tensor   # shares the NumPy or CuPy array's memory
        p = as_t(w).requires_grad_(True)
        p.grad = as_t(g)
        h = HYPER["adam"]
        opt = torch.optim.Adam([p], lr=h["lr"], betas=(h["beta1"], h["beta2"]), weight_decay=2.0 * pen.l2,
                               eps=h["eps"] / math.sqrt(1.0 - h["beta2"] ** (step0 + 1)), **{impl: True})
        opt.state[p] = {"step": torch.tensor(float(step0), device=p.device if impl == "fused" else "cpu"),
                        "exp_avg": as_t(state[0]), "exp_avg_sq": as_t(state[1])}

        def update():
            if pen.l1:
                (p.abs().sum() * pen.l1).backward()   # accumulates into g, as autograd would
            opt.step()
        return update
    return build


def implementations(optimizers):
    """[(name, optimizer, mode, build)]: pyregnet's, then PyTorch's Adam."""
    ours = [(f"pyregnet-{o}-{m}", o, m, pyregnet_build(o, m)) for o in optimizers for m in optim.UPDATE_MODES]
    peers = [(f"torch-{impl}", "adam", "fused", torch_build(impl)) for impl in ("fused", "foreach")]
    return ours + (peers if "adam" in optimizers else [])


PEERS = [name for name, *_ in implementations(["adam"]) if not name.startswith("pyregnet")]


def arrays(xp, optimizer, n, seed=common.SEED):
    """w, g and the optimizer's state (m, v or velocity), float32: small weights with a few exact
    zeros (sign(0) = 0), gradients and moments at training's scale, v >= 0."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n, dtype=np.float32) * np.float32(0.05))
    w[::97] = 0
    g, m = (rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2) for _ in range(2))
    state = (m, np.abs(m) * np.float32(1e-2)) if optimizer == "adam" else (m,)
    return [xp.asarray(a) for a in (w, g, *state)]


def check(build, optimizer, mode, xp, ours):
    """One update from the same start as pyregnet.reference (float64) at step CHECK_STEP for each
    penalty: (ok, {kind: max |error| of w and the state}); pyregnet's summed penalty value must be
    within rtol of reference.penalty."""
    errors, ok = {}, True
    for kind in ("none",) + PENALIZED:
        pen = Penalty(kind, CHECK_LAMBDA if "l1" in kind else 0.0, CHECK_LAMBDA if kind in ("l2", "l1l2") else 0.0)
        host = arrays(np, optimizer, CHECK_N)
        ref = [a.astype(np.float64) for a in host]
        step = dict(step=CHECK_STEP) if optimizer == "adam" else {}
        getattr(reference, f"{optimizer}_update")(*ref, **step, **HYPER[optimizer], l1=pen.l1, l2=pen.l2,
                                                  proximal=mode == "proximal")
        dev, into = [xp.asarray(a).copy() for a in host], xp.zeros(1, dtype=np.float64)
        build(dev[0], dev[1], dev[2:], pen, CHECK_STEP - 1, into)()
        pairs = [(getattr(d, "get", lambda: d)().astype(np.float64), r) for i, (d, r) in enumerate(zip(dev, ref)) if i != 1]
        excess = max(float(np.max(np.abs(d - r) / (CHECK_ATOL + CHECK_RTOL * np.abs(r)))) for d, r in pairs)
        errors[kind] = max(float(np.max(np.abs(d - r))) for d, r in pairs)
        ok = ok and np.isfinite(excess) and excess <= 1.0
        if ours and kind != "none":
            want = reference.penalty(host[0], pen.l1, pen.l2)
            ok = ok and abs(float(into[0]) - want) <= CHECK_RTOL * want
    return bool(ok), errors


def prepare(device, optimizers, peers):
    """(runnable [(name, optimizer, mode, build)], report {name: {available, skipped, check}})."""
    runnable, report = [], {}
    for name, optimizer, mode, build in implementations(optimizers):
        ours, entry = name.startswith("pyregnet"), {"skipped": None, "max_abs_err": None}
        if not ours and name not in peers:
            entry["skipped"] = "not selected (--peers)"
        else:
            try:
                ok, entry["max_abs_err"] = check(build, optimizer, mode, common.array_module(device), ours)
                if not ok:
                    entry["skipped"] = (f"computes something else: errors vs pyregnet.reference beyond atol "
                                        f"{CHECK_ATOL:g} + rtol {CHECK_RTOL:g}·|ref|: {entry['max_abs_err']}")
            except ImportError:   # the peers' only optional module
                entry["skipped"] = missing("torch")
            except Exception as e:  # noqa: BLE001 -- e.g. fused Adam unsupported on this device
                entry["skipped"] = f"raised here: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        entry["available"] = entry["skipped"] is None
        report[name] = entry
        if entry["available"]:
            runnable.append((name, optimizer, mode, build))
        print(f"  {name:24} " + ("checked against pyregnet.reference: ok" if entry["available"] else
                                 f"skipped: {entry['skipped']}"), flush=True)
    return runnable, report


def sweep(device, impls, sizes, repeats, roof):
    """Each implementation's update at each size and penalty: time beside the fused bytes."""
    xp, rows = common.array_module(device), []
    for n in sizes:
        print(f"  n = {n:,} ...", flush=True)
        for optimizer in sorted({i[1] for i in impls}):
            data = arrays(xp, optimizer, n)
            must_move = (7 if optimizer == "adam" else 5) * 4 * n
            for (name, opt, mode, build), reg in itertools.product(impls, ("none",) + PENALIZED):
                if opt != optimizer or (reg == "none" and mode != "fused"):   # without a penalty every mode is fused
                    continue
                update = build(*data[:2], data[2:], Penalty.with_defaults(reg), 0, xp.zeros(1, dtype=np.float64))
                samples = common.timeit(update, device, 1, repeats)
                rows.append(common.roofline_row(name, samples, 0, must_move, roof, reg=reg, n=n))
        data = None
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()
    return rows


# ---------------------------------------------------------------- epochs

def epoch_cases(optimizers):
    """(optimizer, mode, reg): the baseline (fused, none), its A/A copy ("aa"), every mode x penalty."""
    return [case for o in optimizers for case in [(o, "fused", "none"), (o, "aa", "none")] +
            [(o, mode, reg) for mode in optim.UPDATE_MODES for reg in PENALIZED]]


def run_epochs(device, optimizers, images, batch, rounds, warmup):
    """{case: [seconds per epoch]}: one engine per case on one synthetic data set."""
    xp = common.array_module(device)
    ds = datasets.synthetic(n_train=images, n_test=1, seed=common.SEED)
    data = (xp.asarray(ds.x_train), xp.asarray(ds.y_train))
    cases = epoch_cases(optimizers)
    engines = {c: common.pyregnet_engine(device, data, c[2], batch, c[0], "fused" if c[1] == "aa" else c[1])
               for c in cases}
    epochs = dict.fromkeys(cases, 0)

    def epoch(case):   # each epoch its own order, as in training
        epochs[case] += 1
        order = np.random.default_rng([common.SEED, epochs[case]]).permutation(images)
        return common.timeit(lambda: engines[case].train_epoch(order), device, 0, 1)[0]

    return common.take_turns(cases, rounds, epoch, warmup, log=True)


def overheads(samples, optimizers):
    """{optimizer: {"noise", "aa", "cases": {mode: {reg: {"overhead", "paired"}}}}}: overhead =
    median / the baseline's median - 1, paired = statistics of case / baseline - 1 round by round,
    noise = (p90 - p10) / median of the baseline's epochs, aa = the A/A copy's overhead."""
    out = {}
    for o in optimizers:
        base = samples[(o, "fused", "none")]
        b = common.stats(base)
        out[o] = {"baseline_s": b, "noise": (b["p90"] - b["p10"]) / b["median"],
                  "aa": common.stats(samples[(o, "aa", "none")])["median"] / b["median"] - 1, "cases": {}}
        for mode in optim.UPDATE_MODES:
            out[o]["cases"][mode] = {reg: {
                "overhead": common.stats(samples[(o, mode, reg)])["median"] / b["median"] - 1,
                "paired": common.stats([t / t0 - 1 for t, t0 in zip(samples[(o, mode, reg)], base)])}
                for reg in PENALIZED}
    return out


def targets_of(device, rows, over):
    fused = [r for r in rows if r["op"] == "pyregnet-adam-fused"]
    big = [r for r in fused if r["n"] >= BW_MIN_N]
    worst = min(big, key=lambda r: r["fraction_of_copy_bw"]) if big else None
    targets = [common.target("update_bandwidth", f"fused Adam update >= {BW_TARGET:.0%} of the copy bandwidth at "
                             f">= 16M parameters", worst and worst["fraction_of_copy_bw"], BW_TARGET, ">=", device,
                             "cuda", f"lowest at n={worst['n']:,} ({worst['reg']})" if worst else "no size >= 16M")]
    mine = {(r["n"], r["reg"]): r["ms"] for r in fused}
    ratios = [(mine[(r["n"], r["reg"])] / r["ms"], r) for r in rows if r["op"] in PEERS and (r["n"], r["reg"]) in mine]
    slowest = max(ratios, key=lambda x: x[0]) if ratios else None
    targets.append(common.target("vs_peers", "fused Adam update faster than every peer (at every size and penalty)",
                                 slowest and slowest[0], 1.0, "<", device, "cuda",
                                 f"pyregnet / {slowest[1]['op']} ({slowest[1]['reg']}, n={slowest[1]['n']:,}), the "
                                 f"worst case" if slowest else "no peer ran"))
    adam = (over or {}).get("adam")
    for reg in PENALIZED:
        value = adam["cases"]["fused"][reg]["overhead"] if adam else None
        targets.append(common.target(f"epoch_{reg}", f"fused {reg} adds <= {EPOCH_TARGET:.0%} to Adam's epoch time",
                                     value, EPOCH_TARGET, "<=", device, "cuda" if reg == "l1l2" and device == "cuda"
                                     else "cpu", f"noise (p10-p90) {adam['noise']:.2%}" if adam else "epochs not run",
                                     noise=adam and adam["noise"]))
    return targets


# ---------------------------------------------------------------- command line

def _size(text):
    """A parameter count: 315722, 1e8, or with a binary suffix: 16M (2^20), 4K (2^10)."""
    t = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        value = 0
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected whole parameter counts (315722, 1e8, 16M) but got {text!r}")
    return int(value)


def parser():
    p = common.parser("penalty_cost", __doc__)
    p.add_argument("--optimizers", type=common.names(optim.OPTIMIZERS), default=list(optim.OPTIMIZERS),
                   help="adam,sgd (default both)")
    p.add_argument("--epoch-images", type=positive_int, help="images per epoch (default 50,000, --quick 1,024)")
    p.add_argument("--epochs", type=positive_int, help="timed epochs per case (default 5, --quick 3)")
    p.add_argument("--warmup-epochs", type=count, help="untimed epochs per case first (default 1)")
    p.add_argument("--sizes", type=lambda t: [_size(s) for s in t.split(",")],
                   help="parameter counts of the update sweep (K/M = 2^10/2^20; default 315722,1M,4M,16M,64M,1e8)")
    p.add_argument("--repeats", type=positive_int, help="timed updates per case (default 20, --quick 5)")
    p.add_argument("--peers", type=lambda t: common.names(PEERS)(t) if t.strip() else [], default=PEERS,
                   help=f"the peers to run (default all: {','.join(PEERS)}; '' for none)")
    p.add_argument("--no-epochs", dest="epochs_on", action="store_false", help="skip the epochs")
    p.add_argument("--no-update", dest="update_on", action="store_false", help="skip the update sweep")
    return p


def report(over, rows, copy_bw):
    for o, r in (over or {}).items():
        print(f"\n{o}: epoch overhead vs fused/none ({common.fmt(r['baseline_s'], 1)} s; noise {r['noise']:.2%}, "
              f"A/A {r['aa']:+.2%}): median, paired median [p10-p90]")
        for mode, regs in r["cases"].items():
            print(f"  {mode:9} " + "  ".join(f"{reg} {c['overhead']:+.2%} {common.fmt(c['paired'], 100, 2)}%"
                                             for reg, c in regs.items()))
    if rows:
        print(f"\nupdate: median ms [p10-p90], GB/s of the bytes the fused update must move, % of the copy "
              f"bandwidth ({copy_bw / 1e9:.1f} GB/s)")
        for r in rows:
            print(f"{r['n']:>11,} {r['op']:26} {r['reg']:5} {common.fmt(r['stats_s']):26} {r['gb_per_s']:7.1f} "
                  f"{100 * r['fraction_of_copy_bw']:5.1f}%")


def main(argv=None):
    try:
        args, device = common.parse(parser(), argv, FULL, QUICK)
        images, rounds, warmup = args.epoch_images, args.epochs, args.warmup_epochs
        if args.epochs_on and images < args.batch_size:
            raise UsageError(f"--epoch-images: {images} is less than one batch ({args.batch_size})")
    except UsageError as e:
        return common.usage_exit("penalty_cost", e)
    meta, notes = common.start("penalty_cost", device, args.quick)
    samples = over = None
    if args.epochs_on:   # first: nothing else has started thread pools yet
        print(f"epochs: {len(epoch_cases(args.optimizers))} cases, {images} images, {warmup} warm-up + {rounds} "
              f"timed epochs each, round-robin ...", flush=True)
        samples = run_epochs(device, args.optimizers, images, args.batch_size, rounds, warmup)
        over = overheads(samples, args.optimizers)
    roof = common.roofline(device, args.quick)
    rows, impls = [], {}
    if args.update_on:
        print("implementations of the update, checked against pyregnet.reference:", flush=True)
        runnable, impls = prepare(device, args.optimizers, args.peers)
        rows = sweep(device, runnable, args.sizes, args.repeats, roof)
    if device == "cpu":
        notes.append("the CPU copy bandwidth is one NumPy thread's: multithreaded updates can exceed 100% of it")
    report(over, rows, roof["bytes_per_s"])
    return common.finish("penalty_cost", meta, notes, targets_of(device, rows, over), {
        "config": {"device": device, "quick": args.quick, "optimizers": args.optimizers, "batch_size": args.batch_size,
                   "epoch_images": images if args.epochs_on else None, "epochs": rounds, "warmup_epochs": warmup,
                   "sizes": list(args.sizes), "repeats": args.repeats, "hyper": HYPER},
        "roofline": roof, "implementations": impls, "update": rows,
        "epochs": None if samples is None else {"cases": [{"optimizer": o, "mode": m, "reg": r, "samples_s": t}
                                                          for (o, m, r), t in samples.items()], "overheads": over}},
        args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
