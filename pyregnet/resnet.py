"""He et al. 2016's CIFAR-10 ResNet-20 over one flat parameter buffer, forward and backward through
the pyregnet.ops kernels, with the interface of pyregnet.model where it applies (docs/design.md §2):
python -m pyregnet.train --model resnet20.

    stem:   conv 3->16 3x3 pad 1, BN, ReLU                          -> (16, 32, 32)
    stage1: 3 basic blocks, 16 channels                              -> (16, 32, 32)
    stage2: 3 basic blocks, 32 channels, the first conv stride 2     -> (32, 16, 16)
    stage3: 3 basic blocks, 64 channels, the first conv stride 2     -> (64, 8, 8)
    global average pooling -> 64, dense 64->10 -> softmax (in the loss)

A basic block: conv 3x3 - BN - ReLU - conv 3x3 - BN, plus the option-A shortcut (subsample, zero
channels appended), then ReLU. The convs have no bias (BN's beta is the shift).

Parameters: every penalized kernel first (the 19 conv kernels and the dense kernel, N_KERNEL), then
BN's gamma and beta of each of the 19 BN layers and the dense bias. BN's running statistics are not
parameters: they are state, a second flat buffer (init_state), updated by the training-mode forward
pass and read by the evaluation-mode one.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np

from . import ops
from .launch import Launch, nbytes, run
from .model import array_module, layout, views

INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3
# PyTorch's BatchNorm2d defaults, as He et al.'s CIFAR ResNets are usually trained with.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


@dataclass(frozen=True)
class Conv:
    """A 3x3 conv, padding 1, no bias, followed by the BN layer `bn`, per image."""
    name: str        # "stem.conv", "stage2.block1.conv1", ...
    bn: str          # "stem.bn", "stage2.block1.bn1", ...
    input: tuple     # (C, H, W)
    output: tuple    # (K, P, Q), P = (H - 1) // stride + 1
    stride: int

    @property
    def weight(self):
        return (self.output[0], self.input[0], 3, 3)

    @property
    def macs(self):
        """Multiply-adds of the forward pass per image: K P Q C R S."""
        return int(np.prod(self.output)) * int(np.prod(self.weight[1:]))


@dataclass(frozen=True)
class Block:
    name: str        # "stage2.block1"
    conv1: Conv      # carries the block's stride
    conv2: Conv

    @property
    def input(self):
        return self.conv1.input

    @property
    def output(self):
        return self.conv2.output

    @property
    def stride(self):
        return self.conv1.stride


@dataclass(frozen=True)
class Dense:
    name: str
    input: tuple     # (in,)
    output: tuple    # (out,)

    @property
    def weight(self):
        return (self.output[0], self.input[0])

    @property
    def macs(self):
        return self.output[0] * self.input[0]


def _conv(name, bn, shape, channels, stride):
    C, H, W = shape
    return Conv(name, bn, shape, (channels, (H - 1) // stride + 1, (W - 1) // stride + 1), stride)


def _architecture():
    """The stem, the blocks and the dense layer, shapes propagated from INPUT_SHAPE."""
    stem = _conv("stem.conv", "stem.bn", INPUT_SHAPE, WIDTHS[0], 1)
    shape, blocks = stem.output, []
    for s, width in enumerate(WIDTHS, 1):
        for b in range(1, BLOCKS_PER_STAGE + 1):
            name, stride = f"stage{s}.block{b}", 2 if s > 1 and b == 1 else 1
            c1 = _conv(f"{name}.conv1", f"{name}.bn1", shape, width, stride)
            c2 = _conv(f"{name}.conv2", f"{name}.bn2", c1.output, width, 1)
            blocks.append(Block(name, c1, c2))
            shape = c2.output
    return stem, tuple(blocks), Dense("dense", (shape[0],), (CLASSES,))


STEM, BLOCKS, DENSE = _architecture()
CONVS = (STEM, *(c for blk in BLOCKS for c in (blk.conv1, blk.conv2)))
LAYERS = (*CONVS, DENSE)  # the layers with multiply-adds, in forward order

KERNELS = (*((f"{c.name}.w", c.weight) for c in CONVS), ("dense.w", DENSE.weight))
REST = (*((f"{c.bn}.{p}", (c.output[0],)) for c in CONVS for p in ("gamma", "beta")), ("dense.b", (CLASSES,)))
SLOTS, N_PARAMS = layout(KERNELS + REST)
N_KERNEL = sum(s.size for s in SLOTS[:len(KERNELS)])  # 268,336 penalized weights
KERNEL_NAMES = tuple(name for name, _ in KERNELS)
KERNEL_SLOTS = SLOTS[:len(KERNELS)]  # what sparsity and pruning see (model.weight_stats, pyregnet.prune)
assert N_PARAMS == 269_722 and N_KERNEL == 268_336
STATE_SLOTS, N_STATE = layout(tuple((f"{c.bn}.{s}", (c.output[0],)) for c in CONVS for s in ("mean", "var")))


def step_flops(batch):
    """FLOPs of one training step of `batch` images (2 per multiply-add) by layer, counted as
    model.step_flops counts them: forward, dW and dX of every conv and the dense layer, the stem's
    dX excepted (its input needs no gradient). BN, ReLU, the shortcut, pooling, the loss and the
    update are not counted (O(activations + parameters))."""
    per_layer = {}
    for layer in LAYERS:
        macs = batch * layer.macs
        per_layer[layer.name] = {"macs": macs, "forward": 2 * macs, "backward_dw": 2 * macs,
                                 "backward_dx": 0 if layer is STEM else 2 * macs}
    fwd = sum(f["forward"] for f in per_layer.values())
    bwd = sum(f["backward_dw"] + f["backward_dx"] for f in per_layer.values())
    return {"batch": batch, "per_layer": per_layer, "forward": fwd, "backward": bwd, "total": fwd + bwd}


def param_views(flat):
    """{name: view of the flat parameter buffer (or of a gradient laid out alike)} (no copies)."""
    return views(flat, SLOTS)


def state_views(flat):
    """{"<bn>.mean" / "<bn>.var": view of the flat state buffer} (no copies)."""
    return views(flat, STATE_SLOTS)


def init_params(seed, dtype=np.float32):
    """He-normal conv kernels (normal, std sqrt(2 / (C R S)), as He et al. 2015), a Glorot-uniform
    dense kernel, gamma 1, beta 0, dense bias 0. Drawn with NumPy from the seed on the host;
    returns a NumPy flat buffer."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(N_PARAMS, dtype=dtype)
    v = param_views(flat)
    for c in CONVS:
        v[f"{c.name}.w"][...] = rng.normal(0.0, np.sqrt(2.0 / np.prod(c.weight[1:])), size=c.weight)
        v[f"{c.bn}.gamma"][...] = 1
    limit = np.sqrt(6.0 / (DENSE.input[0] + DENSE.output[0]))
    v["dense.w"][...] = rng.uniform(-limit, limit, size=DENSE.weight)
    return flat


