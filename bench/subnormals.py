"""Each CPU op with normal against subnormal float32 operands: the cost of IEEE subnormals.

    python bench/subnormals.py [--warmup N] [--repeats N] [--json PATH]

Every op runs on the paper's shapes (batch 64) with ordinary operands, then with those that L2
under Adam drives towards zero scaled into the subnormal range (N(0, 1) x 2^-130): conv and dense
weights, ReLU and pooling activations, the logits, and the Adam update's weights, gradient and
first moment (its second moment stays normal, remembering larger gradients). With flushing
(build_info()["flush_denormals"], the default) both take the same time; a
PYREGNET_FLUSH_DENORMALS=OFF build shows the IEEE slow path. Writes
bench/results/subnormals_cpu[_ieee].json. A measurement to read: nothing is asserted.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import pyregnet  # noqa: E402
from pyregnet import model, ops  # noqa: E402
from pyregnet.options import count, positive_int  # noqa: E402

SUBNORMAL_SCALE = 2.0 ** -130
L2 = 1e-4  # the default λ2
ADAM = dict(step=1000, lr=1e-3, l2=L2, penalized=model.N_KERNEL, with_penalty=True)


def operands(subnormal, seed=0):
    """make(shape, small=False): N(0, 1) values; those marked `small` scaled into the subnormal
    range when `subnormal`."""
    rng = np.random.default_rng(seed)

    def make(shape, small=False):
        a = rng.standard_normal(shape).astype(np.float32)
        return (a * np.float32(SUBNORMAL_SCALE)) if small and subnormal else a
    return make


def cases(subnormal):
    """name -> a call of one op, its arrays built once (in-place ops keep updating them)."""
    f = operands(subnormal)
    x_dense, w_dense, b_dense, dy_dense = f((64, 2304)), f((128, 2304), True), f((128,)), f((64, 128))
    x_conv, w_conv, b_conv, dy_conv = f((64, 32, 15, 15)), f((64, 32, 3, 3), True), f((64,)), f((64, 64, 13, 13))
    x_pool, dy_pool = f((64, 32, 30, 30), True), f((64, 32, 15, 15), True)
    logits, labels = f((64, 10), True), np.arange(64) % 10
    n = model.N_PARAMS
    w, g, m = f((n,), True), f((n,), True), f((n,), True)
    v = np.abs(f((n,))) * np.float32(1e-2) + np.float32(1e-3)
    g_unfused = g.copy()
    return {
        "dense_forward (64,2304)x(128,2304)": lambda: ops.dense_forward(x_dense, w_dense, b_dense),
        "dense_backward": lambda: ops.dense_backward(x_dense, w_dense, dy_dense),
        "conv2d_forward (64,32,15,15)*(64,32,3,3)": lambda: ops.conv2d_forward(x_conv, w_conv, b_conv, 0),
        "conv2d_backward": lambda: ops.conv2d_backward(x_conv, w_conv, dy_conv, 0),
        "maxpool2d_forward (64,32,30,30)": lambda: ops.maxpool2d_forward(x_pool),
        "maxpool2d_backward": lambda: ops.maxpool2d_backward(x_pool, dy_pool),
        "relu_forward (64,32,30,30)": lambda: ops.relu_forward(x_pool),
        "relu_backward": lambda: ops.relu_backward(x_pool, x_pool),
        "softmax_cross_entropy (64,10)": lambda: ops.softmax_cross_entropy(logits, labels),
        f"adam_update fused L2, {n:,} params": lambda: ops.adam_update(w, g, m, v, **ADAM),
        "penalty L2": lambda: ops.penalty(w, 0.0, L2),
        "penalty_gradient L2": lambda: ops.penalty_gradient(w, g_unfused, 0.0, L2, penalized=model.N_KERNEL),
        "sparsity_count |w| <= 1e-4": lambda: ops.sparsity_count(w, 1e-4),
    }


def measure(warmup, repeats, log=print):
    """{op: {"normal": stats, "subnormal": stats, "ratio": median subnormal / median normal}}."""
    runs = {kind: cases(kind == "subnormal") for kind in ("normal", "subnormal")}
    results = {}
    log(f"{'op':44s} {'normal ms':>10s} {'subnormal ms':>13s} {'ratio':>7s}")
    for name in runs["normal"]:
        entry = {kind: common.stats(common.timeit(runs[kind][name], "cpu", warmup, repeats)) for kind in runs}
        entry["ratio"] = entry["subnormal"]["median"] / entry["normal"]["median"]
        log(f"{name:44s} {entry['normal']['median'] * 1e3:10.3f} {entry['subnormal']['median'] * 1e3:13.3f} "
            f"{entry['ratio']:7.2f}")
        results[name] = entry
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/subnormals.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=count, default=3, help="untimed calls per op and kind first (default 3)")
    p.add_argument("--repeats", type=positive_int, default=15, help="timed calls per op and kind (default 15)")
    p.add_argument("--json", metavar="PATH", default=None, help="where to write the results (default "
                   "bench/results/subnormals_cpu.json, or subnormals_cpu_ieee.json from an IEEE build)")
    args = p.parse_args(argv)
    flushing = pyregnet.build_info()["flush_denormals"]
    meta, notes = common.start("subnormals", "cpu", quick=False)
    print(f"flush_denormals: {flushing}; {args.warmup} warm-up and {args.repeats} timed calls per op and kind")
    results = measure(args.warmup, args.repeats)
    path = args.json or common.RESULTS_DIR / f"subnormals_cpu{'' if flushing else '_ieee'}.json"
    common.write_json(path, {"meta": meta, "notes": notes, "flush_denormals": flushing,
                             "subnormal_scale": SUBNORMAL_SCALE, "warmup": args.warmup, "repeats": args.repeats,
                             "ops": results})


if __name__ == "__main__":
    main()
