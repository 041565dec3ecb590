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


def forward(params, x):
    """logits (N, 10) of x (N, 3, 32, 32), and what backward needs."""
    p = views(params)
    c1 = ops.relu_forward(ops.conv2d_forward(x, p["conv1.w"], p["conv1.b"], 0))
    p1 = ops.maxpool2d_forward(c1)
    c2 = ops.relu_forward(ops.conv2d_forward(p1, p["conv2.w"], p["conv2.b"], 0))
    p2 = ops.maxpool2d_forward(c2)
    flat = p2.reshape(p2.shape[0], -1)
    h = ops.relu_forward(ops.dense_forward(flat, p["dense1.w"], p["dense1.b"]))
    logits = ops.dense_forward(h, p["dense2.w"], p["dense2.b"])
    return logits, (x, c1, p1, c2, p2, flat, h)


def backward(params, cache, dlogits, grad):
    """Writes dloss/dparams into the flat buffer `grad`, given dlogits."""
    x, c1, p1, c2, p2, flat, h = cache
    p, g = views(params), views(grad)
    dh, g["dense2.w"][...], g["dense2.b"][...] = ops.dense_backward(h, p["dense2.w"], dlogits)
    dflat, g["dense1.w"][...], g["dense1.b"][...] = ops.dense_backward(flat, p["dense1.w"], ops.relu_backward(h, dh))
    dc2 = ops.relu_backward(c2, ops.maxpool2d_backward(c2, dflat.reshape(p2.shape)))
    dp1, g["conv2.w"][...], g["conv2.b"][...] = ops.conv2d_backward(p1, p["conv2.w"], dc2, 0)
    dc1 = ops.relu_backward(c1, ops.maxpool2d_backward(c1, dp1))
    _, g["conv1.w"][...], g["conv1.b"][...] = ops.conv2d_backward(x, p["conv1.w"], dc1, 0, input_grad=False)


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
