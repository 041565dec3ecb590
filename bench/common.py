"""Shared benchmark helpers (docs/design.md §3, convention 9): where and on what a number was measured
(device, commit, date, versions), timing with warm-up (perf_counter on the CPU, CUDA events on
the GPU), the median and spread of the samples, the roofline denominators (measured copy
bandwidth and practical peak FLOP/s) and atomic JSON output under bench/results/.

bench/ scripts import this as `import common` (running `python bench/<script>.py` puts bench/ on
sys.path). Nothing here imports pyregnet, CuPy or PyTorch at module level.
"""

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


# ---------------------------------------------------------------- metadata

def cpu_description():
    """'<model name>, <n> cores' from /proc/cpuinfo (platform.processor() elsewhere)."""
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    extra = f" ({usable} usable)" if usable != cores else ""
    return f"{name}, {cores} cores{extra}"


def gpu_description():
    """The current CuPy device's name, memory and compute capability."""
    import cupy
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    mem = props.get("totalGlobalMem", 0) / 2**30
    return f"{name}, {mem:.0f} GiB, sm_{props.get('major', '?')}{props.get('minor', '?')}"


def git_commit(root=ROOT):
    """HEAD's hash, with '-dirty' when the working tree differs from it (untracked files count,
    benchmark results under bench/results/ do not). Outside a git checkout (the GPU machine gets
    a copy of the tree without .git) it is $PYREGNET_COMMIT, set by whoever sent the copy, or
    'unknown'."""
    if os.environ.get("PYREGNET_COMMIT"):
        return os.environ["PYREGNET_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line for line in status.splitlines() if not line[3:].startswith("bench/results/")]
    return head + ("-dirty" if changed else "")


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device):
    """Where, when and with what a benchmark ran. device: 'cpu' or 'cuda'."""
    try:
        import pyregnet
        build, where = pyregnet.build_info(), str(Path(pyregnet.__file__).parent)
    except ImportError as e:
        build, where = {"error": str(e)}, None
    if device == "cuda":
        try:
            description = gpu_description()
        except Exception as e:  # noqa: BLE001 -- a description, never a reason to fail the run
            description = f"CUDA GPU ({type(e).__name__}: {e})"
    else:
        description = cpu_description()
    cupy_version = _version("cupy") or next(
        (v for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x") if (v := _version(d))), None)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "device": device,
        "device_description": description,
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "cupy": cupy_version,
        "pyregnet": build,
        "pyregnet_path": where,
    }


def machine_busy(meta):
    """A warning line when the 1-minute load average exceeds the core count, else None."""
    load, cores = meta.get("load_average"), meta.get("cpu_count") or 1
    if load and load[0] > cores:
        return (f"WARNING: load average {load[0]:.1f} on {cores} cores: another job is running, "
                f"these timings are not representative")
    return None


def start(name, device, quick, log=print, quick_note="a smoke run with few samples, not a measurement"):
    """A benchmark's opening: (metadata, notes). Logs what runs where, and notes (and logs) a
    busy machine and a --quick run, which the results must carry."""
    meta = metadata(device)
    log(f"{name}: {meta['device_description']}; commit {meta['commit']}; {meta['date']}; "
        f"pyregnet from {meta['pyregnet_path']}")
    notes = []
    busy = machine_busy(meta)
    if busy:
        log(busy)
        notes.append(busy)
    if quick:
        notes.append("--quick: " + quick_note)
    return meta, notes


# ---------------------------------------------------------------- timing

class CudaEvents:
    """A pair of CUDA events on the current stream, from CuPy ('cupy') or PyTorch ('torch')."""

    def __init__(self, lib="cupy"):
        self.lib = lib
        if lib == "cupy":
            import cupy
            self._cupy = cupy
            self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()
        elif lib == "torch":
            import torch
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
        else:
            raise ValueError(f"lib: expected 'cupy' or 'torch' but got {lib!r}")

    def elapsed_s(self):
        self.end.synchronize()
        if self.lib == "cupy":
            return self._cupy.cuda.get_elapsed_time(self.start, self.end) / 1e3
        return self.start.elapsed_time(self.end) / 1e3


def timeit(fn, warmup, repeats, sync=None, events=None):
    """Seconds per call of fn, `repeats` samples after `warmup` untimed calls.

    CPU: time.perf_counter around the call (sync(), if given, is called before starting and
    before stopping the clock). GPU: events = 'cupy' or 'torch' times the call with CUDA
    events recorded on the current stream around it.
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1 but got {repeats}")
    for _ in range(warmup):
        fn()
    samples = []
    if events is not None:
        ev = CudaEvents(events)
        if sync is not None:
            sync()
        for _ in range(repeats):
            ev.start.record()
            fn()
            ev.end.record()
            samples.append(ev.elapsed_s())
        return samples
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - t0)
    return samples


def stats(samples):
    """median, p10, p90 (linear interpolation, NumPy's default), min, max, mean and n."""
    a = np.asarray(list(samples), dtype=np.float64)
    if a.size == 0:
        raise ValueError("samples: expected at least one sample but got none")
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "min": float(a.min()),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


# ---------------------------------------------------------------- roofline

def measure_copy_bandwidth(device, nbytes=256 * 2**20, repeats=5):
    """Practical memory bandwidth: a copy of an `nbytes` float32 array (NumPy on the CPU, CuPy on
    the GPU); bytes read + written divided by the best time of `repeats` copies after one warm-up.
    Returns {"bytes_per_s", "array_bytes", "method", "stats" (seconds per copy)}."""
    n = nbytes // 4
    if device == "cuda":
        import cupy
        src = cupy.ones(n, dtype=cupy.float32)
        dst = cupy.empty_like(src)
        samples = timeit(lambda: cupy.copyto(dst, src), warmup=1, repeats=repeats, events="cupy")
        method = "cupy.copyto float32, device to device"
    else:
        src = np.ones(n, dtype=np.float32)
        dst = np.empty_like(src)
        samples = timeit(lambda: np.copyto(dst, src), warmup=1, repeats=repeats)
        method = "numpy.copyto float32 (one thread)"
    s = stats(samples)
    return {"bytes_per_s": 2 * n * 4 / s["min"], "array_bytes": n * 4, "method": method, "stats": s}


def measure_peak_flops(device, n=None, repeats=3):
    """Practical peak: a float32 n x n matmul (NumPy/BLAS on all CPU cores; CuPy/cuBLAS on the
    GPU), 2 n^3 FLOPs divided by the best time of `repeats` after one warm-up.
    Returns {"flops_per_s", "n", "method", "stats" (seconds per matmul)}."""
    if device == "cuda":
        import cupy
        n = n or 8192
        a = cupy.random.random((n, n), dtype=cupy.float32)
        b = cupy.random.random((n, n), dtype=cupy.float32)
        samples = timeit(lambda: a @ b, warmup=1, repeats=repeats, events="cupy")
        method = f"cupy float32 matmul {n}x{n} (cuBLAS; TF32 only if CUPY_TF32=1)"
    else:
        n = n or 2048
        rng = np.random.default_rng(0)
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        out = np.empty_like(a)
        samples = timeit(lambda: np.matmul(a, b, out=out), warmup=1, repeats=repeats)
        method = f"numpy float32 matmul {n}x{n} (BLAS, all threads)"
    s = stats(samples)
    return {"flops_per_s": 2.0 * n ** 3 / s["min"], "n": n, "method": method, "stats": s}


def roofline_s(flops, nbytes, peak_flops_per_s, bytes_per_s):
    """The roofline lower bound on a time: max(FLOPs / peak, bytes that must move / bandwidth)."""
    return max((flops or 0) / peak_flops_per_s, (nbytes or 0) / bytes_per_s)


# ---------------------------------------------------------------- output

def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _finite(o):
    """NaN and infinities become None (JSON has neither)."""
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(path, payload):
    """Writes payload as indented JSON to path atomically, creating the folder. Returns the path."""
    from pyregnet.files import atomic_write  # the benchmark scripts have located pyregnet by now
    path = Path(path)
    text = json.dumps(_finite(payload), indent=2, default=_jsonable, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def default_results_path(name):
    return RESULTS_DIR / f"{name}.json"