def init_state(dtype=np.float32):
    """BN's running statistics before training: mean 0, variance 1 (PyTorch's); a NumPy flat buffer."""
    flat = np.zeros(N_STATE, dtype=dtype)
    for c in CONVS:
        state_views(flat)[f"{c.bn}.var"][...] = 1
    return flat


class Activations:
    """The arrays one forward and backward pass over `batch` images writes, allocated once (a
    captured CUDA graph replays into the same memory; no step allocates).

    Forward: z[conv] the conv's output, y[bn] the BN's output, made ReLU in place after the stem
    and each block's first BN; after each block's second BN the shortcut and ReLU are added in
    place, so y[block.conv2.bn] is the block's output. mean[bn], invstd[bn]: the statistics that
    normalized (batchnorm_backward reads them).
    With backward=False only the forward pass's (evaluation) plus dlogits, which the loss writes.
    With input_grad, backward also writes dinput, the gradient of the input images."""

    def __init__(self, xp, batch, dtype=np.float32, backward=True, input_grad=False):
        def empty(*shape):
            return xp.empty((batch, *shape), dtype=dtype)
        self.x = empty(*INPUT_SHAPE)
        self.input = self.x  # what the forward pass last read (backward needs it for the stem's dw)
        self.labels = xp.empty(batch, dtype=np.int32)
        self.z = {c.name: empty(*c.output) for c in CONVS}
        self.y = {c.bn: empty(*c.output) for c in CONVS}
        self.mean = {c.bn: xp.empty(c.output[0], dtype=dtype) for c in CONVS}
        self.invstd = {c.bn: xp.empty(c.output[0], dtype=dtype) for c in CONVS}
        # The convs' bias: zero and not a parameter (the conv op always adds one).
        self.zero_bias = {w: xp.zeros(w, dtype=dtype) for w in WIDTHS}
        self.pooled, self.logits = empty(*DENSE.input), empty(*DENSE.output)
        self.dlogits = empty(CLASSES)
        self.dinput = empty(*INPUT_SHAPE) if backward and input_grad else None
        if backward:
            self._backward_buffers(empty, xp, dtype)

    def _backward_buffers(self, empty, xp, dtype):
        # dout[stem conv's or block's name]: the gradient of the stem's or the block's output. Two
        # arrays per stage shape, used in turn along the chain, so a block reads its output's
        # gradient from one and writes its input's into the other (or into the previous stage's). dz and dh: the gradient of a
        # block's conv output and of its first ReLU's output, consumed within the block.
        shapes = {blk.output for blk in BLOCKS}
        pairs = {s: (empty(*s), empty(*s)) for s in shapes}
        chain = (STEM, *BLOCKS)
        self.dout = {layer.name: pairs[layer.output][i % 2] for i, layer in enumerate(chain)}
        self.dz = {s: empty(*s) for s in shapes}
        self.dh = {s: empty(*s) for s in shapes}
        self.dpooled = empty(*DENSE.input)
        # conv2d_backward always writes a bias gradient; the convs have no bias, so it is written
        # here, per width, and never read.
        self.dbias_discarded = {w: xp.empty(w, dtype=dtype) for w in WIDTHS}


