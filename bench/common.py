"""What every benchmark shares (docs/design.md §3, convention 9): where and on what a number was
measured, one sync and one timer, statistics and the roofline, one PASS/FAIL verdict, the common
options, atomic JSON under bench/results/. Nothing here imports pyregnet, CuPy or PyTorch at module
level: the GPU suite uses it before pyregnet is built.
"""

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import operator
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SEED = 0
GPU_SAMPLE_S = 2e-3   # a GPU timing sample spans at least this much work ...
GPU_MAX_REPS = 2000   # ... in at most this many calls


# ---------------------------------------------------------------- metadata

def cpu_description():
    """'<model name>, <n> cores' from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        name = None
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def gpu_description():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return f"{props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.0f} GiB, sm_{props['major']}{props['minor']}"


def git_commit(root=ROOT):
    """HEAD's hash, '-dirty' when files other than results (bench/results/, docs/results/) differ;
    $PYREGNET_COMMIT when set (the GPU machine's copy of the tree has no .git); else 'unknown' outside git."""
    if os.environ.get("PYREGNET_COMMIT"):
        return os.environ["PYREGNET_COMMIT"]
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30,
                                  check=True).stdout
        head, status = git("rev-parse", "HEAD").strip(), git("status", "--porcelain", "--untracked-files=all")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line for line in status.splitlines() if not line[3:].startswith(("bench/results/", "docs/results/"))]
    return head + ("-dirty" if changed else "")


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device):
    """Where, when and with what a benchmark ran. device: 'cpu' or 'cuda'."""
    import pyregnet
    description = gpu_description() if device == "cuda" else cpu_description()
    return {"device": device, "device_description": description, "cpu": cpu_description(),
            "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": version("torch"),
            "cupy": next((v for d in ("cupy", "cupy-cuda13x", "cupy-cuda12x") if (v := version(d))), None),
            "pyregnet": pyregnet.build_info(), "pyregnet_path": str(Path(pyregnet.__file__).parent)}


def start(name, device, quick):
    """A benchmark's opening: (metadata, notes), noting a busy machine and a --quick run."""
    meta = metadata(device)
    print(f"{name}: {meta['device_description']}; commit {meta['commit']}; {meta['date']}")
    load, cores = meta["load_average"][0], meta["cpu_count"]
    notes = [f"load average {load:.1f} on {cores} cores: another job is running, these timings are not "
             f"representative"] if load > cores else []
    notes += ["--quick: a smoke run with few samples, not a measurement"] if quick else []
    for note in notes:
        print(f"note: {note}")
    return meta, notes


# ---------------------------------------------------------------- devices and timing

def array_module(device):
    return importlib.import_module("cupy") if device == "cuda" else np


def sync(device):
    """Waits for all work on the device: every stream, CuPy's, PyTorch's and a graph's."""
    if device == "cuda":
        import cupy
        cupy.cuda.runtime.deviceSynchronize()


def timeit(fn, device, warmup=1, repeats=5, calls=1):
    """Seconds per call of fn: `repeats` samples of `calls` calls after `warmup` untimed ones;
    perf_counter on the CPU, CUDA events on the current stream (PyTorch's default one too) on the GPU."""
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1 but got {repeats}")
    for _ in range(warmup):
        fn()
    sync(device)
    if device == "cuda":
        import cupy
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for _ in range(repeats):
        t0 = start.record() if device == "cuda" else time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            end.record()
            end.synchronize()
        seconds = cupy.cuda.get_elapsed_time(start, end) / 1e3 if device == "cuda" else time.perf_counter() - t0
        samples.append(seconds / calls)
    return samples


def take_turns(cases, rounds, time_one, warmup=0, log=False):
    """{case: [time_one(case), one per round]} after `warmup` untimed rounds: every case once a
    round, each round starting one case later, so that none always runs first."""
    samples = {case: [] for case in cases}
    for r in range(-warmup, rounds):
        k = r % max(len(cases), 1)
        for case in cases[k:] + cases[:k]:
            t = time_one(case)
            if r >= 0:
                samples[case].append(t)
        if log and r >= 0:
            print(f"  round {r + 1}/{rounds} done", flush=True)
    return samples


