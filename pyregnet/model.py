"""The paper's CNN (docs/design.md §1) over one flat parameter buffer, forward and backward through
the pyregnet.ops kernels, on whichever device its arrays live (NumPy: CPU, CuPy: GPU).

    conv 3->32 3x3 valid, ReLU, maxpool 2x2  -> (32, 15, 15)
    conv 32->64 3x3 valid, ReLU, maxpool 2x2 -> (64, 6, 6) -> flatten 2304
    dense 2304->128, ReLU -> dense 128->10 -> softmax (in the loss)

Parameters live in one flat buffer, kernels first and biases last (docs/design.md §2), so the fused
penalty + Adam update is one launch with the penalty on the leading `n_kernel` elements.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np

from . import ops
from .launch import Launch, nbytes

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


def layout(entries):
    """(slots, total size) of a flat buffer holding the (name, shape) entries one after another."""
    slots, offset = [], 0
    for name, shape in entries:
        slots.append(Slot(name, shape, offset))
        offset += slots[-1].size
    return tuple(slots), offset


SLOTS, N_PARAMS = layout(KERNELS + BIASES)
N_KERNEL = sum(s.size for s in SLOTS if s.name.endswith(".w"))  # 315,488 penalized weights
KERNEL_NAMES = tuple(name for name, _ in KERNELS)
KERNEL_SLOTS = tuple(s for s in SLOTS if s.name in KERNEL_NAMES)  # what sparsity and pruning see
assert N_PARAMS == 315_722
# No batch normalization, so no state: the empty buffer lets the engine and the checkpoint treat
# this network as they treat one with running statistics (pyregnet.resnet).
N_STATE = 0


@dataclass(frozen=True)
class Layer:
    """A conv ('valid', stride 1, then ReLU and 2x2 max-pooling) or dense layer, per image."""
    name: str        # conv1, conv2, dense1, dense2
    kind: str        # "conv" or "dense"
    input: tuple     # (C, H, W) or (in,)
    output: tuple    # (K, P, Q) with P = H - R + 1, before pooling; or (out,)
    pooled: tuple    # (K, P // 2, Q // 2) after pooling; () for a dense layer
    weight: tuple    # (K, C, R, S) or (out, in)

    @property
    def macs(self):
        """Multiply-adds of the forward pass per image: K P Q C R S, or out in."""
        return int(np.prod(self.output)) * int(np.prod(self.weight[1:]))


def _layers():
    """The layers, their shapes propagated from INPUT_SHAPE through KERNELS."""
    shape, layers = INPUT_SHAPE, []
    for name, w in KERNELS:
        if len(w) == 4:
            assert w[1] == shape[0], f"{name}: {w[1]} input channels after {shape}"
            out = (w[0], shape[1] - w[2] + 1, shape[2] - w[3] + 1)
            layers.append(Layer(name[:-2], "conv", shape, out, (w[0], out[1] // 2, out[2] // 2), w))
            shape = layers[-1].pooled
        else:
            assert w[1] == int(np.prod(shape)), f"{name}: {w[1]} inputs after {shape}"
            layers.append(Layer(name[:-2], "dense", (w[1],), (w[0],), (), w))
            shape = (w[0],)
    return tuple(layers)


LAYERS = _layers()
CONV1, CONV2, DENSE1, DENSE2 = LAYERS


def step_flops(batch):
    """FLOPs of one training step of `batch` images (2 per multiply-add) by layer: forward 2 macs;
    backward 2 macs for dW and 2 macs for dX, except the first layer, whose input needs no
    gradient (conv2d_backward(input_grad=False): the launches do exactly `total`). Biases, ReLU,
    pooling, the loss and the update are not counted (O(activations + parameters), < 1%)."""
    per_layer = {}
    for i, layer in enumerate(LAYERS):
        macs = batch * layer.macs
        per_layer[layer.name] = {"macs": macs, "forward": 2 * macs, "backward_dw": 2 * macs,
                                 "backward_dx": 0 if i == 0 else 2 * macs}
    fwd = sum(f["forward"] for f in per_layer.values())
    bwd = sum(f["backward_dw"] + f["backward_dx"] for f in per_layer.values())
    return {"batch": batch, "per_layer": per_layer, "forward": fwd, "backward": bwd, "total": fwd + bwd}


def views(flat, slots=SLOTS):
    """{name: view of the flat buffer with the layer's shape} (no copies); `slots` from layout()."""
    return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in slots}


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