def _bn_forward(p, state, act, conv, training):
    bn, z = conv.bn, act.z[conv.name]
    fn = partial(ops.batchnorm_forward, z, p[f"{bn}.gamma"], p[f"{bn}.beta"], state[f"{bn}.mean"],
                 state[f"{bn}.var"], training=training, momentum=BN_MOMENTUM, eps=BN_EPS, out=act.y[bn],
                 mean=act.mean[bn], invstd=act.invstd[bn])
    return Launch(f"{bn}.forward", fn, bytes=nbytes(z, act.y[bn]))


def _conv_forward(p, act, conv, inp):
    w, b, out = p[f"{conv.name}.w"], act.zero_bias[conv.output[0]], act.z[conv.name]
    fn = partial(ops.conv2d_forward, inp, w, b, 1, stride=conv.stride, out=out)
    return Launch(f"{conv.name}.forward", fn, 2 * inp.shape[0] * conv.macs, nbytes(inp, w, out))


def _relu_forward(name, y):  # in place
    return Launch(f"{name}.forward", partial(ops.relu_forward, y, out=y), bytes=nbytes(y, y))


def forward_launches(params, state, act, training):
    """The forward pass over act.input into `act`, as launches. `training`: BN normalizes with the
    batch's statistics and updates the running ones in `state` (a flat buffer laid out as
    init_state's); else it normalizes with the running statistics and only reads them."""
    p, s, n = param_views(params), state_views(state), act.input.shape[0]
    launches = [_conv_forward(p, act, STEM, act.input), _bn_forward(p, s, act, STEM, training),
                _relu_forward("stem.relu", act.y[STEM.bn])]
    inp = act.y[STEM.bn]
    for blk in BLOCKS:
        h, out = act.y[blk.conv1.bn], act.y[blk.conv2.bn]
        add = partial(ops.residual_add_forward, out, inp, blk.stride, relu=True, out=out)
        launches += [_conv_forward(p, act, blk.conv1, inp), _bn_forward(p, s, act, blk.conv1, training),
                     _relu_forward(f"{blk.name}.relu1", h),
                     _conv_forward(p, act, blk.conv2, h), _bn_forward(p, s, act, blk.conv2, training),
                     Launch(f"{blk.name}.add.forward", add, bytes=nbytes(out, inp, out))]
        inp = out
    w, b = p["dense.w"], p["dense.b"]
    launches += [Launch("pool.forward", partial(ops.global_avgpool_forward, inp, out=act.pooled),
                        bytes=nbytes(inp, act.pooled)),
                 Launch("dense.forward", partial(ops.dense_forward, act.pooled, w, b, out=act.logits),
                        2 * n * DENSE.macs, nbytes(act.pooled, w, b, act.logits))]
    return launches


