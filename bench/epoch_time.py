"""Epoch time, side by side in one run: pyregnet (CUDA graph and eager) against PyTorch (eager and
torch.compile), with the conv layers against cuDNN, the fused update against the copy bandwidth
and every kernel of a training step against its roofline.

    python bench/epoch_time.py [--device auto|cuda|cpu] [--data PATH | --dataset synthetic|cifar10]
                               [--train-size N] [--val-size N] [--epochs N] [--warmup N] [--reg KIND]
                               [--contenders LIST] [--compile | --no-compile] [--compile-mode MODE]
                               [--compile-variants LIST] [--torch-penalty loss|foreach] [--torch-tf32]
                               [--repeats N] [--op-timing graph|eager] [--update-sizes LIST] [--no-epochs] [--no-conv]
                               [--no-update] [--no-kernels] [--quick] [--out PATH] [--check]

1. Epoch time. One epoch = one pass over the training images (50,000 by default), batch 64,
   augmentation on (random +-3 px shifts with nearest-edge fill and random horizontal flips), with
   the weight penalty of --reg (default l1l2, the default lambda of pyregnet.regularizers), then
   the evaluation of the validation images (10,000; batches of 1,000, no augmentation).
   Contenders:
     pyregnet-graph  pyregnet.train.Run(Config(graph=True)): the step captured as one CUDA graph
                     and replayed (GPU only); time of run.train_epoch() + run.evaluate().
     pyregnet-eager  the same with Config(graph=False): the same kernels launched one by one.
     torch-eager     PyTorch's strongest eager setup for the same network and initial weights
                     (step_time.TorchStep's): cuDNN with cudnn.benchmark, Adam(fused=True, eps=1e-7)
                     (foreach where fused is unsupported), the uint8 data set on the device, each
                     batch gathered through a per-epoch permutation and augmented on the device by
                     one gather through a precomputed (shift, flip) -> pixel table, labels on the
                     device, loss and accuracy summed on the device and read once per epoch, the
                     penalty on the kernels (not the biases) added to the loss (--torch-penalty).
     torch-compile   the same step under torch.compile(mode=--compile-mode, default max-autotune,
                     dynamic=False), compiled as --compile-variants says, the first variant that
                     runs is kept: full (default first) = one compiled function augmentation ->
                     forward -> loss (+ penalty) -> backward -> optimizer step with backward()
                     traced into the forward's graph (torch._dynamo.config.trace_autograd_ops);
                     torch.optim breaks the graph around optimizer.step on purpose and dynamo never
                     traces fused optimizers, so the fused Adam kernel runs as PyTorch's own; step =
                     the same function with dynamo splitting it at backward() (AOTAutograd compiles
                     the backward graph); forward = augmentation + forward + loss only. The
                     evaluation forward is compiled too. What was compiled, dynamo's graph-break
                     and cudagraph-skip counts, and why a variant failed go to the JSON.
                     Compilation happens in warm-up epochs (at least one), never in timed ones; its
                     cost (first calls, first epoch) is reported separately.
   The contenders take turns epoch by epoch (the first one rotating each round); each epoch is
   timed with time.perf_counter between device synchronizations (train, then eval). Reported:
   median train, eval and total time with p10-p90 and min-max, images/s, and the ratios.
2. The two conv layers at batch 64 (conv1: x (64,3,32,32), w (32,3,3,3); conv2: x (64,32,15,15),
   w (64,32,3,3); valid padding): pyregnet.ops.conv2d_forward / conv2d_backward against PyTorch's
   conv2d and aten.convolution_backward (cuDNN, float32, TF32 off, cudnn.benchmark on; oneDNN on
   the CPU). GFLOP/s counts 2 N K P Q C R S per pass (forward = 1 pass, backward dX + dW = 2,
   conv1's dW alone, as training runs it, = 1).
3. The fused penalty + Adam update (ops.adam_update, step 1, the --reg lambda, the penalty on all
   but the last 234 elements as in the model) at the model's 315,722 parameters, 16M and 64M,
   against the measured copy bandwidth (a 256 MiB copy: 2 x bytes / time); bytes moved = 7 x 4 x n.
4. Every kernel of one training step at the paper's shapes (step_time.op_breakdown: its FLOP and
   byte model), beside its roofline: max(bytes that must move / copy bandwidth, FLOPs / measured
   FP32 peak).
GPU ops (sections 2-4): the median of --repeats samples of many consecutive calls (CuPy's CUDA
events for pyregnet, PyTorch's for PyTorch). By default (--op-timing graph) the calls are captured
as one CUDA graph (CuPy stream capture; torch.cuda.graph) and its replays timed: the device's time
per call, as in a captured training step, not the host's launch overhead, which at these sizes can
exceed the kernels'. Beside it, the eager time per call (launched from Python) and the host's
share of it. Ops that return a host value (the loss, the penalty) cannot be captured and keep the
eager time; so does an op whose capture fails (the reason is in the JSON).

Targets (the issue, for the H200): the pyregnet-graph epoch (train + eval, scaled to 50,000 +
10,000 images when run on fewer) takes <= 0.2 s; it is >= 3x faster than torch-eager and faster
than torch-compile; each conv pass reaches >= 0.5 of cuDNN's throughput; the update moves >= 90%
of the copy bandwidth at >= 16M parameters. They are printed as PASS/FAIL lines with the device;
on the CPU they are computed for information only (they are GPU targets).

On the CPU everything is timed with perf_counter; pyregnet runs Config(graph=False), PyTorch eager
on the CPU, torch.compile only with --compile (slow to compile there). Without PyTorch the PyTorch
parts are skipped with the reason. Progress goes to stderr, the report to stdout, the JSON (with
device, commit and date) to --out (default bench/results/epoch_time_<device>.json, _quick.json
with --quick). A contender that fails is reported as failed and the others still run; a section
that fails is recorded under "errors" in the JSON and the exit status is 3 (after writing it);
bad arguments or data exit 2; --check exits 1 when a target that applies to this device fails.
"""

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # imported by the tests rather than run as `python bench/epoch_time.py`
    sys.path.insert(0, str(HERE))
import common  # noqa: E402
import step_time as st  # noqa: E402  -- locates pyregnet; its torch network, FLOP and byte model
import penalty_cost as pc  # noqa: E402  -- the update's byte model and its 90%-at-16M target

from pyregnet import data as datasets  # noqa: E402
from pyregnet import model, ops  # noqa: E402
from pyregnet.regularizers import KINDS, Penalty  # noqa: E402
from pyregnet.engine import MAX_SHIFT  # noqa: E402
from pyregnet.train import EVAL_BATCH, Config, Run, UsageError, resolve_device  # noqa: E402

TRAIN_IMAGES = 50_000          # the epoch of the issue: CIFAR-10's training set ...
VAL_IMAGES = 10_000            # ... and its test set, evaluated
BATCH = 64
SEED = 0
N_BIASES = model.N_PARAMS - model.N_KERNEL   # 234: the unpenalized tail of the flat buffer

EPOCH_TARGET_S = 0.2           # pyregnet-graph epoch (train + eval) <= 0.2 s
EAGER_SPEEDUP_TARGET = 3.0     # >= 3x faster than PyTorch eager
COMPILE_SPEEDUP_TARGET = 1.0   # faster than torch.compile (max-autotune)
CONV_TARGET = 0.5              # each conv pass >= 0.5 of cuDNN's throughput
UPDATE_TARGET = pc.GPU_BW_FRACTION   # the update >= 90% of the copy bandwidth ...
UPDATE_MIN_N = pc.GPU_BW_MIN_SIZE    # ... at >= 16M parameters
TARGET_DEVICE = "cuda"         # the targets are the H200's; on the CPU they are informational

CONTENDERS = ("pyregnet-graph", "pyregnet-eager", "torch-eager", "torch-compile")
HEADLINE = ("pyregnet-graph", "pyregnet-eager")   # the pyregnet number the ratios use: the first that ran
COMPILE_VARIANTS = ("full", "step", "forward")   # tried in this order

FULL = dict(epochs=5, warmup=1, repeats=20, op_warmup=3,
            update_sizes=(model.N_PARAMS, 16 * 2**20, 64 * 2**20))