def graph_time(fn, repeats):
    """(seconds per call, how): a launch's GPU time as a captured step runs it, without the host's
    launch overhead: `reps` calls (>= GPU_SAMPLE_S of work) captured by engine.Program, replays
    timed with CUDA events (eagerly, with the reason, if the capture fails)."""
    from pyregnet.engine import Program, capture_stream
    from pyregnet.launch import Launch
    one = timeit(fn, "cuda", 1, 1)[0]
    reps = int(min(GPU_MAX_REPS, max(1, math.ceil(GPU_SAMPLE_S / max(one, 1e-7)))))
    program = Program([Launch("timed", fn)] * reps, capture_stream(array_module("cuda")))
    try:
        program()   # eager: loads the kernels; the next call captures, then replays
        with program.stream:
            samples = timeit(program, "cuda", 1, repeats)
        return [s / reps for s in samples], f"CUDA graph of {reps} calls, replays timed with CUDA events"
    except Exception as e:  # noqa: BLE001 -- the eager time stands, with the reason
        sync("cuda")
        return timeit(fn, "cuda", 1, repeats, reps), f"eager ({reps} calls; capture failed: {type(e).__name__})"


def time_launches(launches, device, repeats, start):
    """([(seconds per call, how)] per launch of a step, [seconds per whole step] or None): on the CPU
    each launch inside the step, run `repeats` times after a warm-up, each from start(); on the GPU
    each launch alone (graph_time)."""
    if device == "cuda":
        start()
        return [graph_time(launch.fn, repeats) for launch in launches], None
    times, steps = [[] for _ in launches], []
    for _ in range(repeats + 1):
        start()
        t_step = time.perf_counter()
        for launch, samples in zip(launches, times):
            t0 = time.perf_counter()
            launch.fn()
            samples.append(time.perf_counter() - t0)
        steps.append(time.perf_counter() - t_step)
    return [(samples[1:], "perf_counter around the launch inside the step") for samples in times], steps[1:]


def pyregnet_engine(device, data, reg, batch, optimizer="adam", mode="fused", net="cnn", params=None):
    """The training step as the trainer builds it: an Engine over data (on the device), `net` (a key
    of engine.MODELS) at its initial weights or `params`, `optimizer` at its default learning rate,
    penalty `reg` (default λ) applied in `mode` (optim.UPDATE_MODES)."""
    from pyregnet import optim
    from pyregnet.engine import MODELS, Engine
    from pyregnet.regularizers import Penalty
    xp, net = array_module(device), MODELS[net]
    params = xp.array(net.init_params(SEED) if params is None else params, dtype=np.float32)
    return Engine(params, xp.zeros_like(params), optim.make(optimizer, params, optim.DEFAULT_LR[optimizer]),
                  Penalty.with_defaults(reg), data, batch_size=batch, seed=SEED, mode=mode, net=net)


def stats(samples):
    """median, p10, p90 (linear interpolation, NumPy's default), min, max, mean and n."""
    a = np.asarray(list(samples), dtype=np.float64)
    if a.size == 0:
        raise ValueError("samples: expected at least one sample but got none")
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "min": float(a.min()),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


def fmt(s, scale=1e3, digits=3):
    """'median [p10-p90]' of stats() (in ms by default)."""
    return f"{s['median'] * scale:.{digits}f} [{s['p10'] * scale:.{digits}f}-{s['p90'] * scale:.{digits}f}]"


def census(weights):
    """{"weights", "exact_zeros", "subnormal"} of float32 weights, read as bit patterns: in a
    flushing build ops.sparsity_count(w, 0) counts subnormals as zeros, which this must tell apart."""
    bits = np.ascontiguousarray(weights, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)
    return {"weights": int(bits.size), "exact_zeros": int(np.count_nonzero(bits == 0)),
            "subnormal": int(np.count_nonzero((bits > 0) & (bits < 0x00800000)))}


# ---------------------------------------------------------------- roofline

