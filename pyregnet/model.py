"""The paper's CNN (docs/design.md §1) over one flat parameter buffer, forward and backward through
the pyregnet.ops kernels, on whichever device its arrays live (NumPy: CPU, CuPy: GPU).

    conv 3->32 3x3 valid, ReLU, maxpool 2x2  -> (32, 15, 15)
    conv 32->64 3x3 valid, ReLU, maxpool 2x2 -> (64, 6, 6) -> flatten 2304
    dense 2304->128, ReLU -> dense 128->10 -> softmax (in the loss)

Parameters live in one flat buffer, kernels first and biases last (docs/design.md §2), so the fused
penalty + Adam update is one launch with the penalty on the leading `n_kernel` elements.
"""

from dataclasses import dataclass

import numpy as np

from . import ops

# (name, shape); kernels first, biases after, in this order in the flat buffer.
KERNELS = (("conv1.w", (32, 3, 3, 3)), ("conv2.w", (64, 32, 3, 3)),
           ("dense1.w", (128, 2304)), ("dense2.w", (10, 128)))
BIASES = (("conv1.b", (32,)), ("conv2.b", (64,)), ("dense1.b", (128,)), ("dense2.b", (10,)))
INPUT_SHAPE = (3, 32, 32)
CLASSES = 10


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple
    offset: int

    @property
    def size(self):
        return int(np.prod(self.shape))


def _layout():
    slots, offset = [], 0
    for name, shape in KERNELS + BIASES:
        slots.append(Slot(name, shape, offset))
        offset += slots[-1].size
    return tuple(slots), offset


SLOTS, N_PARAMS = _layout()
N_KERNEL = sum(s.size for s in SLOTS if s.name.endswith(".w"))  # 315,488 penalized weights
KERNEL_NAMES = tuple(name for name, _ in KERNELS)
assert N_PARAMS == 315_722


def views(flat):
    """{name: view of the flat buffer with the layer's shape} (no copies)."""
    return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in SLOTS}


def init_params(seed, dtype=np.float32):
    """Keras defaults: Glorot-uniform kernels (fan_in = C*R*S or in, fan_out = K*R*S or out),
    zero biases. Drawn with NumPy from the seed on the host; returns a NumPy flat buffer."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(N_PARAMS, dtype=dtype)
    v = views(flat)
    for name, shape in KERNELS:
        receptive = int(np.prod(shape[2:])) if len(shape) == 4 else 1
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        v[name][...] = rng.uniform(-limit, limit, size=shape)
    return flat


class Activations:
    """The arrays one forward and backward pass over a batch of `batch` images writes, allocated
    once: a captured CUDA graph replays into the same memory, and no step allocates. With
    backward=False only the forward pass's (evaluation) plus dlogits, which the loss writes."""

    def __init__(self, xp, batch, dtype=np.float32, backward=True):
        def empty(*shape):
            return xp.empty((batch, *shape), dtype=dtype)
        self.x = empty(*INPUT_SHAPE)
        self.input = self.x  # what the forward pass last read (backward needs it for conv1's dw)
        self.labels = xp.empty(batch, dtype=np.int32)
        self.c1, self.p1 = empty(32, 30, 30), empty(32, 15, 15)   # conv1 + ReLU, pool
        self.c2, self.p2 = empty(64, 13, 13), empty(64, 6, 6)     # conv2 + ReLU, pool
        # Where each pool window's maximum is: the backward pass reads 1 byte instead of 4 x 4.
        self.a1 = xp.empty((batch, 32, 15, 15), dtype=np.uint8)
        self.a2 = xp.empty((batch, 64, 6, 6), dtype=np.uint8)
        self.flat = self.p2.reshape(batch, 2304)                  # a view: flatten costs nothing
        self.h, self.logits = empty(128), empty(CLASSES)          # dense1 + ReLU, dense2
        self.dlogits = empty(CLASSES)
        if backward:  # ReLU backward runs in place; dflat is the pool-2 gradient seen flat
            self.dh, self.dflat = empty(128), empty(2304)
            self.dc2, self.dp1, self.dc1 = empty(64, 13, 13), empty(32, 15, 15), empty(32, 30, 30)


def forward(params, x, act=None):
    """logits (N, 10) of x (N, 3, 32, 32), written into `act` (an Activations for N images,
    allocated here when None); returns (logits, act), act being what backward needs. The bias
    and ReLU run in the epilogue of each conv and dense layer that has them."""
    if act is None:
        act = Activations(array_module(x), x.shape[0], x.dtype)  # with the backward pass's arrays
    act.input = x
    p = views(params)
    ops.conv2d_forward(x, p["conv1.w"], p["conv1.b"], 0, relu=True, out=act.c1)
    ops.maxpool2d_forward(act.c1, out=act.p1, argmax=act.a1)
    ops.conv2d_forward(act.p1, p["conv2.w"], p["conv2.b"], 0, relu=True, out=act.c2)
    ops.maxpool2d_forward(act.c2, out=act.p2, argmax=act.a2)
    ops.dense_forward(act.flat, p["dense1.w"], p["dense1.b"], relu=True, out=act.h)
    ops.dense_forward(act.h, p["dense2.w"], p["dense2.b"], out=act.logits)
    return act.logits, act