QUICK = dict(epochs=1, warmup=0, repeats=3, op_warmup=1, update_sizes=(model.N_PARAMS, 2**20))
GPU_MIN_SAMPLE_S = 2e-3        # each GPU timing sample spans at least this much work ...
GPU_MAX_REPS = 2000            # ... but at most this many calls


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Skip(Exception):
    """A contender or section that cannot run here; the message says why."""


# ---------------------------------------------------------------- arithmetic and verdicts (pure)

def conv_layers(batch=BATCH):
    """The model's conv layers with their shapes (step_time.layer_shapes: N C H W K R S P Q, macs)."""
    return [layer for layer in st.layer_shapes(batch) if layer["kind"] == "conv"]


def conv_pass_flops(layer):
    """FLOPs of one pass of a conv layer (forward, its input gradient, or its weight gradient):
    2 N K P Q C R S."""
    return 2 * layer["N"] * layer["K"] * layer["P"] * layer["Q"] * layer["C"] * layer["R"] * layer["S"]


def scaled_epoch_s(train_s, eval_s, n_train, n_val):
    """An epoch's time scaled to the issue's 50,000 training + 10,000 evaluated images (both parts
    scale linearly in the number of batches; exact when run on the full sizes)."""
    return train_s * TRAIN_IMAGES / n_train + eval_s * VAL_IMAGES / n_val


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def make_target(key, what, value, threshold, op, device, detail="", applies_to=TARGET_DEVICE):
    """One target: value `op` threshold with op '<=', '>=' or '>'; value None = not measured (n/a).
    `applies` says whether it counts on this device (the issue's targets are the GPU's)."""
    if value is None:
        ok = None
    elif op == "<=":
        ok = value <= threshold
    elif op == ">=":
        ok = value >= threshold
    elif op == ">":
        ok = value > threshold
    else:
        raise ValueError(f"op: expected '<=', '>=' or '>' but got {op!r}")
    return {"key": key, "target": what, "value": value, "threshold": threshold, "op": op, "pass": ok,
            "verdict": verdict(ok), "applies": device == applies_to, "device": device, "detail": detail}


def epoch_summary(samples, n_train, n_val):
    """Statistics of the timed epochs of one contender: samples = {"train_s": [...], "eval_s": [...]}
    (one entry per epoch)."""
    train, evals = list(samples["train_s"]), list(samples["eval_s"])
    total = [a + b for a, b in zip(train, evals)]
    s = {"train_s": common.stats(train), "eval_s": common.stats(evals), "total_s": common.stats(total)}
    med = {k: v["median"] for k, v in s.items()}
    return {"stats": s, "median_s": med,
            "spread_s": s["total_s"]["p90"] - s["total_s"]["p10"],
            "images_per_s": {"train": n_train / med["train_s"], "eval": n_val / med["eval_s"],
                             "total": (n_train + n_val) / med["total_s"]},
            "scaled_total_s": scaled_epoch_s(med["train_s"], med["eval_s"], n_train, n_val)}


def headline(summaries):
    """The pyregnet contender the ratios are taken against: pyregnet-graph if it ran, else eager."""
    return next((name for name in HEADLINE if summaries.get(name)), None)


def epoch_ratios(summaries):
    """{other: other's median total / the headline's}: how many times faster pyregnet is."""
    mine = headline(summaries)
    if mine is None:
        return None, {}
    t = summaries[mine]["median_s"]["total_s"]
    return mine, {name: s["median_s"]["total_s"] / t for name, s in summaries.items() if s and name != mine}


def epoch_targets(summaries, device, n_train, n_val, compile_mode="max-autotune"):
    """The issue's three epoch targets, from {contender: epoch_summary or None}."""
    mine, ratios = epoch_ratios(summaries)
    scaled = n_train != TRAIN_IMAGES or n_val != VAL_IMAGES
    targets = []
    graph_note = "" if mine == "pyregnet-graph" else \
        f" (measured on {mine}: pyregnet-graph did not run)" if mine else " (no pyregnet contender ran)"
    if mine:
        value = summaries[mine]["scaled_total_s"]
        detail = (f"{mine} train + eval {value:.3f} s" +
                  (f", scaled from {n_train:,} + {n_val:,} images" if scaled else "") + graph_note)
    else:
        value, detail = None, "no pyregnet contender ran"
    targets.append(make_target("epoch_time", f"pyregnet-graph epoch (train {TRAIN_IMAGES:,} + eval {VAL_IMAGES:,}) "
                               f"<= {EPOCH_TARGET_S:g} s", value, EPOCH_TARGET_S, "<=", device, detail))
    for key, other, threshold, op, what in (
            ("vs_torch_eager", "torch-eager", EAGER_SPEEDUP_TARGET, ">=",
             f">= {EAGER_SPEEDUP_TARGET:g}x faster than PyTorch eager"),
            ("vs_torch_compile", "torch-compile", COMPILE_SPEEDUP_TARGET, ">",
             f"faster than torch.compile ({compile_mode})")):
        ratio = ratios.get(other)
        detail = (f"{other} {summaries[other]['median_s']['total_s']:.3f} s / {mine} "
                  f"{summaries[mine]['median_s']['total_s']:.3f} s = {ratio:.2f}x{graph_note}"
                  if ratio is not None else f"{other} did not run" if mine else "no pyregnet contender ran")
        targets.append(make_target(key, f"pyregnet-graph {what}", ratio, threshold, op, device, detail))
    return targets


# ---------------------------------------------------------------- timing

def make_sync(device):
    """Waits for all work on the device (every stream: CuPy's, PyTorch's, a graph's)."""
    if device != "cuda":
        return lambda: None
    import cupy
    return cupy.cuda.runtime.deviceSynchronize


def returns_host_value(out):
    """Whether an op's result holds a Python number (the op synchronized to read it back: it cannot
    be captured into a CUDA graph)."""
    if isinstance(out, (tuple, list)):
        return any(returns_host_value(o) for o in out)
    return isinstance(out, (bool, int, float))


class OpTimer:
    """timer(fn) -> seconds per call, one sample per repeat; what each call measured is appended
    to .runs ({"reps", "method", "host_s", "eager_s", "capture_error"}).

    GPU: after `warmup` calls, `reps` consecutive calls (reps chosen so that they span
    >= GPU_MIN_SAMPLE_S) are timed with CUDA events (CuPy's or PyTorch's, on that library's current
    stream), and the host's time per call over them is kept: this eager time includes launch gaps
    when the host is slower than the kernels. Then (capture=True, the default) the same reps calls
    are captured as one CUDA graph (CuPy stream capture for pyregnet, torch.cuda.graph for PyTorch)
    and the graph's replays are timed: the device time per call, without the host. The samples
    returned are the graph's, or the eager ones when the op cannot be captured (it returns a host
    value, or the capture fails: the reason is kept).
    CPU: perf_counter around each call (common.timeit)."""

    def __init__(self, device, warmup, repeats, lib="cupy", capture=True):
        self.device, self.warmup, self.repeats, self.lib, self.capture = device, warmup, repeats, lib, capture
        self.runs = []

    def with_lib(self, lib):
        return OpTimer(self.device, self.warmup, self.repeats, lib, self.capture)

    def __call__(self, fn):
        if self.device != "cuda":
            samples = common.timeit(fn, warmup=self.warmup, repeats=self.repeats)
            self.runs.append({"reps": 1, "method": "perf_counter per call", "host_s": None, "eager_s": None,
                              "capture_error": None})
            return samples
        sync = make_sync("cuda")
        out = None
        for _ in range(max(self.warmup, 1)):
            out = fn()
        host_value = returns_host_value(out)
        del out
        ev = common.CudaEvents(self.lib)
        sync()
        ev.start.record()
        fn()
        ev.end.record()
        one = ev.elapsed_s()
        reps = int(min(GPU_MAX_REPS, max(1, math.ceil(GPU_MIN_SAMPLE_S / max(one, 1e-7)))))
        samples, host = [], []
        for _ in range(self.repeats):
            sync()
            h0 = time.perf_counter()
            ev.start.record()
            for _ in range(reps):
                fn()
            ev.end.record()
            host.append((time.perf_counter() - h0) / reps)
            samples.append(ev.elapsed_s() / reps)
        run = {"reps": reps, "method": "CUDA events around eager calls", "host_s": float(np.median(host)),
               "eager_s": float(np.median(samples)), "capture_error": None}
        if not self.capture:
            run["capture_error"] = "not captured: --op-timing eager"
        elif host_value:
            run["capture_error"] = "not captured: the op returns a host value (it synchronizes)"
        else:
            try:
                samples = (self._graph_torch if self.lib == "torch" else self._graph_cupy)(fn, reps)
                run["method"] = "CUDA graph of reps calls, replays timed with CUDA events"
            except Exception as e:  # noqa: BLE001 -- the eager samples stand
                run["capture_error"] = f"{type(e).__name__}: {e}"[:500]
            sync()
        self.runs.append(run)
        return samples

    def _graph_cupy(self, fn, reps):
        import cupy
        stream = cupy.cuda.Stream(non_blocking=False)   # capture needs a stream other than the legacy one
        with stream:
            fn()          # the pool caches this stream's blocks: the captured calls reuse them
            stream.synchronize()
            stream.begin_capture()
            try:
                for _ in range(reps):
                    fn()
            except BaseException:
                try:
                    stream.end_capture()
                except Exception:  # noqa: BLE001 -- the capture is invalid anyway
                    pass
                raise
            graph = stream.end_capture()
            graph.launch(stream=stream)
            stream.synchronize()
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            samples = []
            for _ in range(self.repeats):
                start.record(stream)
                graph.launch(stream=stream)
                end.record(stream)
                end.synchronize()
                samples.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / reps)
        return samples

    def _graph_torch(self, fn, reps):
        import torch
        side = torch.cuda.Stream()                 # warm-up on a side stream first, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(self.repeats):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / reps)
        del graph
        return samples