def _bn_backward(p, g, act, conv, dy, dz):
    bn, z = conv.bn, act.z[conv.name]
    fn = partial(ops.batchnorm_backward, z, p[f"{bn}.gamma"], dy, act.mean[bn], act.invstd[bn], dx=dz,
                 dgamma=g[f"{bn}.gamma"], dbeta=g[f"{bn}.beta"])
    return Launch(f"{bn}.backward", fn, bytes=nbytes(z, dy, dz))


def _conv_backward(p, g, act, conv, inp, dz, dx):
    w, dw, db = p[f"{conv.name}.w"], g[f"{conv.name}.w"], act.dbias_discarded[conv.output[0]]
    passes = 1 if dx is None else 2
    fn = partial(ops.conv2d_backward, inp, w, dz, 1, stride=conv.stride, input_grad=dx is not None,
                 dx=dx, dw=dw, db=db)
    wrote = (dw,) if dx is None else (dx, dw)
    return Launch(f"{conv.name}.backward", fn, 2 * passes * inp.shape[0] * conv.macs, nbytes(inp, w, dz, *wrote))


def _relu_backward(name, y, dy):  # in place
    return Launch(f"{name}.backward", partial(ops.relu_backward, y, dy, out=dy), bytes=nbytes(y, dy, dy))


def _block_backward(p, g, act, blk, inp, dinp):
    """The block's launches, given the gradient of its output in act.dout[blk.name]; writes the
    gradient of its input `inp` into `dinp`."""
    dout, h = act.dout[blk.name], act.y[blk.conv1.bn]
    dz, dh = act.dz[blk.output], act.dh[blk.output]
    add = partial(ops.residual_add_backward, dout, dinp, blk.stride, out=dinp)
    return [_relu_backward(f"{blk.name}.relu2", act.y[blk.conv2.bn], dout),
            _bn_backward(p, g, act, blk.conv2, dout, dz), _conv_backward(p, g, act, blk.conv2, h, dz, dh),
            _relu_backward(f"{blk.name}.relu1", h, dh),
            _bn_backward(p, g, act, blk.conv1, dh, dz), _conv_backward(p, g, act, blk.conv1, inp, dz, dinp),
            Launch(f"{blk.name}.add.backward", add, bytes=nbytes(dout, dinp, dinp))]


def backward_launches(params, act, dlogits, grad):
    """dloss/dparams into the flat buffer `grad` (each layer's gradient kernel writes its slice),
    given dlogits and the training-mode forward pass's `act`, as launches; also the gradient of
    the input into act.dinput when the Activations have one."""
    p, g, n = param_views(params), param_views(grad), act.input.shape[0]
    last = act.y[BLOCKS[-1].conv2.bn]
    launches = [Launch("dense.backward", partial(ops.dense_backward, act.pooled, p["dense.w"], dlogits,
                                                 dx=act.dpooled, dw=g["dense.w"], db=g["dense.b"]),
                       4 * n * DENSE.macs, nbytes(act.pooled, p["dense.w"], dlogits, act.dpooled, g["dense.w"])),
                Launch("pool.backward", partial(ops.global_avgpool_backward, last, act.dpooled,
                                                out=act.dout[BLOCKS[-1].name]),
                       bytes=nbytes(act.dpooled, last))]
    chain = (STEM, *BLOCKS)
    for i in range(len(BLOCKS), 0, -1):
        before = chain[i - 1]
        inp = act.y[before.bn] if before is STEM else act.y[before.conv2.bn]
        launches += _block_backward(p, g, act, chain[i], inp, act.dout[before.name])
    dstem = act.dout[STEM.name]
    return launches + [_relu_backward("stem.relu", act.y[STEM.bn], dstem),
                       _bn_backward(p, g, act, STEM, dstem, act.dz[STEM.output]),
                       _conv_backward(p, g, act, STEM, act.input, act.dz[STEM.output], act.dinput)]


def forward(params, state, x, training, act=None):
    """logits (N, 10) of x (N, 3, 32, 32), written into `act` (an Activations for N images,
    allocated here when None, with the backward pass's arrays); returns (logits, act). In
    training mode `state`'s running statistics are updated in place."""
    if act is None:
        act = Activations(array_module(x), x.shape[0], x.dtype)
    act.input = x
    run(forward_launches(params, state, act, training))
    return act.logits, act


def backward(params, act, dlogits, grad):
    """Writes dloss/dparams straight into the flat buffer `grad`, given dlogits and the
    training-mode forward pass's `act` (and the input's gradient into act.dinput if it has one)."""
    run(backward_launches(params, act, dlogits, grad))
