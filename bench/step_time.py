"""Time per training step, pyregnet against PyTorch on the same network and device, and each launch
of pyregnet's step against its roofline.

A pyregnet sample is Engine.train_epoch over --steps synthetic batches, the step as the trainer
builds it (on the GPU: CUDA graph replays); PyTorch (bench/torch_net.py: the same network and
weights) steps on one batch on the device, its best case. Both with reg none and l1l2, taking turns,
after a first-batch loss check that they are the same network. The per-op table times each launch
of the engine's step (on the CPU inside the running step, on the GPU alone as a replayed CUDA graph)
beside its roofline. Targets (CPU): pyregnet's step <= 0.85x PyTorch's (cnn), <= 1.2x (resnet20).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch_net  # noqa: E402
from pyregnet import data as datasets  # noqa: E402
from pyregnet import ops  # noqa: E402
from pyregnet.engine import MAX_SHIFT, MODELS  # noqa: E402
from pyregnet.launch import run  # noqa: E402
from pyregnet.options import UsageError, count, positive_int  # noqa: E402

REGS = ("none", "l1l2")     # none is the main number
# the CPU backend's goals: a step at most this many times PyTorch CPU's (docs/results.md, CPU speed)
STEP_TARGET = {"cnn": 0.85, "resnet20": 1.2}
FULL = dict(steps=20, repeats=7, warmup=5, op_repeats=15)
QUICK = dict(steps=3, repeats=3, warmup=1, op_repeats=3)


def parser():
    p = common.parser("step_time", __doc__)
    p.add_argument("--model", choices=MODELS, default="cnn", help="the network (default cnn, the paper's)")
    p.add_argument("--steps", type=positive_int, help="steps per timed sample (default 20, --quick 3)")
    p.add_argument("--repeats", type=positive_int, help="timed samples per case (default 7, --quick 3)")
    p.add_argument("--warmup", type=count, help="untimed steps per case first (default 5, --quick 1)")
    p.add_argument("--weights", metavar="CHECKPOINT", help="start both from this run's checkpoint.npz (its params): "
                   "an L2 run's subnormal weights show what IEEE subnormals cost each launch")
    p.add_argument("--no-ops", dest="ops", action="store_false", help="skip the per-op table")
    return p


def trained_weights(path, net):
    """The flat parameters of a finished run's checkpoint.npz for --weights, `net`'s size or UsageError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            params = z["params"]
    except Exception as e:  # noqa: BLE001 -- one line, whatever is wrong with the file
        raise UsageError(f"--weights: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if params.shape != (MODELS[net].N_PARAMS,):
        raise UsageError(f"--weights: {path} holds {params.size} parameters but --model {net} has "
                         f"{MODELS[net].N_PARAMS}")
    return params


def first_loss_check(eng, net, x, labels, tx, ty):
    """Both losses of the first batch (x, labels; PyTorch's copy tx, ty) at the same weights in
    training mode (BN normalizes with the batch's statistics): the same network or not."""
    act = eng.net.Activations(eng.xp, len(labels), x.dtype, backward=False)
    act.input = x
    run(eng.net.forward_launches(eng.params, eng.state.copy(), act, training=True))   # the engine's state stays
    mine = float(ops.softmax_cross_entropy(act.logits, labels)[0])
    theirs = float(net.loss(tx, ty)[0].detach())
    return {"what": "first-batch loss, same weights", "pyregnet": mine, "torch": theirs,
            "abs_diff": abs(mine - theirs), "ok": abs(mine - theirs) < 1e-4}


def measure(args, device, notes):
    """(samples, (op rows, seconds of the steps the table ran), check, torch info, roofline)."""
    xp, batch, steps = common.array_module(device), args.batch_size, args.steps
    dataset = datasets.synthetic(n_train=steps * batch, n_test=1, seed=common.SEED)
    images, labels = xp.asarray(dataset.x_train), xp.asarray(dataset.y_train)
    order = np.random.default_rng(common.SEED).permutation(len(labels))
    torch, skipped = torch_net.load(device)
    info, check, cases = {"available": torch is not None, "skipped": skipped}, None, {}
    engines = {reg: common.pyregnet_engine(device, (images, labels), reg, batch, net=args.model, params=args.params)
               for reg in REGS}
    x = ops.augment_batch(images, xp.asarray(order[:batch]), seed=common.SEED, step=0, max_shift=MAX_SHIFT)
    y = labels[xp.asarray(order[:batch])]
    if torch is not None:   # PyTorch's copy of the batch
        tx, ty = torch.as_tensor(x, device=device).clone(), torch.as_tensor(y, device=device).long()
    for reg, eng in engines.items():
        cases[("pyregnet", reg)] = lambda e=eng: e.train_epoch(order)
        if torch is not None:
            net = torch_net.TorchNet(torch, device, reg, net=args.model, params=args.params)
            check = check or first_loss_check(eng, net, x, y, tx, ty)
            cases[("torch", reg)] = lambda n=net: [n.step(tx, ty) for _ in range(steps)]
            info.update(version=torch.__version__, threads=torch.get_num_threads(), **net.setup)
    if check and not check["ok"]:
        notes.append(f"first-batch losses differ: pyregnet {check['pyregnet']:.6f}, PyTorch {check['torch']:.6f}")
    print(f"timing {len(cases)} cases x {args.repeats} samples of {steps} steps ...", flush=True)
    samples = common.take_turns(list(cases), args.repeats, lambda k: common.timeit(cases[k], device, 0, 1)[0] / steps,
                                warmup=max(1, -(-args.warmup // steps)))   # warm-up steps, in whole samples
    roof = common.roofline(device, args.quick)
    ops_rows, inline = [], {}
    for reg, eng in engines.items():   # the engine's full-batch step, launch by launch, from an epoch's start
        if args.ops:
            launches = eng.step().launches
            timed, inline[reg] = common.time_launches(launches, device, args.op_repeats, lambda: eng.start_epoch(order))
            ops_rows += [common.roofline_row(launch.name, times, launch.flops, launch.bytes, roof, reg=reg, method=how)
                         for launch, (times, how) in zip(launches, timed)]
    return samples, (ops_rows, inline), check, info, roof


def summarize(samples, ops, roof, batch, device, net):
    """Per case: the step's statistics; per reg: the launches' sum beside the step (and on the CPU
    beside the steps the table ran); the targets (`net`'s)."""
    ops_rows, inline = ops
    flops, limit = MODELS[net].step_flops(batch)["total"], STEP_TARGET[net]
    results = []
    for (impl, reg), per_step in samples.items():
        s = common.stats(per_step)
        results.append({"impl": impl, "reg": reg, "samples_s_per_step": per_step, "stats_s_per_step": s,
                        "ms_per_step": s["median"] * 1e3, "images_per_s": batch / s["median"],
                        "gflops_per_s": flops / s["median"] / 1e9,
                        "pct_of_peak": 100 * flops / s["median"] / roof["peak_flops_per_s"]})
    ms = {(r["impl"], r["reg"]): r["ms_per_step"] for r in results}
    sums = {}
    for reg in (REGS if ops_rows else ()):
        rows = [r for r in ops_rows if r["reg"] == reg]
        s = sums[reg] = {"ops_ms": sum(r["ms"] for r in rows), "step_ms": ms[("pyregnet", reg)]}
        s["ratio"] = s["ops_ms"] / s["step_ms"]
        if inline.get(reg):   # the launches' share of each step the table ran: the rest is the loop
            s["share_of_table_steps"] = [sum(r["samples_s"][k] for r in rows) / t for k, t in enumerate(inline[reg])]
    targets = []
    for reg in REGS:
        ratio = ms[("pyregnet", reg)] / ms[("torch", reg)] if ("torch", reg) in ms else None
        targets.append(common.target(f"step_{reg}", f"pyregnet's {net} step ({reg}) <= {limit:g}x PyTorch's", ratio,
                                     limit, "<=", device, "cpu", "pyregnet ms / PyTorch ms" if ratio else
                                     "PyTorch did not run"))
    return results, sums, targets


def report(results, ops_rows, sums, check):
    print(f"\n{'impl':9} {'reg':5} {'ms/step median [p10-p90]':28} {'img/s':>8} {'GFLOP/s':>8} {'%peak':>6}")
    for r in results:
        print(f"{r['impl']:9} {r['reg']:5} {common.fmt(r['stats_s_per_step']):28} {r['images_per_s']:8.0f} "
              f"{r['gflops_per_s']:8.1f} {r['pct_of_peak']:5.1f}%")
    if check:
        print(f"first-batch loss: pyregnet {check['pyregnet']:.6f}, PyTorch {check['torch']:.6f} "
              f"({'the same network' if check['ok'] else 'MISMATCH'})")
    if ops_rows:
        print(f"\n{'launch of the step':24} {'reg':5} {'ms':>8} {'GFLOP/s':>8} {'GB/s':>7} {'roof ms':>8} {'%roof':>6}")
        for r in ops_rows:
            gf = f"{r['gflops_per_s']:8.1f}" if r["flops"] else f"{'-':>8}"
            print(f"{r['op']:24} {r['reg']:5} {r['ms']:8.3f} {gf} {r['gb_per_s']:7.1f} {r['roofline_ms']:8.3f} "
                  f"{r['pct_of_roofline']:5.1f}%")
        for reg, s in sums.items():
            print(f"sum of the {reg} step's launches, each timed alone: {s['ops_ms']:.3f} ms vs the step "
                  f"{s['step_ms']:.3f} ms ({s['ratio']:.2f}x)")


def main(argv=None):
    try:
        args, device = common.parse(parser(), argv, FULL, QUICK)
        args.params = None if args.weights is None else trained_weights(args.weights, args.model)
    except UsageError as e:
        return common.usage_exit("step_time", e)
    meta, notes = common.start("step_time", device, args.quick)
    net = MODELS[args.model]
    kernels = common.census((net.init_params(common.SEED) if args.params is None else args.params)[:net.N_KERNEL])
    print(f"kernel weights at the start ({args.weights or 'initial'}): {kernels}")
    samples, ops, check, info, roof = measure(args, device, notes)
    results, sums, targets = summarize(samples, ops, roof, args.batch_size, device, args.model)
    report(results, ops[0], sums, check)
    return common.finish("step_time", meta, notes, targets, {
        "config": {"device": device, "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                   "repeats": args.repeats, "op_repeats": args.op_repeats, "quick": args.quick, "regs": list(REGS),
                   "weights": args.weights, "kernel_weights_at_start": kernels,
                   "timer": "CUDA events" if device == "cuda" else "time.perf_counter"},
        "flops": net.step_flops(args.batch_size), "roofline": roof, "torch": info,
        "same_network_check": check, "results": results, "ops": ops[0], "ops_sum": sums},
        args.json, args.check, tag="" if args.model == "cnn" else f"_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