# ---------------------------------------------------------------- data

def load_dataset(args):
    """--data PATH or --dataset cifar10 through pyregnet.data.load; --dataset synthetic generated at
    the requested sizes (data.load's synthetic set has 5,000 + 1,000 images)."""
    if args.data is None and args.dataset == "synthetic":
        return datasets.synthetic(n_train=args.train_size or TRAIN_IMAGES, n_test=args.val_size or VAL_IMAGES,
                                  seed=SEED)
    return datasets.load(args.data, dataset=args.dataset, train_size=args.train_size, val_size=args.val_size,
                         seed=SEED)


# ---------------------------------------------------------------- PyTorch: augmentation

def shift_flip_table(h=32, w=32, max_shift=MAX_SHIFT):
    """(D, h*w) int64, D = (2s+1)^2 * 2: for each draw d = (dy, dx, flip) the source pixel of every
    output pixel, pyregnet's augmentation (reference.augment_batch): row clip(i - dy), column
    clip(j - dx), mirrored (w - 1 - column) when flip; pixels shifted in repeat the nearest edge."""
    span = 2 * max_shift + 1
    table = np.empty((span * span * 2, h * w), dtype=np.int64)
    for d in range(len(table)):
        dy, dx, flip = decode_draw(d, max_shift)
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        if flip:
            cols = w - 1 - cols
        table[d] = (rows[:, None] * w + cols[None, :]).ravel()
    return table


