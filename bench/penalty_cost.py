"""What the weight penalty costs: per epoch in the real training loop, and in the update kernel alone.

    python bench/penalty_cost.py [--device auto|cpu|cuda] [--quick] [--json PATH]
                                 [--epoch-images N] [--epochs N] [--warmup-epochs N] [--sizes LIST]
                                 [--repeats N] [--peers LIST] [--no-epochs] [--no-update]

1. Epochs. pyregnet.train.Run.train_epoch (no evaluation) on a synthetic uint8 data set of
   --epoch-images random images, for every penalty (none, l1, l2, l1l2, the default λ) and every
   way of applying it (Config.penalty_mode): fused (the penalty gradient and its value inside the
   Adam update: one pass over the parameters), unfused (a penalty-gradient kernel, then Adam: two
   passes) and loss (as autodiff frameworks do it: the penalty's value, its gradient, then Adam:
   three passes). The 12 cases take turns epoch by epoch (round-robin, the starting case rotating
   each round) so that drifting machine load hits all alike; each gets --warmup-epochs untimed
   epochs first, then --epochs timed ones (CUDA events on the GPU, perf_counter on the CPU). The
   baseline of every overhead is the fused method's `none` run (the three methods do the same
   work without a penalty): overhead = median epoch / median baseline epoch - 1; the spread is
   that of the per-round ratios (case epoch / baseline epoch of the same round - 1), and the
   noise it is compared with is the baseline's own spread, (p90 - p10) / median of its epochs.
2. The update kernel alone, float32, every parameter penalized, from the paper's 315,722
   parameters up to 10^8 (--quick: up to 4M): time and achieved bandwidth, counting the bytes
   that must move (read w, g, m, v; write w, m, v: 7 x itemsize x n) against the device's
   measured copy bandwidth, for each penalty kind, fused (with the penalty value computed in the
   same pass when this pyregnet offers it, as training does), plus pyregnet's unfused and loss
   forms for comparison.
3. Peers on the same device, each optional (skipped with the reason when it cannot run here)
   and checked against pyregnet.reference.adam_update on a small array before it is timed:
   PyTorch's torch.optim.Adam (fused=True and foreach=True; L2 as weight_decay = 2 λ2, L1 through
   the loss and autograd), a CuPy ElementwiseKernel and a numba.cuda kernel of the fused update
   (GPU), a numba @njit(parallel=True) loop and plain NumPy (CPU).

Targets (the issue): GPU: the fused update moves >= 90% of the measured copy bandwidth at >= 16M
parameters and is faster than every peer; fused l1l2 adds <= 1% to epoch time (within noise).
CPU: the fused penalty adds <= 1% to epoch time. Results: bench/results/penalty_cost_<device>.json
(penalty_cost_<device>_quick.json for --quick) and a PNG beside it.
"""

import argparse
import dataclasses
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by the tests rather than run as `python bench/penalty_cost.py`
    sys.path.insert(0, str(HERE))
import common  # noqa: E402
from pyregnet import data as datasets  # noqa: E402
from pyregnet import model, ops, reference  # noqa: E402
from pyregnet.extras import missing  # noqa: E402
from pyregnet.regularizers import Penalty  # noqa: E402
from pyregnet.train import Config, Run, UsageError, resolve_device  # noqa: E402

REGS = ("none", "l1", "l2", "l1l2")
PENALIZED = ("l1", "l2", "l1l2")
METHODS = ("fused", "unfused", "loss")
BASELINE = ("fused", "none")
PAPER_PARAMS = model.N_PARAMS  # 315,722
SEED = 0
DTYPE = np.float32
HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7}
BYTES_PER_ELEMENT_ACCESSES = 7  # read w, g, m, v; write w, m, v

# Targets (the issue)
GPU_BW_FRACTION = 0.90          # fused update >= 90% of the copy bandwidth ...
GPU_BW_MIN_SIZE = 16 * 2**20    # ... at >= 16M parameters
EPOCH_OVERHEAD_LIMIT = 0.01     # the fused penalty adds <= 1% to epoch time

FULL = dict(epoch_images=50_000, epochs=5, warmup_epochs=1,
            sizes=(PAPER_PARAMS, 2**20, 4 * 2**20, 16 * 2**20, 64 * 2**20, 10**8),
            update_warmup=3, update_repeats=20)
QUICK = dict(epoch_images=1024, epochs=5, warmup_epochs=1, sizes=(PAPER_PARAMS, 2**20, 4 * 2**20),
             update_warmup=1, update_repeats=5)
SLOW_CALL_S = 0.25              # updates slower than this get at most 5 timed repeats
CHECK_N = 1037                  # the correctness check's array: odd, not a multiple of any tile
CHECK_STEP = 3
CHECK_LAMBDA = {"l1": 1e-2, "l2": 1e-2}  # large enough that a missing or wrong term shows
CHECK_ATOL, CHECK_RTOL = 1e-7, 1e-6      # float32 against the float64 reference (errors seen: ~3e-8)


# ---------------------------------------------------------------- what this pyregnet offers

# ---------------------------------------------------------------- roofline arithmetic

def update_bytes(n, itemsize=4):
    """Bytes one penalty + Adam update of n parameters must move: it reads w, g, m and v and
    writes w, m and v, each n elements of `itemsize` bytes (the penalty adds no traffic when
    fused: it reads the w that Adam reads anyway)."""
    return BYTES_PER_ELEMENT_ACCESSES * itemsize * n


def bandwidth_fraction(n, seconds, copy_bytes_per_s, itemsize=4):
    """(achieved bytes/s, achieved / measured copy bandwidth) of an update of n parameters."""
    achieved = update_bytes(n, itemsize) / seconds
    return achieved, achieved / copy_bytes_per_s


# ---------------------------------------------------------------- the update implementations

def _alpha(step, hyper):
    return hyper["lr"] * math.sqrt(1.0 - hyper["beta2"] ** step) / (1.0 - hyper["beta1"] ** step)


