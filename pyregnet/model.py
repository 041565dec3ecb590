"""The paper's CNN (DESIGN.md §1) over one flat parameter buffer, forward and backward through
the pyregnet.ops kernels, on whichever device its arrays live (NumPy: CPU, CuPy: GPU).

    conv 3->32 3x3 valid, ReLU, maxpool 2x2  -> (32, 15, 15)
    conv 32->64 3x3 valid, ReLU, maxpool 2x2 -> (64, 6, 6) -> flatten 2304
    dense 2304->128, ReLU -> dense 128->10 -> softmax (in the loss)

Parameters live in one flat buffer, kernels first and biases last (DESIGN.md §2), so the fused
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


def sparsity(params, thresholds=(1e-3, 1e-4, 0.0)):
    """Fraction of kernel weights with |w| <= t, per layer and in total, for each threshold:
    {layer or "total": {str(t): fraction}}."""
    p = views(params)
    out, totals = {}, {t: 0 for t in thresholds}
    for name in KERNEL_NAMES:
        counts = {t: ops.sparsity_count(p[name], t) for t in thresholds}
        for t in thresholds:
            totals[t] += counts[t]
        out[name] = {_key(t): counts[t] / p[name].size for t in thresholds}
    out["total"] = {_key(t): totals[t] / N_KERNEL for t in thresholds}
    return out


def _key(t):
    return "0" if t == 0 else f"{t:g}"