def decode_draw(d, max_shift=MAX_SHIFT):
    """Draw index -> (dy, dx, flip); uniform over d gives uniform shifts and a fair coin."""
    span = 2 * max_shift + 1
    return d % span - max_shift, (d // span) % span - max_shift, bool(d // (span * span))


def encode_draw(dy, dx, flip, max_shift=MAX_SHIFT):
    span = 2 * max_shift + 1
    return (dy + max_shift) + span * (dx + max_shift) + span * span * int(bool(flip))


def gather_augment(images_flat, index, draws, table, channels):
    """uint8 (B, C, H*W): sample b = images_flat[index[b]] (uint8 (N, C, H*W)) through the pixel map
    table[draws[b]]; one advanced-indexing gather, the same expression on NumPy and PyTorch arrays
    (`channels` = arange(C) of the array's kind)."""
    return images_flat[index[:, None, None], channels[None, :, None], table[draws][:, None, :]]


# ---------------------------------------------------------------- contenders

def pyregnet_config(device, pen, batch, seed, graph):
    """pyregnet.train.Config for a contender; graph: replay the captured step (Config.graph)."""
    return Config(reg=pen.kind, l1=pen.l1, l2=pen.l2, batch_size=batch, seed=seed, device=device, augment=True,
                  graph=graph)


class PyregnetContender:
    """pyregnet.train.Run: run.train_epoch() + run.evaluate(), as `python -m pyregnet.train` runs them."""

    min_warmup = 0

    def __init__(self, name, device, dataset, pen, batch, seed, graph):
        self.name = name
        self.config = pyregnet_config(device, pen, batch, seed, graph)
        self.min_warmup = 1 if graph else 0   # the capture happens in the first epoch
        self.run = Run(self.config, dataset)
        self.setup = {"config": dataclasses.asdict(self.config),
                      "graph": self.config.graph,
                      "what": "Run(Config(...)).train_epoch() + .evaluate()"}

    def train_epoch(self):
        data_loss, loss, acc = self.run.train_epoch()
        self.run.epoch += 1   # the next epoch gets its own order, as in training
        return {"train_loss": loss, "train_data_loss": data_loss, "train_acc": acc}

    def evaluate(self):
        loss, acc = self.run.evaluate()
        return {"val_data_loss": loss, "val_acc": acc}

    def close(self):
        self.run = None


def torch_adam_impl(torch, device):
    """'fused' where this PyTorch has a fused Adam for the device, else 'foreach'."""
    try:
        p = torch.nn.Parameter(torch.ones(4, device=device))
        opt = torch.optim.Adam([p], lr=1e-3, eps=1e-7, fused=True)
        p.sum().backward()
        opt.step()
        return "fused", None
    except Exception as e:  # noqa: BLE001 -- any refusal means: not available here
        return "foreach", f"fused Adam unavailable on {device} ({type(e).__name__}: {e})"


class TorchContender:
    """The same network, initial weights, data, augmentation, loss, penalty and optimizer in PyTorch,
    eager or compiled; see the module docstring."""

    def __init__(self, torch, name, device, dataset, pen, batch, seed, adam, penalty_mode="loss",
                 compile_mode=None, variant=None):
        self.torch, self.name, self.device, self.batch = torch, name, device, batch
        F = torch.nn.functional
        self.F = F
        dev = torch.device(device)
        self.dev = dev
        ts = st.TorchStep(torch, device, None, None, pen.kind, seed=seed, adam=adam)  # net, init, Adam
        self.net, self.kernels, self.opt, self.pen = ts.net, ts.kernels, ts.opt, pen
        self.penalty_mode = penalty_mode
        x = torch.from_numpy(dataset.x_train).to(dev)           # uint8 (N, H, W, C)
        n, h, w, c = x.shape
        self.x_train = x.permute(0, 3, 1, 2).contiguous().view(n, c, h * w)   # uint8 (N, C, H*W), once
        self.y_train = torch.from_numpy(dataset.y_train).to(dev)
        xv = torch.from_numpy(dataset.x_test).to(dev)
        self.x_val = xv.permute(0, 3, 1, 2).contiguous()          # uint8 (N, C, H, W)
        self.y_val = torch.from_numpy(dataset.y_test).to(dev)
        self.shape = (c, h, w)
        self.table = torch.from_numpy(shift_flip_table(h, w, MAX_SHIFT)).to(dev)
        self.channels = torch.arange(c, device=dev)
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(seed)
        self.compile_mode, self.variant = compile_mode, variant
        self.first_call_s = {}
        self.min_warmup = 1 if compile_mode else 0
        self.mark_step = (getattr(torch.compiler, "cudagraph_mark_step_begin", None)
                          if compile_mode and device == "cuda" else None)
        self.step_fn, self.eval_fn = self.step, self.eval_batch
        if compile_mode:
            kw = dict(mode=compile_mode, dynamic=False)
            if variant == "full":
                if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
                    raise RuntimeError(f"PyTorch {torch.__version__} cannot trace backward() "
                                       f"(no torch._dynamo.config.trace_autograd_ops)")
                torch._dynamo.config.trace_autograd_ops = True   # backward() inside the graph
                self.step_fn = torch.compile(self.step, **kw)
            elif variant == "step":
                self.step_fn = torch.compile(self.step, **kw)
            elif variant == "forward":
                fwd = torch.compile(self.forward_loss, **kw)
                self.step_fn = lambda idx, d: self.step(idx, d, forward=fwd)
            else:
                raise ValueError(f"variant: expected one of {COMPILE_VARIANTS} but got {variant!r}")
            self.eval_fn = torch.compile(self.eval_batch, **kw)
        self.setup = {
            "adam": f"torch.optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-7, {adam}=True)",
            "penalty": {"kind": pen.kind, "l1": pen.l1, "l2": pen.l2, "mode": penalty_mode},
            "cudnn_benchmark": bool(device == "cuda" and torch.backends.cudnn.benchmark),
            "tf32": tf32_state(torch) if device == "cuda" else None,
            "data": "uint8 (N, C, H*W) on the device; per-epoch randperm and augmentation draws on the device; "
                    "one gather per batch through a (shift, flip) -> pixel table, then x (1/255)",
            "compiled": COMPILED[variant] if compile_mode else None,
            "compile_mode": compile_mode,
        }

    # -- the step
    def augment(self, idx, draws):
        x = gather_augment(self.x_train, idx, draws, self.table, self.channels)
        return (x * (1.0 / 255.0)).view(len(idx), *self.shape)

    def penalty_loss(self):
        """The penalty as a term of the loss (autograd computes its gradient)."""
        pen, total = self.pen, 0.0
        if pen.l1:
            total = total + pen.l1 * sum(w.abs().sum() for w in self.kernels)
        if pen.l2:
            total = total + pen.l2 * sum(w.square().sum() for w in self.kernels)
        return total

    def penalty_value(self):
        """The penalty's value with multi-tensor norms, no autograd (--torch-penalty foreach)."""
        torch, pen, total = self.torch, self.pen, 0.0
        with torch.no_grad():
            if pen.l1:
                total = total + pen.l1 * torch.stack(torch._foreach_norm(self.kernels, 1)).sum()
            if pen.l2:
                total = total + pen.l2 * torch.stack(torch._foreach_norm(self.kernels, 2)).square().sum()
        return total

    def penalty_grad(self):
        """grad += l1 sign(w) + 2 l2 w on the kernels, multi-tensor (--torch-penalty foreach)."""
        torch, pen = self.torch, self.pen
        grads = [w.grad for w in self.kernels]
        with torch.no_grad():
            if pen.l1:
                torch._foreach_add_(grads, torch._foreach_sign(self.kernels), alpha=pen.l1)
            if pen.l2:
                torch._foreach_add_(grads, self.kernels, alpha=2 * pen.l2)

    def forward_loss(self, idx, draws):
        """Augment, forward, cross-entropy (+ penalty): (data loss, loss with the penalty, correct)."""
        x = self.augment(idx, draws)
        y = self.y_train[idx]
        logits = self.net(x)
        loss = self.F.cross_entropy(logits, y)
        if self.pen.kind == "none":
            total = loss
        elif self.penalty_mode == "loss":
            total = loss + self.penalty_loss()
        else:
            total = loss + self.penalty_value()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss, total, correct

    def step(self, idx, draws, forward=None):
        """forward_loss, backward, the optimizer step. The caller zeroes the gradients first
        (zero_grad(set_to_none=True) launches nothing; dynamo refuses to trace it)."""
        loss, total, correct = (forward or self.forward_loss)(idx, draws)
        # detached before backward: what outlives it (across the graph break dynamo puts around
        # every optimizer.step) must not need the autograd graph that backward consumes
        out = (loss.detach(), total.detach(), correct)
        total.backward()
        if self.penalty_mode == "foreach" and self.pen.kind != "none":
            self.penalty_grad()
        self.opt.step()
        return out

    def eval_batch(self, x, y):
        with self.torch.no_grad():
            logits = self.net(x * (1.0 / 255.0))
            return self.F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()

    def _call(self, key, fn, *args):
        if self.mark_step is not None:
            self.mark_step()
        if key in self.first_call_s:
            return fn(*args)
        sync = make_sync(self.device)
        sync()
        t0 = time.perf_counter()
        out = fn(*args)
        sync()
        self.first_call_s[key] = time.perf_counter() - t0   # the first call of each shape compiles
        return out

    # -- epochs
    def train_epoch(self):
        torch, n, b = self.torch, len(self.y_train), self.batch
        order = torch.randperm(n, device=self.dev, generator=self.gen)
        draws = torch.randint(0, len(self.table), (n,), device=self.dev, generator=self.gen)
        sums = torch.zeros(2, dtype=torch.float64, device=self.dev)
        correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        for start in range(0, n, b):
            size = min(b, n - start)
            self.opt.zero_grad(set_to_none=True)
            loss, total, hits = self._call(f"train{size}", self.step_fn, order[start:start + size],
                                           draws[start:start + size])
            sums[0].add_(loss, alpha=size)
            sums[1].add_(total, alpha=size)
            correct.add_(hits)
        data_loss, loss = sums.tolist()        # the epoch's one read
        return {"train_loss": loss / n, "train_data_loss": data_loss / n, "train_acc": int(correct) / n}

    def evaluate(self):
        torch, n = self.torch, len(self.y_val)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
        correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        for start in range(0, n, EVAL_BATCH):
            end = min(n, start + EVAL_BATCH)
            loss, hits = self._call(f"eval{end - start}", self.eval_fn, self.x_val[start:end], self.y_val[start:end])
            loss_sum.add_(loss)
            correct.add_(hits)
        return {"val_data_loss": float(loss_sum) / n, "val_acc": int(correct) / n}

    def close(self):
        self.net = self.opt = self.x_train = self.x_val = self.step_fn = self.eval_fn = None


COMPILED = {
    "full": "one torch.compile'd function: augmentation -> forward -> cross-entropy (+ penalty) -> backward -> "
            "optimizer step; forward and backward traced into one graph (torch._dynamo.config.trace_autograd_ops="
            "True turns backward() into autograd.grad inside it); torch.optim breaks the graph around every "
            "optimizer.step on purpose (pytorch#104053), so the step is a region of its own, where the fused "
            "Adam kernel runs as PyTorch's own (dynamo never traces fused optimizers); zero_grad(set_to_none=True) "
            "outside; the evaluation forward compiled separately",
    "step": "one torch.compile'd function: augmentation -> forward -> cross-entropy (+ penalty) -> backward -> "
            "optimizer step; dynamo splits it at backward() (AOTAutograd compiles the backward graph) and runs "
            "the fused Adam kernel as PyTorch's own (dynamo never traces fused optimizers); "
            "zero_grad(set_to_none=True) outside; the evaluation forward compiled separately",
    "forward": "augmentation -> forward -> cross-entropy (+ penalty) compiled (with its AOTAutograd backward); "
               "zero_grad, backward() and the optimizer step eager; the evaluation forward compiled separately",
}


def tf32_state(torch):
    return {"cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def set_tf32(torch, on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def reset_dynamo(torch):
    """Forget compiled code, counters and the 'full' variant's setting before the next variant."""
    try:
        torch._dynamo.reset()
        if hasattr(torch._dynamo.config, "trace_autograd_ops"):
            torch._dynamo.config.trace_autograd_ops = False
        from torch._dynamo.utils import counters
        counters.clear()
    except Exception:  # noqa: BLE001
        pass


def dynamo_counters(torch):
    """Graph and graph-break counts from dynamo (best effort: internal API)."""
    try:
        from torch._dynamo.utils import counters
        return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
                "graph_breaks": {str(k)[:200]: int(v) for k, v in counters["graph_break"].items()},
                "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------- section 1: epochs

TO_COMPILE = object()   # torch-compile's placeholder until a variant has compiled in warm-up


class Entry:
    """A contender's record in the epoch benchmark."""

    def __init__(self, name, description):
        self.name, self.description = name, description
        self.obj, self.skipped, self.error = None, None, None
        self.warmup_s, self.samples = [], {"train_s": [], "eval_s": []}
        self.metrics, self.extra = None, {}

    @property
    def alive(self):
        return self.obj is not None and self.error is None

    def fail(self, stage, e):
        self.error = f"{stage}: {type(e).__name__}: {e}"
        log(f"  {self.name}: FAILED in {stage}: {type(e).__name__}: {e}")
        if self.built:
            self.obj.close()
        self.obj = None

    @property
    def built(self):
        return self.obj is not None and self.obj is not TO_COMPILE


def timed_epoch(obj, sync):
    """(train seconds, eval seconds, metrics) of one epoch of a contender."""
    sync()
    t0 = time.perf_counter()
    m = obj.train_epoch()
    sync()
    t1 = time.perf_counter()
    m.update(obj.evaluate())
    sync()
    return t1 - t0, time.perf_counter() - t1, m


def warm_up(entry, epochs, sync):
    for i in range(epochs):
        t, e, m = timed_epoch(entry.obj, sync)
        entry.warmup_s.append({"train_s": t, "eval_s": e})
        entry.metrics = m
        log(f"  {entry.name}: warm-up epoch {i + 1}/{epochs}: train {t:.3f} s, eval {e:.3f} s")


DESCRIPTIONS = {
    "pyregnet-graph": "pyregnet.train.Run, Config(graph=True): the step captured as a CUDA graph and replayed",
    "pyregnet-eager": "pyregnet.train.Run, Config(graph=False): the same kernels launched eagerly",
    "torch-eager": "PyTorch eager, its strongest setup (see the module docstring)",
    "torch-compile": "the PyTorch step under torch.compile",
}


def build_contenders(args, device, dataset, pen, torch, torch_skip, notes):
    """Entries for every contender, each built or skipped with the reason."""
    entries = []
    wanted = set(args.contenders)
    adam, adam_note = (torch_adam_impl(torch, device) if torch is not None else (None, None))
    if adam_note:
        notes.append(f"PyTorch: {adam_note}; torch contenders use foreach Adam")
    for name in CONTENDERS:
        e = Entry(name, DESCRIPTIONS[name])
        entries.append(e)
        if name not in wanted:
            e.skipped = "not selected (--contenders)"
            continue
        try:
            if name == "pyregnet-graph" and device != "cuda":
                raise Skip("CUDA graphs need the GPU (on the CPU, pyregnet-eager is the pyregnet contender)")
            if name.startswith("torch") and torch is None:
                raise Skip(torch_skip)
            if name == "torch-compile" and not args.compile:
                raise Skip("torch.compile is off (default on the CPU: compiling is slow there; --compile runs it)")
            log(f"setting up {name} ...")
            if name.startswith("pyregnet"):
                e.obj = PyregnetContender(name, device, dataset, pen, args.batch_size, SEED, graph=name.endswith("graph"))
            elif name == "torch-eager":
                e.obj = TorchContender(torch, name, device, dataset, pen, args.batch_size, SEED, adam,
                                       penalty_mode=args.torch_penalty)
            else:
                e.extra["variant_attempts"] = {}
                e.obj = TO_COMPILE   # built in warm-up: the variants are tried in order
        except Skip as s:
            e.skipped = str(s)
            log(f"  {name}: skipped: {s}")
        except Exception as ex:  # noqa: BLE001 -- one contender's failure must not stop the others
            e.fail("setup", ex)
        if e.obj is not None and e.error is None:
            e.extra["adam"] = adam if name.startswith("torch") else None
    return entries, adam


def warm_up_compile(entry, args, device, dataset, pen, torch, adam, sync, warmup):
    """torch-compile: try the variants in order; the first whose warm-up epochs run is kept."""
    for variant in args.compile_variants:
        try:
            log(f"  torch-compile: compiling variant '{variant}' (mode {args.compile_mode}) ...")
            entry.obj = TorchContender(torch, entry.name, device, dataset, pen, args.batch_size, SEED, adam,
                                       penalty_mode=args.torch_penalty, compile_mode=args.compile_mode,
                                       variant=variant)
            entry.warmup_s = []
            warm_up(entry, warmup, sync)
            entry.extra["variant"] = variant
            entry.extra["variant_attempts"][variant] = "ok"
            entry.extra["first_call_s"] = dict(entry.obj.first_call_s)
            entry.extra["dynamo"] = dynamo_counters(torch)
            return
        except Exception as e:  # noqa: BLE001 -- try the next variant
            entry.extra["variant_attempts"][variant] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  torch-compile: variant '{variant}' failed: {type(e).__name__}: {str(e)[:500]}")
            if entry.built:
                entry.obj.close()
            entry.obj = None
            reset_dynamo(torch)
    entry.obj = TO_COMPILE
    entry.fail("compile", RuntimeError("every torch.compile variant failed: " + "; ".join(
        f"{k}: {v[:300]}" for k, v in entry.extra["variant_attempts"].items())))
    reset_dynamo(torch)


def run_epochs(args, device, dataset, pen, torch, torch_skip, notes):
    sync = make_sync(device)
    entries, adam = build_contenders(args, device, dataset, pen, torch, torch_skip, notes)
    for e in entries:
        if e.obj is None or e.error:
            continue
        warmup = max(args.warmup, 1 if e.name == "torch-compile" else e.obj.min_warmup)
        if warmup > args.warmup:
            notes.append(f"{e.name}: {warmup} warm-up epoch(s) (not {args.warmup}): its first epoch captures "
                         f"or compiles")
        try:
            log(f"warming up {e.name} ({warmup} epoch(s)) ...")
            if e.name == "torch-compile":
                warm_up_compile(e, args, device, dataset, pen, torch, adam, sync, warmup)
            else:
                warm_up(e, warmup, sync)
        except Exception as ex:  # noqa: BLE001
            e.fail("warm-up", ex)
    live = [e for e in entries if e.alive]
    log(f"timing {args.epochs} epoch(s) of {', '.join(e.name for e in live) or 'nothing'}, taking turns ...")
    for r in range(args.epochs):
        turn = [e for e in live[r % max(len(live), 1):] + live[:r % max(len(live), 1)] if e.alive]
        for e in turn:
            try:
                t, v, m = timed_epoch(e.obj, sync)
            except Exception as ex:  # noqa: BLE001
                e.fail(f"timed epoch {r + 1}", ex)
                continue
            e.samples["train_s"].append(t)
            e.samples["eval_s"].append(v)
            e.metrics = m
            log(f"  epoch {r + 1}/{args.epochs} {e.name}: train {t:.3f} s, eval {v:.3f} s, "
                f"train acc {m['train_acc']:.3f}, val acc {m['val_acc']:.3f}")
    n_train, n_val = len(dataset.y_train), len(dataset.y_test)
    summaries, records = {}, {}
    for e in entries:
        ok = e.error is None and e.skipped is None and len(e.samples["train_s"]) == args.epochs and args.epochs > 0
        summaries[e.name] = epoch_summary(e.samples, n_train, n_val) if ok else None
        rec = {"name": e.name, "description": e.description, "ran": ok, "skipped": e.skipped, "error": e.error,
               "samples": e.samples, "warmup_s": e.warmup_s, "metrics_last_epoch": e.metrics, **e.extra}
        if e.built:
            rec["setup"] = e.obj.setup
        if ok:
            rec.update(summaries[e.name])
            if e.warmup_s:
                first = e.warmup_s[0]["train_s"] + e.warmup_s[0]["eval_s"]
                rec["first_epoch_s"] = first
                # what the first (capturing / compiling / autotuning) epoch cost beyond a timed one
                rec["first_epoch_overhead_s"] = first - summaries[e.name]["median_s"]["total_s"]
        records[e.name] = rec
        if e.built:
            e.obj.close()
    return summaries, records


# ---------------------------------------------------------------- section 2: conv layers

def conv_section(device, xp, torch, timer, roof):
    """pyregnet's conv2d_forward / conv2d_backward against PyTorch's (cuDNN, TF32 off) per layer."""
    rows = []
    rng = np.random.default_rng(SEED)
    dev = torch.device(device) if torch is not None else None
    for layer in conv_layers():
        N, C, H, W, K, R, S, P, Q = (layer[k] for k in "N C H W K R S P Q".split())
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = (rng.standard_normal((K, C, R, S), dtype=np.float32) * np.float32(1 / math.sqrt(C * R * S)))
        b = rng.standard_normal(K, dtype=np.float32)
        dy = rng.standard_normal((N, K, P, Q), dtype=np.float32)
        xd, wd, bd, dyd = (xp.asarray(a) for a in (x, w, b, dy))
        t = (None if torch is None else [torch.from_numpy(a).to(dev) for a in (x, w, b, dy)])
        cases = [("forward", 1, lambda: ops.conv2d_forward(xd, wd, bd, 0), None),
                 ("backward dX+dW", 2, lambda: ops.conv2d_backward(xd, wd, dyd, 0), [True, True, True])]
        if layer["name"] == "conv1":  # training skips conv1's input gradient
            cases.append(("backward dW (as trained)", 1, lambda: ops.conv2d_backward(xd, wd, dyd, 0, input_grad=False),
                          [False, True, True]))
        for what, passes, mine, mask in cases:
            flops = passes * conv_pass_flops(layer)
            row = {"layer": layer["name"], "pass": what, "shape": {k: layer[k] for k in "N C H W K R S P Q".split()},
                   "flops": flops, "target": what != "backward dW (as trained)"}
            log(f"  {layer['name']} {what}: pyregnet ...")
            row["pyregnet"] = _conv_timing(timer, mine, flops)
            if torch is not None:
                tx, tw, tb, tdy = t
                if mask is None:
                    theirs = (lambda: torch.nn.functional.conv2d(tx, tw, tb))
                else:
                    theirs = (lambda m=mask: torch.ops.aten.convolution_backward(
                        tdy, tx, tw, [K], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, m))
                log(f"  {layer['name']} {what}: PyTorch ...")
                row["torch"] = _conv_timing(timer.with_lib("torch"), theirs, flops)
                row["ratio_to_torch"] = row["pyregnet"]["gflops_per_s"] / row["torch"]["gflops_per_s"]
                row["max_rel_err"] = _conv_error(torch, mine(), theirs(), mask)
            else:
                row["torch"] = row["ratio_to_torch"] = row["max_rel_err"] = None
            row["roofline_flop_ms"] = flops / roof["peak_flops_per_s"] * 1e3
            rows.append(row)
    return rows


def _run_fields(run):
    """What OpTimer recorded about one timed op, in the units of the report."""
    us = (lambda x: None if x is None else x * 1e6)
    return {"reps_per_sample": run["reps"], "method": run["method"], "host_us": us(run["host_s"]),
            "eager_us": us(run["eager_s"]), "capture_error": run["capture_error"]}


def _conv_timing(timer, fn, flops):
    samples = timer(fn)
    s = common.stats(samples)
    return {"ms": s["median"] * 1e3, "stats_s": s, "gflops_per_s": flops / s["median"] / 1e9,
            **_run_fields(timer.runs[-1])}


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _conv_error(torch, mine, theirs, mask):
    """max |pyregnet - PyTorch| / max |PyTorch| over the outputs both compute."""
    if mask is None:
        pairs = [(mine, theirs)]
    else:
        pairs = [(m, t) for m, t, on in zip(mine, theirs, mask) if on]
    worst = 0.0
    for m, t in pairs:
        ref = t.detach().cpu().numpy().astype(np.float64)
        got = _host(m).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30)))
    return worst