def init_state(dtype=np.float32):
    """The network's state (none: a NumPy buffer of size 0)."""
    return np.zeros(N_STATE, dtype=dtype)


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
        self.c1, self.p1 = empty(*CONV1.output), empty(*CONV1.pooled)   # conv1 + ReLU, pool
        self.c2, self.p2 = empty(*CONV2.output), empty(*CONV2.pooled)   # conv2 + ReLU, pool
        # Where each pool window's maximum is: the backward pass reads 1 byte instead of 4 x 4.
        self.a1 = xp.empty((batch, *CONV1.pooled), dtype=np.uint8)
        self.a2 = xp.empty((batch, *CONV2.pooled), dtype=np.uint8)
        self.flat = self.p2.reshape(batch, *DENSE1.input)               # a view: flatten costs nothing
        self.h, self.logits = empty(*DENSE1.output), empty(*DENSE2.output)   # dense1 + ReLU, dense2
        self.dlogits = empty(CLASSES)
        if backward:  # ReLU backward runs in place; dflat is the pool-2 gradient seen flat
            self.dh, self.dflat = empty(*DENSE1.output), empty(*DENSE1.input)
            # dc1 and dc2 are written over c1 and c2, which nothing reads after their pool's
            # backward pass: 10 MB less memory in use per step at batch 64 (docs/results.md, CPU
            # speed work)
            self.dc2, self.dp1, self.dc1 = self.c2, empty(*CONV1.pooled), self.c1


def forward_launches(params, state, act, training):
    """The forward pass over act.input into `act`, as launches. The bias and ReLU run in the
    epilogue of each conv and dense layer that has them; each pool keeps its argmax for backward.
    `state` and `training` are taken as pyregnet.resnet takes them and not used: without batch
    normalization the pass is the same in training and evaluation."""
    p, n, x = views(params), act.input.shape[0], act.input

    def layer(op, layer, inp, out, **kw):
        w, b = p[f"{layer.name}.w"], p[f"{layer.name}.b"]
        args = (inp, w, b, 0) if layer.kind == "conv" else (inp, w, b)
        return Launch(f"{layer.name}.forward", partial(op, *args, out=out, **kw), 2 * n * layer.macs,
                      nbytes(inp, w, b, out))

    def pool(name, inp, out, argmax):
        return Launch(f"{name}.forward", partial(ops.maxpool2d_forward, inp, out=out, argmax=argmax),
                      bytes=nbytes(inp, out, argmax))

    return [layer(ops.conv2d_forward, CONV1, x, act.c1, relu=True), pool("pool1", act.c1, act.p1, act.a1),
            layer(ops.conv2d_forward, CONV2, act.p1, act.c2, relu=True), pool("pool2", act.c2, act.p2, act.a2),
            layer(ops.dense_forward, DENSE1, act.flat, act.h, relu=True),
            layer(ops.dense_forward, DENSE2, act.h, act.logits)]