def build_pyregnet(form):
    """pyregnet's update in one of the three training forms (fused / unfused / loss), or
    fused-novalue: the fused update without the penalty value (isolates what summing it costs)."""

    def build(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
        pen = bool(l1 or l2)
        adam = dict(lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"], eps=hyper["eps"])
        if form in ("fused", "fused-novalue"):
            kw = {"with_penalty": True} if pen and form == "fused" else {}

            def update(step):
                return ops.adam_update(w, g, m, v, step=step, l1=l1, l2=l2, **adam, **kw)
        elif form == "unfused":
            def update(step):
                value = ops.penalty_gradient(w, g, l1, l2, with_penalty=True) if pen else None
                ops.adam_update(w, g, m, v, step=step, l1=0.0, l2=0.0, **adam)
                return value
        elif form == "loss":
            def update(step):
                value = None
                if pen:
                    value = ops.penalty(w, l1, l2)
                    ops.penalty_gradient(w, g, l1, l2)
                ops.adam_update(w, g, m, v, step=step, l1=0.0, l2=0.0, **adam)
                return value
        else:
            raise ValueError(f"form: expected fused, unfused or loss but got {form!r}")
        return update
    return build


def _to_torch(torch, a):
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.as_tensor(a, device="cuda")  # CuPy through __cuda_array_interface__, no copy


def build_torch(impl):
    """torch.optim.Adam([w], fused=True or foreach=True) over tensors sharing the arrays' memory;
    L2 as weight_decay = 2 λ2 (coupled, as pyregnet), L1 through the loss and autograd
    (l1 * |w|.sum() backward, accumulated into w.grad). PyTorch's eps sits inside the bias
    correction (sqrt(v / (1 - β2^t)) + eps): the correctness check passes eps / sqrt(1 - β2^t)
    so that both compute the same number; timing is unaffected."""

    def build(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
        import torch
        p = _to_torch(torch, w).requires_grad_(True)
        p.grad = _to_torch(torch, g)
        eps = hyper["eps"]
        if check:
            eps = eps / math.sqrt(1.0 - hyper["beta2"] ** (step0 + 1))
        opt = torch.optim.Adam([p], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=eps,
                               weight_decay=2.0 * l2, **{impl: True})
        step_device = p.device if impl == "fused" else torch.device("cpu")
        opt.state[p] = {"step": torch.tensor(float(step0), dtype=torch.float32, device=step_device),
                        "exp_avg": _to_torch(torch, m), "exp_avg_sq": _to_torch(torch, v)}

        def update(step):
            if l1:
                (p.abs().sum() * l1).backward()
            opt.step()
        return update
    return build


_CUPY_KERNEL = None


def build_cupy(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
    """A CuPy ElementwiseKernel of the same fused update, in place on w, m, v."""
    global _CUPY_KERNEL
    import cupy
    if _CUPY_KERNEL is None:
        _CUPY_KERNEL = cupy.ElementwiseKernel(
            "T g, T l1, T l2x2, T b1, T b2, T alpha, T eps", "T w, T m, T v",
            """
            T wi = w;
            T gi = g + l1 * (T)((wi > (T)0) - (wi < (T)0)) + l2x2 * wi;
            T mi = b1 * m + ((T)1 - b1) * gi;
            T vi = b2 * v + ((T)1 - b2) * gi * gi;
            m = mi;
            v = vi;
            w = wi - alpha * mi / (sqrt(vi) + eps);
            """, "bench_penalty_adam")
    t = w.dtype.type

    def update(step):
        _CUPY_KERNEL(g, t(l1), t(2.0 * l2), t(hyper["beta1"]), t(hyper["beta2"]), t(_alpha(step, hyper)),
                     t(hyper["eps"]), w, m, v)
    return update


_NUMBA_CUDA_KERNEL = None


def build_numba_cuda(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
    """A numba.cuda kernel of the fused update (grid-stride loop), on CuPy's arrays, no copy."""
    global _NUMBA_CUDA_KERNEL
    import math as _m

    from numba import cuda
    if _NUMBA_CUDA_KERNEL is None:
        @cuda.jit(fastmath=False)
        def kernel(w, g, m, v, l1, l2x2, b1, b2, alpha, eps, one, zero):
            start, stride = cuda.grid(1), cuda.gridsize(1)
            for i in range(start, w.size, stride):
                wi = w[i]
                s = one if wi > zero else (-one if wi < zero else zero)
                gi = g[i] + l1 * s + l2x2 * wi
                mi = b1 * m[i] + (one - b1) * gi
                vi = b2 * v[i] + (one - b2) * gi * gi
                m[i] = mi
                v[i] = vi
                w[i] = wi - alpha * mi / (_m.sqrt(vi) + eps)
        _NUMBA_CUDA_KERNEL = kernel
    arrays = [cuda.as_cuda_array(a) for a in (w, g, m, v)]
    n = w.size
    threads = 256
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    blocks = max(1, min((n + threads - 1) // threads, sms * 32))
    t = w.dtype.type

    def update(step):
        _NUMBA_CUDA_KERNEL[blocks, threads](*arrays, t(l1), t(2.0 * l2), t(hyper["beta1"]), t(hyper["beta2"]),
                                            t(_alpha(step, hyper)), t(hyper["eps"]), t(1), t(0))
    return update


_NUMBA_CPU_KERNEL = None


def build_numba_cpu(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
    """numba @njit(parallel=True): the fused update as one prange loop over all cores."""
    global _NUMBA_CPU_KERNEL
    if _NUMBA_CPU_KERNEL is None:
        from numba import njit, prange

        @njit(parallel=True, fastmath=False, cache=False)
        def kernel(w, g, m, v, l1, l2x2, b1, b2, alpha, eps, one, zero):
            for i in prange(w.size):
                wi = w[i]
                s = one if wi > zero else (-one if wi < zero else zero)
                gi = g[i] + l1 * s + l2x2 * wi
                mi = b1 * m[i] + (one - b1) * gi
                vi = b2 * v[i] + (one - b2) * gi * gi
                m[i] = mi
                v[i] = vi
                w[i] = wi - alpha * mi / (np.sqrt(vi) + eps)
        _NUMBA_CPU_KERNEL = kernel
    t = w.dtype.type

    def update(step):
        _NUMBA_CPU_KERNEL(w, g, m, v, t(l1), t(2.0 * l2), t(hyper["beta1"]), t(hyper["beta2"]),
                          t(_alpha(step, hyper)), t(hyper["eps"]), t(1), t(0))
    return update


def build_numpy(w, g, m, v, *, l1, l2, hyper, step0=0, check=False):
    """Plain NumPy, vectorized, in place, with two preallocated scratch arrays (no per-call
    allocation): a fair single-threaded NumPy, not a strawman."""
    gp, tmp = np.empty_like(w), np.empty_like(w)
    b1, b2, eps = hyper["beta1"], hyper["beta2"], hyper["eps"]

    def update(step):
        np.copyto(gp, g)
        if l1:
            np.sign(w, out=tmp)
            np.multiply(tmp, l1, out=tmp)
            np.add(gp, tmp, out=gp)
        if l2:
            np.multiply(w, 2.0 * l2, out=tmp)
            np.add(gp, tmp, out=gp)
        np.multiply(m, b1, out=m)
        np.multiply(gp, 1.0 - b1, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(v, b2, out=v)
        np.multiply(gp, gp, out=tmp)
        np.multiply(tmp, 1.0 - b2, out=tmp)
        np.add(v, tmp, out=v)
        np.sqrt(v, out=tmp)
        np.add(tmp, eps, out=tmp)
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, _alpha(step, hyper), out=tmp)
        np.subtract(w, tmp, out=w)
    return update


@dataclasses.dataclass(frozen=True)
class Impl:
    name: str
    kind: str            # "pyregnet" (the subject) or "peer"
    device: str          # "cpu", "cuda" or "any"
    description: str
    build: object        # build(w, g, m, v, *, l1, l2, hyper, step0, check) -> update(step)
    events: str = "cupy"  # CUDA events of which library time it on the GPU
    needs: tuple = ()     # modules to import ("numba.cuda" also needs a usable GPU)
    regs: tuple = REGS


def implementations():
    return [
        Impl("pyregnet-fused", "pyregnet", "any", "ops.adam_update(l1, l2[, with_penalty=True]): one pass",
             build_pyregnet("fused")),
        Impl("pyregnet-fused-noval", "pyregnet", "any",
             "ops.adam_update(l1, l2) without with_penalty: the fused update minus the penalty value's sum",
             build_pyregnet("fused-novalue"), regs=PENALIZED),
        Impl("pyregnet-unfused", "pyregnet", "any",
             "ops.penalty_gradient(with_penalty=True) then ops.adam_update(l1=0, l2=0): two passes",
             build_pyregnet("unfused"), regs=PENALIZED),
        Impl("pyregnet-loss", "pyregnet", "any",
             "ops.penalty + ops.penalty_gradient + ops.adam_update(l1=0, l2=0): three passes",
             build_pyregnet("loss"), regs=PENALIZED),
        Impl("torch-fused", "peer", "any", "torch.optim.Adam(fused=True), L2 weight_decay=2λ2, L1 via autograd",
             build_torch("fused"), events="torch", needs=("torch",)),
        Impl("torch-foreach", "peer", "any", "torch.optim.Adam(foreach=True), L2 weight_decay=2λ2, L1 via autograd",
             build_torch("foreach"), events="torch", needs=("torch",)),
        Impl("cupy-elementwise", "peer", "cuda", "cupy.ElementwiseKernel of the fused update", build_cupy,
             needs=("cupy",)),
        Impl("numba-cuda", "peer", "cuda", "numba.cuda.jit kernel of the fused update (grid-stride)",
             build_numba_cuda, needs=("numba.cuda",)),
        Impl("numba-cpu", "peer", "cpu", "numba @njit(parallel=True) prange loop of the fused update",
             build_numba_cpu, needs=("numba",)),
        Impl("numpy", "peer", "cpu", "plain NumPy, vectorized, in place, preallocated scratch", build_numpy),
    ]


def _import_reason(module):
    """None when `module` imports (and, for numba.cuda, finds a GPU), else why not."""
    try:
        if module == "numba.cuda":
            from numba import cuda
            if not cuda.is_available():
                return "numba.cuda finds no usable CUDA GPU or driver"
        else:
            __import__(module)
    except ImportError:
        return missing(module)
    except Exception as e:  # noqa: BLE001 -- a broken install is a reason to skip, not to fail
        return f"{module} failed to import ({type(e).__name__}: {e})"
    return None


def availability(impl, device):
    """None when `impl` can run on `device`, else the reason it is skipped."""
    missing = [r for m in impl.needs if (r := _import_reason(m))]
    if impl.device not in ("any", device):
        where = "the GPU" if impl.device == "cuda" else "the CPU"
        reason = f"runs on {where} only; this run is on {'the GPU' if device == 'cuda' else 'the CPU'}"
        return reason + (f" (and {missing[0]})" if missing else "")
    return missing[0] if missing else None


# ---------------------------------------------------------------- correctness

def check_arrays(n=CHECK_N, seed=SEED, dtype=DTYPE):
    """Host w, g, m, v for the correctness check: small random weights with a few exact zeros
    (sign(0) = 0), gradients and moments at the scale of training, v >= 0."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n) * 0.05).astype(dtype)
    w[::97] = 0
    g = (rng.standard_normal(n) * 1e-2).astype(dtype)
    m = (rng.standard_normal(n) * 1e-2).astype(dtype)
    v = (np.abs(rng.standard_normal(n)) * 1e-4).astype(dtype)
    return w, g, m, v


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def check_impl(impl, xp=np, n=CHECK_N, kinds=REGS):
    """One update of `impl` from the same start as pyregnet.reference.adam_update (float64) at
    step CHECK_STEP, for each penalty kind with λ = CHECK_LAMBDA, every element penalized.
    Returns {"ok", "max_abs_err": {kind: {w, m, v[, penalty_rel]}}, "worst_excess", "tolerance",
    "n", "step"}; ok when every |out - ref| <= atol + rtol |ref| and, where the update returns the
    penalty value (pyregnet's forms), it is within rtol of reference.penalty."""
    errs, ok, worst = {}, True, 0.0
    for kind in kinds:
        l1 = CHECK_LAMBDA["l1"] if kind in ("l1", "l1l2") else 0.0
        l2 = CHECK_LAMBDA["l2"] if kind in ("l2", "l1l2") else 0.0
        host = check_arrays(n)
        ref = [a.astype(np.float64) for a in host]
        reference.adam_update(ref[0], ref[1], ref[2], ref[3], step=CHECK_STEP, **HYPER, l1=l1, l2=l2)
        dev = [xp.asarray(a).copy() for a in host]
        update = impl.build(*dev, l1=l1, l2=l2, hyper=HYPER, step0=CHECK_STEP - 1, check=True)
        value = update(CHECK_STEP)
        errs[kind] = {}
        if value is not None:  # pyregnet's forms return the penalty of w before the update
            want = reference.penalty(host[0], l1, l2)
            errs[kind]["penalty_rel"] = abs(float(value) - want) / max(abs(want), 1e-30)
            worst = max(worst, errs[kind]["penalty_rel"] / CHECK_RTOL)
            ok = ok and errs[kind]["penalty_rel"] <= CHECK_RTOL
        for name, out, r in zip("wgmv", dev, ref):
            if name == "g":
                continue  # unfused forms and PyTorch's L1 accumulate into g: not an output
            out = _host(out).astype(np.float64)
            err = np.abs(out - r)
            errs[kind][name] = float(err.max()) if np.all(np.isfinite(out)) else float("inf")
            excess = float(np.max(err / (CHECK_ATOL + CHECK_RTOL * np.abs(r)))) if np.all(np.isfinite(out)) \
                else float("inf")
            worst = max(worst, excess)
            ok = ok and excess <= 1.0
    return {"ok": bool(ok), "max_abs_err": errs, "worst_excess": worst, "n": n, "step": CHECK_STEP,
            "lambda": CHECK_LAMBDA,
            "tolerance": {"atol": CHECK_ATOL, "rtol": CHECK_RTOL, "dtype": np.dtype(DTYPE).name}}


def _check_line(result):
    worst = {k: max(v for name, v in e.items() if name in "wmv") for k, e in result["max_abs_err"].items()}
    return ", ".join(f"{k} {e:.1e}" for k, e in worst.items())


def prepare_impls(device, xp, selected=None, log=print):
    """Every implementation with its availability and, when available, its correctness check.
    Returns (runnable [Impl], report {name: {...}})."""
    runnable, report = [], {}
    for impl in implementations():
        entry = {"kind": impl.kind, "device": impl.device, "description": impl.description, "available": False,
                 "skipped": None, "check": None}
        report[impl.name] = entry
        if selected is not None and impl.kind == "peer" and impl.name not in selected:
            entry["skipped"] = "not selected (--peers)"
        else:
            entry["skipped"] = availability(impl, device)
        if entry["skipped"] is None:
            try:
                entry["check"] = check_impl(impl, xp)
            except Exception as e:  # noqa: BLE001 -- e.g. torch fused=True unsupported on this device
                entry["skipped"] = f"raised on this device: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if entry["skipped"] is None and not entry["check"]["ok"]:
            entry["skipped"] = (f"computes something else: max error vs reference {_check_line(entry['check'])} "
                                f"exceeds atol {CHECK_ATOL:g} + rtol {CHECK_RTOL:g}·|ref|")
        entry["available"] = entry["skipped"] is None
        if entry["available"]:
            runnable.append(impl)
            log(f"  {impl.name:20} check vs reference ({CHECK_N} float32, step {CHECK_STEP}), max |error| by "
                f"penalty: {_check_line(entry['check'])}: ok")
        else:
            log(f"  {impl.name:20} skipped: {entry['skipped']}")
    return runnable, report


# ---------------------------------------------------------------- item 2: the update sweep

def _sync(device, lib="cupy"):
    if device != "cuda":
        return lambda: None
    if lib == "torch":
        import torch
        return torch.cuda.synchronize
    import cupy
    return cupy.cuda.get_current_stream().synchronize


def sweep_arrays(xp, n, seed=SEED):
    """w, g, m, v of n float32 on the device (random weights and gradients, zero moments)."""
    if xp is np:
        rng = np.random.default_rng(seed)
        w = rng.standard_normal(n, dtype=np.float32)
        w *= 0.05
        g = rng.standard_normal(n, dtype=np.float32)
        g *= 1e-2
    else:
        xp.random.seed(seed)
        w = xp.random.standard_normal(n, dtype=xp.float32) * xp.float32(0.05)
        g = xp.random.standard_normal(n, dtype=xp.float32) * xp.float32(1e-2)
    return w, g, xp.zeros(n, xp.float32), xp.zeros(n, xp.float32)


def time_update(update, device, events, warmup, repeats):
    """Seconds per call of update(step) (steps counting up): `warmup` untimed calls, then
    `repeats` timed ones (at most 5 when a call takes longer than SLOW_CALL_S)."""
    counter = itertools.count(1)

    def fn():
        update(next(counter))
    sync = _sync(device, events)
    sync()
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    if per_call > SLOW_CALL_S:
        repeats = min(repeats, 5)
    if device == "cuda":
        return common.timeit(fn, warmup=0, repeats=repeats, sync=sync, events=events)
    return common.timeit(fn, warmup=0, repeats=repeats)


def update_row(impl, reg, n, samples, bytes_per_s, with_penalty):
    s = common.stats(samples)
    achieved, fraction = bandwidth_fraction(n, s["median"], bytes_per_s)
    nbytes = update_bytes(n)
    return {"impl": impl, "reg": reg, "n": n, "samples_s": samples, "stats_s": s, "ms": s["median"] * 1e3,
            "bytes": nbytes, "gb_per_s": achieved / 1e9, "fraction_of_copy_bw": fraction,
            "roofline_ms": nbytes / bytes_per_s * 1e3, "with_penalty_value": with_penalty}


def run_sweep(device, xp, impls, sizes, warmup, repeats, bytes_per_s, log=print):
    rows = []
    for n in sizes:
        log(f"  n = {n:,} ({update_bytes(n) / 1e6:.0f} MB moved per update) ...", flush=True)
        arrays = sweep_arrays(xp, n)
        for reg in REGS:
            pen = Penalty.with_defaults(reg)
            for impl in impls:
                if reg not in impl.regs:
                    continue
                update = impl.build(*arrays, l1=pen.l1, l2=pen.l2, hyper=HYPER)
                samples = time_update(update, device, impl.events, warmup, repeats)
                # does the timed call also compute the penalty value (as the training step does)?
                value = impl.kind == "pyregnet" and reg != "none" and impl.name != "pyregnet-fused-noval"
                rows.append(update_row(impl.name, reg, n, samples, bytes_per_s, value))
                del update
        del arrays
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()
    return rows


# ---------------------------------------------------------------- item 1: epochs

def synthetic_images(n, seed=SEED):
    """n random uint8 images (N, 32, 32, 3) and int64 labels: timing data, not learnable."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, model.CLASSES, size=n, dtype=np.int64))


def epoch_cases(methods):
    return [(method, reg) for method in methods for reg in REGS]


def run_epochs(device, images, batch, rounds, warmup_epochs, methods, log=print):
    """{(method, reg): [seconds per epoch]}: one Run per case, all on the same data and seed;
    warm-up epochs, then `rounds` rounds in which every case trains one epoch, the starting case
    rotating from round to round. Only Run.train_epoch is timed (no evaluation)."""
    x, y = synthetic_images(images)
    ds = datasets.Dataset(x, y, x[:batch].copy(), y[:batch].copy(), tuple(str(i) for i in range(model.CLASSES)),
                          "synthetic-random (timing only)")
    cases = epoch_cases(methods)
    runs, first = {}, None
    for method, reg in cases:
        pen = Penalty.with_defaults(reg)
        run = Run(Config(reg=pen.kind, l1=pen.l1, l2=pen.l2, batch_size=batch, seed=SEED, device=device,
                         penalty_mode=method), ds)
        if first is None:
            first = run
        else:  # one copy of the data set on the device, shared
            run.x_train, run.y_train = first.x_train, first.y_train
        runs[(method, reg)] = run
    sync = _sync(device)

    def one_epoch(run):
        if device == "cuda":
            t = common.timeit(run.train_epoch, warmup=0, repeats=1, sync=sync, events="cupy")[0]
        else:
            t0 = time.perf_counter()
            run.train_epoch()
            t = time.perf_counter() - t0
        run.epoch += 1  # the next epoch draws a new order, as in training
        return t

    for w in range(warmup_epochs):
        log(f"  warm-up epoch {w + 1}/{warmup_epochs} of each case ...", flush=True)
        for case in cases:
            one_epoch(runs[case])
    samples = {case: [] for case in cases}
    for r in range(rounds):
        t0 = time.perf_counter()
        k = r % len(cases)
        for case in cases[k:] + cases[:k]:
            samples[case].append(one_epoch(runs[case]))
        log(f"  round {r + 1}/{rounds}: {len(cases)} epochs in {time.perf_counter() - t0:.1f} s", flush=True)
    return samples


def penalty_overhead(samples, methods=METHODS, baseline=BASELINE):
    """From {(method, reg): [seconds per epoch, one per round]}:
    overhead {method: {reg: median(case) / median(baseline) - 1}} for the penalized regs;
    share {method: {reg: stats of the per-round ratios case[r] / baseline[r] - 1}};
    noise = (p90 - p10) / median of the baseline's epochs."""
    base = samples[baseline]
    b = common.stats(base)
    overhead, share = {}, {}
    for method in methods:
        overhead[method], share[method] = {}, {}
        for reg in PENALIZED:
            case = samples.get((method, reg))
            if not case:
                overhead[method][reg] = None
                share[method][reg] = None
                continue
            overhead[method][reg] = common.stats(case)["median"] / b["median"] - 1.0
            share[method][reg] = common.stats([t / t0 - 1.0 for t, t0 in zip(case, base)])
    noise = (b["p90"] - b["p10"]) / b["median"]
    return overhead, share, noise


def aa_none(samples, methods=METHODS, baseline=BASELINE):
    """An A/A check: the none runs of the other methods do exactly the work of the baseline
    (no penalty, the same update), so their median / the baseline's - 1 shows how far two
    identical cases land apart in this run. {method: fraction}."""
    base = common.stats(samples[baseline])["median"]
    return {m: common.stats(samples[(m, "none")])["median"] / base - 1.0
            for m in methods if (m, "none") != baseline and samples.get((m, "none"))}


# ---------------------------------------------------------------- targets

def overhead_verdict(overhead, limit, noise):
    """PASS when overhead <= limit; PASS (within noise) when it exceeds the limit but not the
    spread of the baseline epochs; else FAIL. Returns (pass, verdict, detail)."""
    if overhead is None:
        return None, "n/a", "not measured"
    if overhead <= limit:
        return True, "PASS", (f"{overhead:+.2%} <= {limit:.0%}; the none epochs' spread (p10-p90) is {noise:.2%}"
                              + (", so the difference is within noise" if abs(overhead) <= noise else ""))
    if overhead <= noise:
        return True, "PASS (within noise)", (f"{overhead:+.2%} > {limit:.0%} but within the none epochs' spread "
                                             f"(p10-p90) of {noise:.2%}: not distinguishable from noise")
    return False, "FAIL", f"{overhead:+.2%} > {limit:.0%} and above the none epochs' spread (p10-p90) of {noise:.2%}"


def evaluate_targets(device, rows, overhead, noise):
    """The issue's targets for `device`, each {target, device, pass, verdict, detail, ...}; the
    other device's targets are listed as n/a."""
    targets = []
    fused = [r for r in rows if r["impl"] == "pyregnet-fused"]
    peers = [r for r in rows if not r["impl"].startswith("pyregnet")]

    # GPU 1: bandwidth at >= 16M
    t = {"target": f"fused update >= {GPU_BW_FRACTION:.0%} of the copy bandwidth at >= 16M parameters",
         "device": "cuda"}
    big = [r for r in fused if r["n"] >= GPU_BW_MIN_SIZE]
    if device != "cuda":
        t.update({"pass": None, "verdict": "n/a", "detail": "a GPU target; this run is on the CPU"})
    elif not big:
        t.update({"pass": None, "verdict": "n/a", "detail": "no size >= 16M was measured (--sizes)"})
    else:
        worst = min(big, key=lambda r: r["fraction_of_copy_bw"])
        ok = worst["fraction_of_copy_bw"] >= GPU_BW_FRACTION
        t.update({"pass": ok, "verdict": "PASS" if ok else "FAIL", "value": worst["fraction_of_copy_bw"],
                  "detail": f"lowest {worst['fraction_of_copy_bw']:.1%} ({worst['reg']}, n={worst['n']:,}, "
                            f"{worst['gb_per_s']:.0f} GB/s) over {len(big)} measurements"})
    targets.append(t)

    # GPU 2: faster than every peer (every size and penalty both measured)
    t = {"target": "fused update faster than every peer (every size and penalty measured)", "device": "cuda"}
    if device != "cuda":
        t.update({"pass": None, "verdict": "n/a", "detail": "a GPU target; this run is on the CPU"})
    else:
        t.update(_versus_peers(fused, peers))
    targets.append(t)

    # epoch overheads
    gpu_t = {"target": f"fused l1l2 adds <= {EPOCH_OVERHEAD_LIMIT:.0%} to epoch time (within noise)", "device": "cuda"}
    cpu_t = {"target": f"the fused penalty adds <= {EPOCH_OVERHEAD_LIMIT:.0%} to epoch time (l1, l2 and l1l2)",
             "device": "cpu"}
    fused_over = (overhead or {}).get("fused") or {}
    for t, regs in ((gpu_t, ("l1l2",)), (cpu_t, PENALIZED)):
        if t["device"] != device:
            t.update({"pass": None, "verdict": "n/a",
                      "detail": f"a {'GPU' if t['device'] == 'cuda' else 'CPU'} target; this run is on the "
                                f"{'GPU' if device == 'cuda' else 'CPU'}"})
        elif not fused_over:
            t.update({"pass": None, "verdict": "n/a", "detail": "epochs not measured (--no-epochs)"})
        else:
            parts = {reg: overhead_verdict(fused_over.get(reg), EPOCH_OVERHEAD_LIMIT, noise) for reg in regs}
            passes = [p for p, _, _ in parts.values()]
            ok = None if None in passes else all(passes)
            verdicts = {v for _, v, _ in parts.values()}
            noisy = "PASS (within noise)" in verdicts
            verdict = "n/a" if ok is None else ("FAIL" if not ok else ("PASS (within noise)" if noisy else "PASS"))
            t.update({"pass": ok, "verdict": verdict, "value": {reg: fused_over.get(reg) for reg in regs},
                      "noise": noise, "detail": "; ".join(f"{reg}: {d}" for reg, (_, _, d) in parts.items())})
        targets.append(t)
    return targets


def _versus_peers(fused, peers):
    if not peers:
        return {"pass": None, "verdict": "n/a", "detail": "no peer ran on this device"}
    mine = {(r["n"], r["reg"]): r["ms"] for r in fused}
    worst = None
    losses = []
    for r in peers:
        t = mine.get((r["n"], r["reg"]))
        if t is None:
            continue
        ratio = t / r["ms"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, r)
        if ratio >= 1.0:
            losses.append(f"{r['impl']} {r['reg']} n={r['n']:,} ({t:.3f} vs {r['ms']:.3f} ms)")
    if worst is None:
        return {"pass": None, "verdict": "n/a", "detail": "no size measured by both"}
    ok = not losses
    detail = (f"slowest relative to a peer: {worst[0]:.2f}x {worst[1]['impl']} ({worst[1]['reg']}, "
              f"n={worst[1]['n']:,})") + ("" if ok else f"; not faster than: {'; '.join(losses[:6])}"
                                          + (f" (+{len(losses) - 6} more)" if len(losses) > 6 else ""))
    return {"pass": ok, "verdict": "PASS" if ok else "FAIL", "value": worst[0], "detail": detail}


# ---------------------------------------------------------------- plot

def plot(payload, path):
    """Two panels: update time vs parameter count beside the roofline; the per-epoch penalty
    overhead by method with p10-p90 error bars. Returns None, or why no plot was drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not installed ({e})"
    rows = payload["update"]["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    if rows:
        bw = payload["roofline"]["bytes_per_s"]
        ns = sorted({r["n"] for r in rows})
        grid = np.geomspace(ns[0], ns[-1], 50)
        ax1.plot(grid, [update_bytes(n) / bw * 1e3 for n in grid], "k-", lw=2,
                 label=f"roofline: 7·4·n B / {bw / 1e9:.0f} GB/s (copy)")
        for i, reg in enumerate(REGS):
            pts = sorted((r["n"], r["ms"]) for r in rows if r["impl"] == "pyregnet-fused" and r["reg"] == reg)
            if pts:
                ax1.plot(*zip(*pts), "o-", color=f"C{i}", label=f"pyregnet fused, {reg}")
        others = [i.name for i in implementations() if i.name != "pyregnet-fused"]
        others = [name for name in others if any(r["impl"] == name for r in rows)]
        palette = plt.get_cmap("Dark2")
        for j, impl in enumerate(others):
            pts = sorted((r["n"], r["ms"]) for r in rows if r["impl"] == impl and r["reg"] == "l1l2")
            if pts:
                style = "^:" if impl.startswith("pyregnet") else "s--"
                ax1.plot(*zip(*pts), style, color=palette(j % 8), alpha=0.85, markersize=4, label=f"{impl}, l1l2")
        ax1.set(xscale="log", yscale="log", xlabel="parameters n (float32)", ylabel="ms per update (median)",
                title="penalty + Adam update vs the roofline")
        ax1.axvline(PAPER_PARAMS, color="grey", ls=":", lw=1)
        ax1.grid(alpha=0.3, which="both")
        ax1.legend(fontsize=7)
    else:
        ax1.text(0.5, 0.5, "update sweep not run", ha="center", transform=ax1.transAxes)
    share = payload.get("epoch_penalty_share") or {}
    methods = [m for m in METHODS if any(share.get(m, {}).get(reg) for reg in PENALIZED)]
    if methods:
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for j, reg in enumerate(PENALIZED):
                s = share[method].get(reg)
                if s:
                    xs.append(j + (i - (len(methods) - 1) / 2) * width)
                    ys.append(100 * s["median"])
                    lo.append(100 * (s["median"] - s["p10"]))
                    hi.append(100 * (s["p90"] - s["median"]))
            ax2.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=f"C{i}", label=method)
        noise = payload["epochs"].get("baseline_noise")
        if noise is not None:
            ax2.axhspan(-100 * noise / 2, 100 * noise / 2, color="grey", alpha=0.15,
                        label=f"none epochs' spread ({100 * noise:.1f}%)")
        ax2.axhline(100 * EPOCH_OVERHEAD_LIMIT, color="red", ls="--", lw=1, label="target: 1%")
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks(range(len(PENALIZED)), PENALIZED)
        ax2.set(ylabel="extra epoch time vs fused/none, paired per round (%)",
                title=f"penalty share of an epoch ({payload['epochs']['images']} images; median, p10-p90)")
        ax2.grid(alpha=0.3, axis="y")
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "epochs not run", ha="center", transform=ax2.transAxes)
    fig.suptitle(f"{payload['metadata']['device_description']} ({payload['metadata']['commit'][:12]}, "
                 f"{payload['metadata']['date'][:10]}){'  --quick' if payload['config']['quick'] else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- command line

def _size(text):
    """A parameter count: an integer, 1e8, or with a binary suffix K (2^10), M (2^20), G (2^30)."""
    t = text.strip()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(t[-1:].upper(), 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a parameter count (315722, 1e8, 16M) but got {text!r}") from None
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected a whole parameter count >= 1 but got {text!r}")
    return int(value)


def _sizes(text):
    return [_size(s) for s in text.split(",") if s.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser():
    p = _Parser(prog="python bench/penalty_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK['epoch_images']} images per epoch, sizes up to 4M, few repeats")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="output (default bench/results/penalty_cost_<device>.json, _quick.json with --quick); "
                        "the PNG goes beside it")
    p.add_argument("--epoch-images", type=int, default=None,
                   help=f"images per synthetic epoch (default {FULL['epoch_images']}, --quick {QUICK['epoch_images']})")
    p.add_argument("--epochs", type=int, default=None, help=f"timed epochs per case (default {FULL['epochs']})")
    p.add_argument("--warmup-epochs", type=int, default=None, help="untimed epochs per case first (default 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="comma-separated parameter counts of the update sweep (K/M = 2^10/2^20; default "
                        "315722,1M,4M,16M,64M,1e8; --quick 315722,1M,4M)")
    p.add_argument("--repeats", type=int, default=None, help="timed updates per case (default 20, --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed updates per case first (default 3, --quick 1)")
    p.add_argument("--peers", default=None,
                   help="comma-separated peers to run (default all: " +
                        ",".join(i.name for i in implementations() if i.kind == "peer") + "); '' for none")
    p.add_argument("--no-epochs", dest="epochs_on", action="store_false", help="skip the epoch measurement")
    p.add_argument("--no-update", dest="update_on", action="store_false", help="skip the update-kernel sweep")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    return p


def _fmt_s(s, scale=1.0, digits=3):
    return f"{s['median'] * scale:.{digits}f} [{s['p10'] * scale:.{digits}f}-{s['p90'] * scale:.{digits}f}]"


def _pct(x):
    return "    -" if x is None else f"{100 * x:+.2f}%"


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        for name in ("epoch_images", "epochs", "repeats", "batch_size"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer but got {value}")
        for name in ("warmup_epochs", "warmup"):
            value = getattr(args, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')}: expected an integer >= 0 but got {value}")
        device = resolve_device(args.device)
    except UsageError as e:
        print(f"penalty_cost: error: {e}", file=sys.stderr)
        return 2
    d = QUICK if args.quick else FULL
    images = args.epoch_images or d["epoch_images"]
    rounds = args.epochs or d["epochs"]
    warmup_epochs = d["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs
    sizes = args.sizes or list(d["sizes"])
    repeats = args.repeats or d["update_repeats"]
    warmup = d["update_warmup"] if args.warmup is None else args.warmup
    batch = args.batch_size
    if args.epochs_on and images < batch:
        print(f"penalty_cost: error: --epoch-images {images} is less than one batch ({batch})", file=sys.stderr)
        return 2
    selected = None if args.peers is None else {s.strip() for s in args.peers.split(",") if s.strip()}
    known = {i.name for i in implementations() if i.kind == "peer"}
    if selected and selected - known:
        print(f"penalty_cost: error: --peers: unknown {', '.join(sorted(selected - known))} "
              f"(expected some of {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    out_path = Path(args.json) if args.json else common.default_results_path(
        f"penalty_cost_{device}" + ("_quick" if args.quick else ""))
    if device == "cuda":
        import cupy as xp
    else:
        xp = np

    meta, notes = common.start("penalty_cost", device, args.quick,
                               quick_note="a smoke run with few samples on a small epoch, not a measurement")

    # ---- item 1: epochs (first: nothing else has started thread pools yet)
    methods = list(METHODS)
    samples = {}
    if args.epochs_on:
        steps = math.ceil(images / batch)
        print(f"epochs: {len(methods) * len(REGS)} cases (methods {', '.join(methods)} x {', '.join(REGS)}), "
              f"{images} synthetic images = {steps} steps of {batch}, {warmup_epochs} warm-up + {rounds} timed "
              f"epochs each, round-robin ...", flush=True)
        samples = run_epochs(device, images, batch, rounds, warmup_epochs, methods)
    overhead = share = noise = None
    aa = {}
    if samples:
        overhead, share, noise = penalty_overhead(samples, methods)
        aa = aa_none(samples, methods)

    # ---- roofline and peers
    print("roofline: measuring copy bandwidth ...", flush=True)
    bw = common.measure_copy_bandwidth(device, repeats=3 if args.quick else 5)
    print(f"  copy bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['method']})")
    if device == "cpu":
        notes.append("the CPU copy bandwidth is one NumPy thread's; multithreaded updates (pyregnet's OpenMP, "
                     "numba parallel, PyTorch) can exceed 100% of it")
        try:
            import torch
            torch.set_num_threads(os.cpu_count())
        except ImportError:
            pass
    rows, impl_report = [], {}
    if args.update_on:
        print(f"implementations: availability and correctness against pyregnet.reference.adam_update "
              f"(tolerance {CHECK_ATOL:g} + {CHECK_RTOL:g}·|ref|, λ1 = λ2 = {CHECK_LAMBDA['l1']:g}):", flush=True)
        impls, impl_report = prepare_impls(device, xp, selected)
        print(f"update sweep: sizes {', '.join(f'{n:,}' for n in sizes)}; {warmup} warm-up + {repeats} timed "
              f"updates per case; every parameter penalized; default λ per penalty ...", flush=True)
        rows = run_sweep(device, xp, impls, sizes, warmup, repeats, bw["bytes_per_s"])
    if device == "cuda" and any(update_bytes(n) * 4 / 7 <= 50 * 2**20 for n in sizes):
        notes.append("on the GPU the smallest sizes fit in L2 (50 MB on an H200): they can beat the DRAM copy "
                     "bandwidth and are launch-bound")

    targets = evaluate_targets(device, rows, overhead, noise)

    # ---- report
    if samples:
        print()
        print(f"epoch time (s), {images} images, median [p10-p90] of {rounds}; overhead vs the baseline "
              f"fused/none (medians) and per-round paired median [p10-p90]")
        print(f"{'method':8} {'reg':5} {'epoch s':24} {'overhead':>9} {'paired share':28}")
        base_med = common.stats(samples[BASELINE])["median"]
        for (method, reg), ts in samples.items():
            s = common.stats(ts)
            if reg == "none":
                over = s["median"] / base_med - 1.0
                paired = "(baseline)" if (method, reg) == BASELINE else "(A/A: the baseline's work)"
            else:
                over = overhead[method][reg]
                sh = share[method][reg]
                paired = f"{100 * sh['median']:+.2f}% [{100 * sh['p10']:+.2f}..{100 * sh['p90']:+.2f}]%"
            print(f"{method:8} {reg:5} {_fmt_s(s):24} {_pct(over):>9} {paired}")
        if aa:
            print("A/A: the none runs of " + ", ".join(f"{m} land {100 * f:+.2f}%" for m, f in aa.items()) +
                  " from the baseline with identical work: differences of that size are noise")
        print(f"noise: the baseline's epochs spread {100 * noise:.2f}% (p90-p10)/median; "
              f"{images / base_med:.0f} img/s -> {base_med * 50_000 / images:.1f} s per 50,000 images")
    if rows:
        print()
        print(f"update kernel, float32, every parameter penalized: median ms [p10-p90], GB/s of the 7·4·n bytes "
              f"that must move, % of the copy bandwidth ({bw['bytes_per_s'] / 1e9:.1f} GB/s)")
        print(f"{'n':>11} {'impl':20} {'reg':5} {'ms':26} {'GB/s':>7} {'%copy':>6} {'roof ms':>8}")
        for r in rows:
            print(f"{r['n']:>11,} {r['impl']:20} {r['reg']:5} {_fmt_s(r['stats_s'], 1e3):26} {r['gb_per_s']:7.1f} "
                  f"{100 * r['fraction_of_copy_bw']:5.1f}% {r['roofline_ms']:8.3f}")
        for name, e in impl_report.items():
            if not e["available"]:
                print(f"skipped {name}: {e['skipped']}")
    print()
    print("targets:")
    for t in targets:
        print(f"  [{t['device']}] {t['target']}: {t['verdict']} -- {t['detail']}")
    for note in notes:
        print(f"note: {note}")

    payload = {
        "benchmark": "penalty_cost",
        "device": device,
        "commit": meta["commit"],
        "date": meta["date"],
        "metadata": meta,
        "config": {"device": device, "quick": args.quick, "epoch_images": images if args.epochs_on else None,
                   "epochs": rounds, "warmup_epochs": warmup_epochs, "batch_size": batch, "sizes": sizes,
                   "update_repeats": repeats, "update_warmup": warmup, "dtype": np.dtype(DTYPE).name,
                   "hyper": HYPER, "lambda": {reg: dataclasses.asdict(Penalty.with_defaults(reg)) for reg in REGS},
                   "timer": "CUDA events" if device == "cuda" else "time.perf_counter"},
        "roofline": {"copy_bandwidth": bw, "bytes_per_s": bw["bytes_per_s"],
                     "bytes_per_update": "7 x itemsize x n (read w, g, m, v; write w, m, v)"},
        "epochs": {
            "images": images if args.epochs_on else None, "batch_size": batch,
            "steps_per_epoch": math.ceil(images / batch) if args.epochs_on else None,
            "rounds": rounds if args.epochs_on else 0, "warmup_epochs": warmup_epochs,
            "order": "round-robin: every case one epoch per round, the starting case rotating each round",
            "timed": "Run.train_epoch only (no evaluation)", "data": "synthetic random uint8 images and labels",
            "methods": methods,
            "baseline": "fused/none: the overhead of every method is measured against the fused method's none run",
            "baseline_noise": noise,
            "baseline_noise_definition": "(p90 - p10) / median of the fused/none epochs",
            "aa_none_vs_baseline": aa,
            "cases": [{"method": m, "reg": r, "samples_s": ts, "stats_s": common.stats(ts)}
                      for (m, r), ts in samples.items()],
        },
        "epoch_penalty_overhead": overhead,
        "epoch_penalty_share": share,
        "implementations": impl_report,
        "peers": {k: v for k, v in impl_report.items() if v["kind"] == "peer"},
        "update": {"dtype": np.dtype(DTYPE).name, "penalized": "all n parameters", "sizes": sizes,
                   "results": rows},
        "targets": targets,
        "notes": notes,
    }
    png = out_path.with_suffix(".png")
    payload["plot"], payload["plot_skipped"] = None, None
    if args.plot:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        why = plot(payload, png)
        if why:
            payload["plot_skipped"] = why
            print(f"plot: skipped: {why}")
        else:
            payload["plot"] = str(png)
            print(f"wrote {png}")
    common.write_json(out_path, payload)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