# ---------------------------------------------------------------- section 3: the update

def update_section(device, xp, sizes, pen, roof, timer):
    rows = []
    for n in sizes:
        log(f"  n = {n:,} ({pc.update_bytes(n) / 1e6:.0f} MB moved per update) ...")
        arrays = pc.sweep_arrays(xp, n)   # w, g, m, v
        penalized = max(0, n - N_BIASES)
        samples = timer(lambda: ops.adam_update(*arrays, step=1, lr=1e-3, l1=pen.l1, l2=pen.l2,
                                                penalized=penalized, with_penalty=False))
        row = pc.update_row("pyregnet adam_update", pen.kind, n, samples, roof["bytes_per_s"], False)
        row.update(penalized=penalized, pct_of_copy_bw=100 * row["fraction_of_copy_bw"], **_run_fields(timer.runs[-1]))
        rows.append(row)
        arrays = None
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()
    return rows


def update_target(rows, device):
    big = [r for r in rows if r["n"] >= UPDATE_MIN_N]
    if not big:
        return make_target("update_bandwidth", f"update >= {UPDATE_TARGET:.0%} of the copy bandwidth at >= 16M",
                           None, UPDATE_TARGET, ">=", device, "no size >= 16M measured (--update-sizes)")
    worst = min(big, key=lambda r: r["fraction_of_copy_bw"])
    return make_target("update_bandwidth", f"update >= {UPDATE_TARGET:.0%} of the copy bandwidth at >= 16M",
                       worst["fraction_of_copy_bw"], UPDATE_TARGET, ">=", device,
                       f"lowest {worst['fraction_of_copy_bw']:.1%} at n={worst['n']:,} ({worst['gb_per_s']:.0f} GB/s)")