def backward_launches(params, act, dlogits, grad):
    """dloss/dparams into the flat buffer `grad` (each layer's gradient kernel writes its slice),
    given dlogits and the forward pass's `act`, as launches."""
    p, g, n = views(params), views(grad), act.input.shape[0]

    def layer(layer, inp, dy, dx, passes, **kw):
        w, dw, db = p[f"{layer.name}.w"], g[f"{layer.name}.w"], g[f"{layer.name}.b"]
        op, pad = (ops.conv2d_backward, (0,)) if layer.kind == "conv" else (ops.dense_backward, ())
        wrote = (dw, db) if dx is None else (dx, dw, db)
        return Launch(f"{layer.name}.backward", partial(op, inp, w, dy, *pad, dx=dx, dw=dw, db=db, **kw),
                      2 * passes * n * layer.macs, nbytes(inp, w, dy, *wrote))

    def relu(name, y, dy):  # in place
        return Launch(f"{name}.backward", partial(ops.relu_backward, y, dy, out=dy), bytes=nbytes(y, dy, dy))

    def pool_relu(name, x, y, dy, out, argmax):
        # The pool's and the conv's ReLU's backward in one pass: x gives the shape only; the
        # argmax, the pool's output y (ReLU's mask: at a window's maximum x is y), dy and dx move.
        return Launch(f"{name}.backward", partial(ops.maxpool2d_backward, x, dy, out=out, argmax=argmax, relu_y=y),
                      bytes=nbytes(argmax, y, dy, out))

    return [layer(DENSE2, act.h, dlogits, act.dh, 2), relu("relu3", act.h, act.dh),
            layer(DENSE1, act.flat, act.dh, act.dflat, 2),
            pool_relu("pool2+relu2", act.c2, act.p2, act.dflat.reshape(act.p2.shape), act.dc2, act.a2),
            layer(CONV2, act.p1, act.dc2, act.dp1, 2),
            pool_relu("pool1+relu1", act.c1, act.p1, act.dp1, act.dc1, act.a1),
            layer(CONV1, act.input, act.dc1, None, 1, input_grad=False)]


def forward(params, x, act=None):
    """logits (N, 10) of x (N, 3, 32, 32), written into `act` (an Activations for N images,
    allocated here when None); returns (logits, act), act being what backward needs."""
    if act is None:
        act = Activations(array_module(x), x.shape[0], x.dtype)  # with the backward pass's arrays
    act.input = x
    for launch in forward_launches(params, None, act, training=False):
        launch.fn()
    return act.logits, act


def backward(params, act, dlogits, grad):
    """Writes dloss/dparams straight into the flat buffer `grad`, given dlogits and the forward
    pass's `act`."""
    for launch in backward_launches(params, act, dlogits, grad):
        launch.fn()


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


def sparsity(params, thresholds=SPARSITY_THRESHOLDS, kernels=KERNEL_SLOTS):
    """Fraction of kernel weights with |w| <= t, per layer and in total, for each threshold:
    {layer or "total": {str(t): fraction}}."""
    return weight_stats(params, thresholds, kernels)[0]


def weight_stats(params, thresholds=SPARSITY_THRESHOLDS, kernels=KERNEL_SLOTS):
    """(sparsity, histograms) of the kernel weights, from one host copy of `params`; `kernels`:
    the slots of the network's kernels (this CNN's, or another network's KERNEL_SLOTS).

    sparsity as :func:`sparsity` returns it; histograms {layer: {"zeros": n, "counts": [...],
    "norm": the layer's Euclidean norm, summed in float64}} over HIST_LOG10_EDGES (the norm shows
    what a penalty does to a kernel whose output batch norm rescales anyway). Magnitudes are
    compared as bit patterns (for non-negative IEEE floats the integer order is the numeric
    order), so no floating-point mode (flush-to-zero, denormals-are-zero) can turn a subnormal
    weight into a zero here."""
    host = params.get() if hasattr(params, "get") else np.asarray(params)
    layers = views(host, kernels)
    mags = {name: _magnitude_bits(w) for name, w in layers.items()}
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
        hists[name] = {"zeros": zeros, "counts": [int(c) for c in within[:-2]] + [int(within[-2] + within[-1])],
                       "norm": float(np.linalg.norm(layers[name].astype(np.float64).ravel()))}
    n_kernel = sum(s.size for s in kernels)
    spars["total"] = {threshold_key(t): totals[t] / n_kernel for t in thresholds}
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