def backward(params, act, dlogits, grad):
    """Writes dloss/dparams straight into the flat buffer `grad` (each layer's gradient kernel
    writes its slice), given dlogits and the forward pass's `act`."""
    p, g = views(params), views(grad)
    ops.dense_backward(act.h, p["dense2.w"], dlogits, dx=act.dh, dw=g["dense2.w"], db=g["dense2.b"])
    ops.relu_backward(act.h, act.dh, out=act.dh)
    ops.dense_backward(act.flat, p["dense1.w"], act.dh, dx=act.dflat, dw=g["dense1.w"], db=g["dense1.b"])
    ops.maxpool2d_backward(act.c2, act.dflat.reshape(act.p2.shape), out=act.dc2, argmax=act.a2)
    ops.relu_backward(act.c2, act.dc2, out=act.dc2)
    ops.conv2d_backward(act.p1, p["conv2.w"], act.dc2, 0, dx=act.dp1, dw=g["conv2.w"], db=g["conv2.b"])
    ops.maxpool2d_backward(act.c1, act.dp1, out=act.dc1, argmax=act.a1)
    ops.relu_backward(act.c1, act.dc1, out=act.dc1)
    ops.conv2d_backward(act.input, p["conv1.w"], act.dc1, 0, input_grad=False, dw=g["conv1.w"], db=g["conv1.b"])


def array_module(a):
    """numpy for a NumPy array, else cupy (the only other array library the trainer uses)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy


# Sparsity thresholds: fraction of kernel weights with |w| <= t. SUBNORMAL_MAX, the largest
# subnormal float32, counts |w| < the smallest normal float (about 1.18e-38): zero or subnormal,
# the same whether or not the arithmetic flushed subnormals to zero; 0 counts exact zeros only.
SUBNORMAL_MAX = float(np.nextafter(np.float32(np.finfo(np.float32).tiny), np.float32(0)))
SPARSITY_THRESHOLDS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, SUBNORMAL_MAX, 0.0)
# log10|w| histogram: bin i holds the non-zero weights with EDGES[i] <= log10|w| < EDGES[i + 1],
# half decades from 1e-45 (float32's smallest subnormal is 1.4e-45) to 10; the last bin is open
# above. Exact zeros are counted apart. Edges are compared as the nearest float32 to 10**edge.
HIST_LOG10_EDGES = tuple(k / 2 for k in range(-90, 3))


def sparsity(params, thresholds=SPARSITY_THRESHOLDS):
    """Fraction of kernel weights with |w| <= t, per layer and in total, for each threshold:
    {layer or "total": {str(t): fraction}}."""
    return weight_stats(params, thresholds)[0]


def weight_stats(params, thresholds=SPARSITY_THRESHOLDS):
    """(sparsity, histograms) of the kernel weights, from one host copy of `params`.

    sparsity as :func:`sparsity` returns it; histograms {layer: {"zeros": n, "counts": [...]}}
    over HIST_LOG10_EDGES. Magnitudes are compared as bit patterns (for non-negative IEEE floats
    the integer order is the numeric order), so no floating-point mode (flush-to-zero,
    denormals-are-zero) can turn a subnormal weight into a zero here."""
    host = params.get() if hasattr(params, "get") else np.asarray(params)
    mags = {name: _magnitude_bits(w) for name, w in views(host).items() if name in KERNEL_NAMES}
    dtype = host.dtype
    limits = {t: _bits_at_most(t, dtype) for t in thresholds}
    edges = np.array([_bits_nearest(10.0 ** e, dtype) for e in HIST_LOG10_EDGES])
    spars, hists, totals = {}, {}, dict.fromkeys(thresholds, 0)
    for name, bits in mags.items():
        ordered = np.sort(bits)
        counts = {t: int(np.searchsorted(ordered, limits[t], side="right")) for t in thresholds}
        for t in thresholds:
            totals[t] += counts[t]
        spars[name] = {threshold_key(t): counts[t] / bits.size for t in thresholds}
        zeros = int(np.searchsorted(ordered, 0, side="right"))
        below = np.searchsorted(ordered[zeros:], edges, side="left")  # how many lie below each edge
        within = np.diff(np.append(below, ordered.size - zeros))
        within[0] += below[0]  # none in float32; float64 has smaller subnormals
        hists[name] = {"zeros": zeros, "counts": [int(c) for c in within[:-2]] + [int(within[-2] + within[-1])]}
    spars["total"] = {threshold_key(t): totals[t] / N_KERNEL for t in thresholds}
    return spars, hists


def _uint(dtype):
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def _magnitude_bits(w):
    """The bit patterns of |w| as unsigned integers (the sign bit cleared)."""
    u = _uint(w.dtype)
    return np.ascontiguousarray(w).reshape(-1).view(u) & u.type(np.iinfo(u).max >> 1)


def _bits_at_most(t, dtype):
    """The bit pattern of the largest value of `dtype` that is <= t (t >= 0)."""
    v = np.array(t, dtype=dtype)
    if float(v) > t:
        v = np.nextafter(v, dtype.type(0))
    return np.array(v, dtype=dtype).view(_uint(dtype))[()]


def _bits_nearest(x, dtype):
    return np.array(x, dtype=dtype).view(_uint(dtype))[()]


def threshold_key(t):
    return "0" if t == 0 else f"{t:g}"