def conv_targets(rows, device):
    out = []
    for r in rows:
        if not r["target"]:
            continue
        detail = ("PyTorch not run" if r["ratio_to_torch"] is None else
                  f"{r['pyregnet']['gflops_per_s']:.0f} vs {r['torch']['gflops_per_s']:.0f} GFLOP/s")
        peer = "cuDNN" if device == "cuda" else "PyTorch's (oneDNN)"
        out.append(make_target(f"conv_{r['layer']}_{r['pass'].split()[0]}",
                               f"{r['layer']} {r['pass']} >= {CONV_TARGET:g} of {peer} throughput",
                               r["ratio_to_torch"], CONV_TARGET, ">=", device, detail))
    return out


# ---------------------------------------------------------------- section 4: the kernels of a step

def kernel_section(xp, dataset, batch, timer, roof):
    rows = st.op_breakdown(xp, dataset.x_train, dataset.y_train, batch, timer, roof)
    if len(timer.runs) == len(rows):   # op_breakdown times each row once, in order
        for r, run in zip(rows, timer.runs):
            r.update(_run_fields(run))
    return rows


def kernel_sums(rows, steps):
    out = {}
    for reg in ("none", "l1l2"):
        sel = st.rows_for(rows, reg)
        ms = sum(r["ms"] for r in sel)
        roof = sum(r["roofline_ms"] for r in sel)
        out[reg] = {"ms_per_step": ms, "roofline_ms_per_step": roof, "pct_of_roofline": 100 * roof / ms if ms else None,
                    "epoch_s_kernels_alone": ms * steps / 1e3, "epoch_s_roofline": roof * steps / 1e3}
    return out


# ---------------------------------------------------------------- command line

def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text}")
    return value


def _nonnegative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 but got {text}")
    return value