def roofline(device, quick=False):
    """The roofline's denominators, measured: copy bandwidth (a 256 MiB float32 copy, bytes read +
    written over the best time; one NumPy thread on the CPU) and the FP32 peak: a square matmul (2
    n^3 over the best time; BLAS on all cores, or cuBLAS), on the CPU fma_peak() if larger."""
    xp = array_module(device)
    src = xp.ones(64 * 2**20, dtype=np.float32)
    dst = xp.empty_like(src)
    copy = stats(timeit(lambda: xp.copyto(dst, src), device, 1, 3 if quick else 5))
    n = 8192 if device == "cuda" else (512 if quick else 2048)
    a = xp.asarray(np.random.default_rng(SEED).random((n, n), dtype=np.float32))
    out = xp.empty_like(a)
    mm = stats(timeit(lambda: xp.matmul(a, a, out=out), device, 1, 2 if quick else 5))
    mm = {"method": f"{xp.__name__} float32 matmul {n}x{n}", "stats_s": mm, "flops_per_s": 2.0 * n ** 3 / mm["min"]}
    fma = fma_peak(quick) if device == "cpu" else None
    peak = fma if fma and fma["flops_per_s"] > mm["flops_per_s"] else mm
    method = peak["method"] + (" (numba is not installed: no FMA loop)" if device == "cpu" and not fma else "")
    print(f"FP32 peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s: {method}; the matmul's {mm['flops_per_s'] / 1e9:.1f}")
    return {"bytes_per_s": 2 * src.nbytes / copy["min"], "peak_flops_per_s": peak["flops_per_s"], "peak_method": method,
            "copy": {"method": f"{xp.__name__}.copyto float32, {src.nbytes} bytes", "stats_s": copy},
            "matmul": mm, "fma": fma}


FMA_CHAIN = 16   # dependent FMAs per element and pass of fma_peak's loop


def fma_peak(quick=False, elements=1024):
    """FP32 FLOP/s of an FMA-throughput loop on all cores (numba, a row per thread, 2 FLOPs per FMA),
    best of the samples; None without numba. Each row (in L1) holds four interleaved chains of
    FMA_CHAIN dependent x = x*m + c: vectorized, with enough FMAs in flight for latency x pipes (Zen
    3: 4 x 2); fastmath 'contract' only, so no chain is folded. `register` (ymm or zmm) is read from
    the asm: LLVM keeps 256-bit vectors on most AVX-512 CPUs, where the matmul gives the peak."""
    try:
        import numba
    except ImportError:
        return None
    chains, on_all_cores = fma_kernels(numba)
    x, reps = np.ones((numba.get_num_threads(), elements), np.float32), 4000 if quick else 60000
    s = stats(timeit(lambda: on_all_cores(x, reps, np.float32(0.999), np.float32(0.001)), "cpu", 1, 5 if quick else 20))
    fmas = [w[-1] for w in map(str.split, chains.inspect_asm(chains.signatures[0]).splitlines())
            if w and w[0].startswith("vfmadd") and w[0].endswith("ps")]
    return {"method": f"numba FMA loop, {len(x)} threads x {elements} floats x {FMA_CHAIN} FMAs x {reps}", "stats_s": s,
            "flops_per_s": 2 * FMA_CHAIN * x.size * reps / s["min"], "packed_fmas_in_asm": len(fmas),
            "register": fmas[0][1:4] if fmas else None}


def fma_kernels(numba):
    """fma_peak's loop: (one row, every row of x in parallel)."""
    @numba.njit(fastmath={"contract"})
    def chains(x, reps, m, c):
        h = x.shape[0] // 4
        for _ in range(reps):
            for j in range(h):
                a, b, d, e = x[j], x[j + h], x[j + 2 * h], x[j + 3 * h]
                for _ in range(FMA_CHAIN):
                    a, b, d, e = a * m + c, b * m + c, d * m + c, e * m + c
                x[j], x[j + h], x[j + 2 * h], x[j + 3 * h] = a, b, d, e

    @numba.njit(parallel=True)
    def on_all_cores(x, reps, m, c):
        for t in numba.prange(x.shape[0]):
            chains(x[t], reps, m, c)
    return chains, on_all_cores