def _variants(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(n not in COMPILE_VARIANTS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {','.join(COMPILE_VARIANTS)} but got {text!r}")
    return names


def _contenders(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in CONTENDERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(CONTENDERS)} but got {text!r}")
    return names


def parser():
    p = argparse.ArgumentParser(prog="python bench/epoch_time.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: the GPU when pyregnet's CUDA backend, a GPU and CuPy are all usable (default: auto)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH", default=None,
                     help="real CIFAR-10 at PATH (as python -m pyregnet.train --data: the official tarball, "
                          "cifar-10-batches-py/, an image-folder tree or its .tar.gz)")
    src.add_argument("--dataset", choices=("synthetic", "cifar10"), default="synthetic",
                     help="without --data: synthetic (generated at --train-size/--val-size, offline; the default: "
                          "timing does not depend on the pixels) or cifar10 (the cache, downloaded on first use)")
    p.add_argument("--train-size", type=_positive, default=None,
                   help=f"training images per epoch (default {TRAIN_IMAGES:,}: the whole split); targets scale to 50,000")
    p.add_argument("--val-size", type=_positive, default=None, help=f"evaluated images (default {VAL_IMAGES:,})")
    p.add_argument("--batch-size", type=_positive, default=BATCH, help=f"(default {BATCH})")
    p.add_argument("--reg", choices=KINDS, default="l1l2",
                   help="the weight penalty of every contender, default lambda (default: l1l2)")
    p.add_argument("--epochs", type=_positive, default=None,
                   help=f"timed epochs per contender (default {FULL['epochs']}, --quick {QUICK['epochs']})")
    p.add_argument("--warmup", type=_nonnegative, default=None,
                   help=f"untimed epochs first (default {FULL['warmup']}, --quick {QUICK['warmup']}; at least 1 "
                        f"for pyregnet-graph and torch-compile)")
    p.add_argument("--contenders", type=_contenders, default=list(CONTENDERS),
                   help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)")
    comp = p.add_mutually_exclusive_group()
    comp.add_argument("--compile", dest="compile", action="store_true", default=None,
                      help="run torch-compile (default on the GPU)")
    comp.add_argument("--no-compile", dest="compile", action="store_false",
                      help="skip torch-compile (default on the CPU)")
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode (default: max-autotune)")
    p.add_argument("--compile-variants", type=_variants, default=list(COMPILE_VARIANTS), metavar="LIST",
                   help="what torch-compile compiles, tried in this order until one runs (default full,step,forward): "
                        "full = the whole step as one graph, backward() traced; step = the same function, split at "
                        "backward() by dynamo; forward = augmentation + forward + loss only")
    p.add_argument("--torch-penalty", choices=("loss", "foreach"), default="loss",
                   help="PyTorch's penalty: loss = added to the loss, autograd differentiates it (default); "
                        "foreach = its value by _foreach_norm and its gradient added by _foreach ops after "
                        "backward (fewer launches)")
    p.add_argument("--torch-tf32", action="store_true",
                   help="let PyTorch use TF32 in the epoch contenders (default off: float32 like pyregnet; "
                        "the conv section always runs without TF32)")
    p.add_argument("--repeats", type=_positive, default=None,
                   help=f"timing samples per op in sections 2-4 (default {FULL['repeats']}, --quick {QUICK['repeats']})")
    p.add_argument("--op-timing", choices=("graph", "eager"), default="graph",
                   help="GPU ops in sections 2-4: graph = device time of a CUDA graph of repeated calls (the "
                        "eager time and the host's time per call are reported beside it); eager = CUDA events "
                        "around eagerly launched calls only (default: graph)")
    p.add_argument("--update-sizes", type=pc._sizes, default=None, metavar="LIST",
                   help="parameter counts of section 3 (default 315722,16M,64M; --quick 315722,1M)")
    p.add_argument("--no-epochs", dest="epochs_section", action="store_false", help="skip section 1")
    p.add_argument("--no-conv", dest="conv", action="store_false", help="skip section 2")
    p.add_argument("--no-update", dest="update", action="store_false", help="skip section 3")
    p.add_argument("--no-kernels", dest="kernels", action="store_false", help="skip section 4")
    p.add_argument("--quick", action="store_true", help="few epochs and samples: a smoke run, not a measurement")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="JSON output (default bench/results/epoch_time_<device>.json, _quick.json with --quick)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target that applies to this device fails")
    return p


def _fmt_stats(s, digits=3):
    return f"{s['median']:.{digits}f} [{s['p10']:.{digits}f}-{s['p90']:.{digits}f}]"


def _num(x, fmt):
    return "-" if x is None else format(x, fmt)


def report(payload):
    """The human-readable report (stdout)."""
    meta, cfg = payload["metadata"], payload["config"]
    dev = meta["device_description"]
    print(f"epoch_time: {dev}; commit {meta['commit']}; {meta['date']}")
    roof = payload["roofline"]
    print(f"roofline: copy bandwidth {roof['bytes_per_s'] / 1e9:.1f} GB/s ({roof['copy_bandwidth']['method']}); "
          f"peak {roof['peak_flops_per_s'] / 1e12:.2f} TFLOP/s ({roof['peak_flops']['method']})")
    ep = payload["epoch"]
    if ep is not None:
        print()
        print(f"1. epoch: {ep['train_images']:,} training images (batch {cfg['batch_size']}, augmentation on, "
              f"{ep['penalty']}) + {ep['val_images']:,} evaluated; {cfg['epochs']} timed epoch(s) after "
              f"{cfg['warmup']} warm-up; data: {ep['data_source']}")
        mine = ep["headline"]
        print(f"{'contender':15} {'total s median [p10-p90]':26} {'train s':>8} {'eval s':>8} {'train img/s':>12} "
              f"{'scaled s*':>9} {'vs ' + (mine or '-'):>18}")
        for name in CONTENDERS:
            r = ep["contenders"][name]
            if not r["ran"]:
                print(f"{name:15} {'skipped: ' + r['skipped'] if r['skipped'] else 'FAILED: ' + str(r['error'])}")
                continue
            ratio = ep["ratios"].get(name, 1.0 if name == mine else None)
            print(f"{name:15} {_fmt_stats(r['stats']['total_s']):26} {r['median_s']['train_s']:8.3f} "
                  f"{r['median_s']['eval_s']:8.3f} {r['images_per_s']['train']:12,.0f} {r['scaled_total_s']:9.3f} "
                  f"{_num(ratio, '.2f') + 'x':>18}")
        print(f"* scaled: train x {TRAIN_IMAGES:,}/{ep['train_images']:,} + eval x {VAL_IMAGES:,}/{ep['val_images']:,}; "
              f"ratio = the contender's median total / {mine}'s (> 1: pyregnet is faster)")
        for name in CONTENDERS:
            r = ep["contenders"][name]
            if r["ran"] and r.get("first_epoch_s") is not None:
                extra = ""
                if name == "torch-compile":
                    extra = (f"; compiled: variant '{r.get('variant')}'; first calls (compile) "
                             + ", ".join(f"{k} {v:.1f} s" for k, v in r.get("first_call_s", {}).items()))
                print(f"   {name}: first epoch {r['first_epoch_s']:.2f} s, {r['first_epoch_overhead_s']:+.2f} s "
                      f"over a timed one{extra}")
    if payload["conv"] is not None:
        print()
        print("2. conv layers, batch 64, float32 (PyTorch: cuDNN, TF32 off, cudnn.benchmark)" if cfg["device"] == "cuda"
              else "2. conv layers, batch 64, float32 (PyTorch on the CPU: oneDNN)")
        gpu = cfg["device"] == "cuda"
        print(f"{'layer pass':32} {'pyregnet ms':>11} {'GFLOP/s':>8} {'torch ms':>9} {'GFLOP/s':>8} {'ratio':>6} "
              f"{'rel err':>8}" + (f" {'eager us (pyregnet/torch)':>26}" if gpu else ""))
        for r in payload["conv"]:
            t, m = r["torch"], r["pyregnet"]
            eager = f"{_num(m.get('eager_us'), '.1f')}/{_num(t and t.get('eager_us'), '.1f')}"
            print(f"{r['layer'] + ' ' + r['pass']:32} {m['ms']:11.4f} {m['gflops_per_s']:8.0f} "
                  f"{_num(t and t['ms'], '9.4f'):>9} {_num(t and t['gflops_per_s'], '8.0f'):>8} "
                  f"{_num(r['ratio_to_torch'], '6.2f'):>6} {_num(r['max_rel_err'], '8.1e'):>8}"
                  + (f" {eager:>26}" if gpu else ""))
    if payload["update"] is not None:
        print()
        print(f"3. fused penalty + Adam update ({payload['config']['reg']}), bytes = 7 x 4 x n")
        print(f"{'n':>12} {'ms':>9} {'GB/s':>8} {'% copy bw':>9}")
        for r in payload["update"]:
            print(f"{r['n']:12,} {r['ms']:9.4f} {r['gb_per_s']:8.1f} {r['pct_of_copy_bw']:8.1f}%")
    if payload["kernels"] is not None:
        print()
        print("4. kernels of one training step (step_time.op_breakdown), each timed alone")
        gpu = cfg["device"] == "cuda"
        print(f"{'op':34} {'ms':>8} {'roof ms':>8} {'%roof':>6} {'GFLOP/s':>8} {'GB/s':>7}"
              + (f" {'eager us':>9} {'host us':>8}" if gpu else ""))
        for r in payload["kernels"]["rows"]:
            name = r["op"] + (" [l1l2]" if r["reg"] == "l1l2" else "")
            print(f"{name:34} {r['ms']:8.4f} {r['roofline_ms']:8.4f} {_num(r['pct_of_roofline'], '5.1f'):>5}% "
                  f"{_num(r['gflops_per_s'], '8.1f'):>8} {_num(r['gb_per_s'], '7.1f'):>7}"
                  + (f" {_num(r.get('eager_us'), '9.1f'):>9} {_num(r.get('host_us'), '8.1f'):>8}" if gpu else ""))
        for reg, s in payload["kernels"]["sums"].items():
            print(f"sum ({reg}): {s['ms_per_step']:.3f} ms/step ({s['pct_of_roofline']:.1f}% of roofline) -> "
                  f"{s['epoch_s_kernels_alone']:.3f} s per {payload['kernels']['steps_per_epoch']}-step epoch, "
                  f"roofline {s['epoch_s_roofline']:.3f} s")
    print()
    for t in payload["targets"]:
        scope = "" if t["applies"] else f"  (informational: a {TARGET_DEVICE} target, this run is on {cfg['device']})"
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"{t['verdict']}: {t['target']} [{dev}]: {value} ({t['detail']}){scope}")
    for key, error in payload["errors"].items():
        print(f"ERROR: section {key} failed: {error}")
    for note in payload["notes"]:
        print(f"note: {note}")


def main(argv=None):
    args = parser().parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.epochs = args.epochs or defaults["epochs"]
    args.warmup = defaults["warmup"] if args.warmup is None else args.warmup
    repeats = args.repeats or defaults["repeats"]
    sizes = args.update_sizes or list(defaults["update_sizes"])
    try:
        device = resolve_device(args.device)
    except UsageError as e:
        print(f"epoch_time: error: {e}", file=sys.stderr)
        return 2
    if args.compile is None:
        args.compile = device == "cuda"
    out_path = Path(args.out) if args.out else common.default_results_path(
        f"epoch_time_{device}" + ("_quick" if args.quick else ""))
    xp = np
    if device == "cuda":
        import cupy as xp
    pen = Penalty.with_defaults(args.reg)

    meta, notes = common.start("epoch_time", device, args.quick, log=log)

    log("loading data ...")
    try:
        dataset = load_dataset(args)
    except (datasets.DataError, ValueError) as e:
        print(f"epoch_time: error: {e}", file=sys.stderr)
        return 2
    if len(dataset.y_train) < args.batch_size:
        print(f"epoch_time: error: --train-size {len(dataset.y_train)} is less than one batch ({args.batch_size})",
              file=sys.stderr)
        return 2

    torch, torch_skip = st.import_torch()
    torch_info = {"available": torch is not None, "skipped": torch_skip}
    if torch is not None:
        torch.manual_seed(SEED)
        if device == "cpu":
            torch.set_num_threads(os.cpu_count())
        else:
            torch.backends.cudnn.benchmark = True
            set_tf32(torch, args.torch_tf32)
        torch_info.update(version=torch.__version__, threads=torch.get_num_threads(),
                          cudnn_benchmark=device == "cuda",
                          tf32_epochs=tf32_state(torch) if device == "cuda" else None)
    else:
        log(f"PyTorch: skipped: {torch_skip}")

    log("roofline: measuring copy bandwidth and FP32 matmul peak ...")
    bw = common.measure_copy_bandwidth(device, repeats=3 if args.quick else 5)
    peak = common.measure_peak_flops(device, n=1024 if (args.quick and device == "cpu") else None,
                                     repeats=2 if args.quick else 5)
    roof = {"bytes_per_s": bw["bytes_per_s"], "peak_flops_per_s": peak["flops_per_s"]}

    n_train, n_val = len(dataset.y_train), len(dataset.y_test)
    steps = math.ceil(n_train / args.batch_size)
    targets = []
    errors = {}
    capture = args.op_timing == "graph"

    def section(key, fn):
        """Runs one section; a failure is recorded (JSON "errors", exit status 3), not fatal."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 -- the other sections still run
            errors[key] = f"{type(e).__name__}: {e}"
            log(f"  section {key} FAILED:")
            traceback.print_exc(file=sys.stderr)
            return None

    def epoch_section():
        summaries, records = run_epochs(args, device, dataset, pen, torch, torch_skip, notes)
        mine, ratios = epoch_ratios(summaries)
        targets.extend(epoch_targets(summaries, device, n_train, n_val, args.compile_mode))
        if mine == "pyregnet-eager" and device == "cuda":
            notes.append("pyregnet-graph did not run: the ratios and the 0.2 s target use pyregnet-eager")
        return {"train_images": n_train, "val_images": n_val, "batch": args.batch_size, "steps_per_epoch": steps,
                "eval_batch": EVAL_BATCH, "reg": pen.kind, "penalty": pen.describe(),
                "lambda": {"l1": pen.l1, "l2": pen.l2}, "data_source": dataset.source,
                "timer": "time.perf_counter between device synchronizations",
                "headline": mine, "ratios": ratios, "contenders": records}

    epoch = None
    if args.epochs_section:
        log(f"1. epochs: {n_train:,} + {n_val:,} images, {pen.describe()} ...")
        epoch = section("epoch", epoch_section)
        if torch is not None and device == "cuda":
            torch.cuda.empty_cache()
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()

    conv = None
    if args.conv:
        log("2. conv layers ...")
        if torch is not None and device == "cuda":
            set_tf32(torch, False)
            torch_info["tf32_conv"] = tf32_state(torch)
        conv = section("conv", lambda: conv_section(device, xp, torch,
                                                     OpTimer(device, defaults["op_warmup"], repeats,
                                                             capture=capture), roof))
        if conv is not None:
            targets += conv_targets(conv, device)
    update = None
    if args.update:
        log("3. the fused update ...")
        update = section("update", lambda: update_section(device, xp, sizes, pen, roof,
                                                          OpTimer(device, 1, repeats, capture=capture)))
        if update is not None:
            targets.append(update_target(update, device))
    kernels = None
    if args.kernels:
        log("4. the kernels of one step ...")

        def kernel_table():
            rows = kernel_section(xp, dataset, args.batch_size,
                                  OpTimer(device, defaults["op_warmup"], repeats, capture=capture), roof)
            return {"rows": rows, "steps_per_epoch": steps, "sums": kernel_sums(rows, steps),
                    "model": "step_time.op_breakdown: FLOPs of the GEMM-like work, bytes = the op's inputs + outputs"}
        kernels = section("kernels", kernel_table)
    if device == "cuda":
        notes.append("ops timed alone repeat on the same inputs: small ones stay in L2, so % of roofline "
                     "(DRAM bandwidth) can exceed 100%; eager us is the time per call launched from Python, "
                     "host us the host's share of it (near eager us: launch-bound)")

    payload = {
        "benchmark": "epoch_time",
        "device": device, "commit": meta["commit"], "date": meta["date"],
        "metadata": meta,
        "config": {"device": device, "batch_size": args.batch_size, "epochs": args.epochs, "warmup": args.warmup,
                   "reg": pen.kind, "quick": args.quick, "contenders": args.contenders, "compile": args.compile,
                   "compile_mode": args.compile_mode, "compile_variants": args.compile_variants,
                   "torch_penalty": args.torch_penalty,
                   "torch_tf32": args.torch_tf32, "repeats": repeats, "op_warmup": defaults["op_warmup"],
                   "update_sizes": sizes, "data": args.data, "dataset": args.dataset if args.data is None else None,
                   "train_size": n_train, "val_size": n_val,
                   "op_timing": args.op_timing if device == "cuda" else "perf_counter",
                   "op_timer": (f"reps calls per sample (>= {GPU_MIN_SAMPLE_S * 1e3:g} ms eager), CUDA events; "
                                f"{'captured as a CUDA graph and replayed' if capture else 'launched eagerly'}"
                                if device == "cuda" else "time.perf_counter per call")},
        "roofline": {"copy_bandwidth": bw, "peak_flops": peak, **roof},
        "torch": torch_info,
        "epoch": epoch,
        "conv": conv,
        "update": update,
        "kernels": kernels,
        "targets": targets,
        "errors": errors,
        "notes": notes,
    }
    report(payload)
    common.write_json(out_path, payload)
    print(f"wrote {out_path}")
    if errors:
        return 3
    if args.check and any(t["applies"] and t["pass"] is False for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