def roofline_row(name, samples, flops, nbytes, roof, **extra):
    """One timed kernel beside its roofline: max(FLOPs / peak, bytes that must move / bandwidth)."""
    s = stats(samples)
    t = s["median"]
    bound = max((flops or 0) / roof["peak_flops_per_s"], (nbytes or 0) / roof["bytes_per_s"])
    return {"op": name, **extra, "ms": t * 1e3, "samples_s": list(samples), "stats_s": s, "flops": flops, "bytes": nbytes,
            "gflops_per_s": flops / t / 1e9 if flops else None, "gb_per_s": nbytes / t / 1e9,
            "fraction_of_copy_bw": nbytes / t / roof["bytes_per_s"], "roofline_ms": bound * 1e3,
            "pct_of_roofline": 100 * bound / t if t > 0 else None}


# ---------------------------------------------------------------- verdicts

def target(key, what, value, threshold, op, device, applies_to, detail="", noise=None):
    """value `op` threshold ('<=', '<', '>=', '>'; value None: n/a), counting (`applies`) only on the
    device it is set for; with `noise` (a '<=' target) a value above but within it passes."""
    ops = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
    if op not in ops:
        raise ValueError(f"op: expected one of {', '.join(ops)} but got {op!r}")
    ok = None if value is None else ops[op](value, threshold)
    verdict = "n/a" if ok is None else "PASS" if ok else "FAIL"
    if ok is False and noise is not None and value <= noise:
        ok, verdict = True, "PASS (within noise)"
    return {"key": key, "target": what, "value": value, "threshold": threshold, "op": op, "pass": ok,
            "verdict": verdict, "applies": device == applies_to, "device": device, "detail": detail}


def finish(name, meta, notes, targets, payload, path, check=False, tag=""):
    """A benchmark's ending: prints its targets and notes, writes its JSON (to `path`, or
    bench/results/<name>_<device><tag>[_quick].json); exit status 1 with --check when a target for
    this device fails."""
    print()
    for t in targets:
        scope = "" if t["applies"] else "  (informational: a target for the other device)"
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"{t['verdict']}: {t['target']} [{meta['device_description']}]: {value} ({t['detail']}){scope}")
    for note in notes:
        print(f"note: {note}")
    quick = "_quick" if payload["config"]["quick"] else ""
    write_json(path or RESULTS_DIR / f"{name}_{meta['device']}{tag}{quick}.json",
               {"benchmark": name, "metadata": meta, **payload, "targets": targets, "notes": notes})
    return 1 if check and any(t["applies"] and t["pass"] is False for t in targets) else 0


# ---------------------------------------------------------------- command line and output

def parser(prog, doc, out="--json"):
    """The benchmarks' options --device, --batch-size, --quick, --check and the output path (`out`);
    a bad one raises pyregnet.options.UsageError (usage_exit: one line, exit 2)."""
    from pyregnet.options import DEVICES, Parser, positive_int
    p = Parser(prog=f"python bench/{prog}.py", description=doc.split("\n\n")[0])
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--quick", action="store_true", help="few samples: a smoke run, not a measurement")
    p.add_argument("--check", action="store_true", help="exit 1 when a target for this device fails")
    p.add_argument(out, metavar="PATH", help=f"output (default bench/results/{prog}_<device>[_quick].json)")
    return p


def parse(p, argv, full, quick):
    """(args, device): the options left unset take the full run's default, or --quick's; the device
    resolved as the trainer resolves --device."""
    from pyregnet.train import resolve_device
    args = p.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args, resolve_device(args.device)


def names(choices):
    """An argparse type: a comma-separated, non-empty subset of `choices`, as a list."""
    def parse(text):
        got = [s.strip() for s in text.split(",") if s.strip()]
        if not got or set(got) - set(choices):
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)} but got {text!r}")
        return got
    return parse


def usage_exit(name, error):  # the one line
    print(f"{name}: error: {error}", file=sys.stderr)
    return 2


def _plain(o):
    """NumPy scalars and arrays as Python, NaN and infinities as None (JSON has neither)."""
    if isinstance(o, (np.generic, np.ndarray)):
        o = o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o


def write_json(path, payload, log=True):
    """payload as indented JSON at path, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(_plain(payload), indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)
    if log:
        print(f"wrote {path}")
    return path
