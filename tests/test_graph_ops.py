"""The op features a captured CUDA graph relies on, on every backend present:

- results written into given arrays (out=, dx=/dw=/db=, dlogits=) equal the returned ones, bit
  for bit, and the given arrays are the ones returned;
- the fused bias + ReLU epilogue equals relu_forward after the op, bit for bit;
- sums added on the device (into=) equal the returned sums and accumulate over calls;
- a step or offset read from an int64 array equals the same integer passed directly;
- max-pooling's stored argmax gives the backward pass of the recomputed one, bit for bit;
- take gathers labels, with -1 for anything out of range;
- bad arguments for all of these raise a named error and write nothing.
"""

import numpy as np
import pytest

from pyregnet import ops
from pyregnet import reference as ref


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def same_bits(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert np.array_equal(a, b, equal_nan=True), f"{what}: max diff {np.nanmax(np.abs(a - b))}"


@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_forward_out_and_relu(backend, dtype, relu):
    rng = np.random.default_rng(1)
    x, w, b = (backend.to_device(a) for a in (rand(rng, 3, 5, 7, 6, dtype=dtype), rand(rng, 4, 5, 3, 3, dtype=dtype),
                                              rand(rng, 4, dtype=dtype)))
    plain = backend.to_host(ops.conv2d_forward(x, w, b, 1))
    expected = np.maximum(plain, 0) if relu else plain
    out = backend.to_device(np.full(plain.shape, np.nan, dtype))
    got = ops.conv2d_forward(x, w, b, 1, relu=relu, out=out)
    assert got is out
    same_bits(backend.to_host(out), expected, "conv2d_forward out")
    # The fused ReLU is relu_forward's math: the same bits as the separate pass.
    if relu:
        same_bits(backend.to_host(ops.relu_forward(ops.conv2d_forward(x, w, b, 1))), expected, "relu after conv")


@pytest.mark.parametrize("relu", [False, True])
def test_dense_forward_out_and_relu(backend, dtype, relu):
    rng = np.random.default_rng(2)
    x, w, b = (backend.to_device(a) for a in (rand(rng, 5, 67, dtype=dtype), rand(rng, 9, 67, dtype=dtype),
                                              rand(rng, 9, dtype=dtype)))
    plain = backend.to_host(ops.dense_forward(x, w, b))
    out = backend.to_device(np.full(plain.shape, np.nan, dtype))
    assert ops.dense_forward(x, w, b, relu=relu, out=out) is out
    same_bits(backend.to_host(out), np.maximum(plain, 0) if relu else plain, "dense_forward out")


def test_backward_outputs(backend, dtype):
    rng = np.random.default_rng(3)
    x, w, dy = (backend.to_device(a) for a in (rand(rng, 2, 3, 6, 5, dtype=dtype), rand(rng, 4, 3, 3, 3, dtype=dtype),
                                               rand(rng, 2, 4, 4, 3, dtype=dtype)))
    want = [backend.to_host(a) for a in ops.conv2d_backward(x, w, dy, 0)]
    bufs = [backend.to_device(np.full(a.shape, np.nan, dtype)) for a in want]
    got = ops.conv2d_backward(x, w, dy, 0, dx=bufs[0], dw=bufs[1], db=bufs[2])
    for g, buf, ref, name in zip(got, bufs, want, ("dx", "dw", "db")):
        assert g is buf
        same_bits(backend.to_host(buf), ref, f"conv2d_backward {name}")
    # Without the input gradient, dw and db still go where they are told.
    dx, dw, db = ops.conv2d_backward(x, w, dy, 0, input_grad=False, dw=bufs[1], db=bufs[2])
    assert dx is None and dw is bufs[1] and db is bufs[2]

    xd, wd, dyd = (backend.to_device(a) for a in (rand(rng, 5, 7, dtype=dtype), rand(rng, 3, 7, dtype=dtype),
                                                  rand(rng, 5, 3, dtype=dtype)))
    want = [backend.to_host(a) for a in ops.dense_backward(xd, wd, dyd)]
    bufs = [backend.to_device(np.zeros(a.shape, dtype)) for a in want]
    for g, buf, ref in zip(ops.dense_backward(xd, wd, dyd, dx=bufs[0], dw=bufs[1], db=bufs[2]), bufs, want):
        assert g is buf
        same_bits(backend.to_host(buf), ref, "dense_backward")


def test_pool_and_relu_outputs(backend, dtype):
    rng = np.random.default_rng(4)
    x = backend.to_device(rand(rng, 2, 3, 7, 6, dtype=dtype))
    y = ops.maxpool2d_forward(x)
    out = backend.to_device(np.zeros(backend.to_host(y).shape, dtype))
    assert ops.maxpool2d_forward(x, out=out) is out
    same_bits(backend.to_host(out), backend.to_host(y), "maxpool2d_forward out")
    dy = backend.to_device(rand(rng, *backend.to_host(y).shape, dtype=dtype))
    dx = backend.to_device(np.zeros((2, 3, 7, 6), dtype))
    assert ops.maxpool2d_backward(x, dy, out=dx) is dx
    same_bits(backend.to_host(dx), backend.to_host(ops.maxpool2d_backward(x, dy)), "maxpool2d_backward out")

    # The elementwise ops may write in place.
    want = backend.to_host(ops.relu_forward(x))
    assert ops.relu_forward(x, out=x) is x
    same_bits(backend.to_host(x), want, "relu_forward in place")
    g = backend.to_device(rand(rng, 2, 3, 7, 6, dtype=dtype))
    want = backend.to_host(ops.relu_backward(x, g))
    assert ops.relu_backward(x, g, out=g) is g
    same_bits(backend.to_host(g), want, "relu_backward in place")


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 7, 6), (3, 5, 9, 11), (64, 32, 30, 30)])
def test_maxpool_stored_argmax(backend, dtype, shape):
    rng = np.random.default_rng(10)
    host = rng.integers(-3, 4, shape).astype(dtype)  # small integers: many ties
    host.reshape(-1)[::17] = np.nan                  # and NaNs, which count as the maximum
    x = backend.to_device(host)
    N, C, H, W = shape
    argmax = backend.to_device(np.full((N, C, H // 2, W // 2), 255, np.uint8))
    y = ops.maxpool2d_forward(x, argmax=argmax)
    same_bits(backend.to_host(y), backend.to_host(ops.maxpool2d_forward(x)), "y with argmax")
    # The stored position is the first maximum in row-major order, NaN first.
    windows = host[:, :, :H // 2 * 2, :W // 2 * 2].reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(N, C, H // 2, W // 2, 4)
    want = np.where(np.isnan(windows).any(-1), np.isnan(windows).argmax(-1), np.nanargmax(
        np.where(np.isnan(windows), -np.inf, windows), -1))
    same_bits(backend.to_host(argmax), want.astype(np.uint8), "argmax")
    dy = backend.to_device(rand(rng, N, C, H // 2, W // 2, dtype=dtype))
    out = backend.to_device(np.full(shape, np.nan, dtype))
    assert ops.maxpool2d_backward(x, dy, argmax=argmax, out=out) is out
    same_bits(backend.to_host(out), backend.to_host(ops.maxpool2d_backward(x, dy)), "dx from the stored argmax")


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 7, 6), (3, 5, 9, 11), (64, 32, 30, 30)])
def test_maxpool_backward_through_relu(backend, dtype, shape):
    # x as a ReLU leaves it (zeros, -0.0, NaN, ties) and dy of every sign: relu_y fuses ReLU's
    # backward into the pool's, the same bits as the two ops one after the other, with the argmax
    # stored or recomputed, and written over x itself when the argmax is stored.
    rng = np.random.default_rng(11)
    host = np.maximum(rng.integers(-2, 3, shape), 0).astype(dtype)
    host.reshape(-1)[::13] = -0.0
    host.reshape(-1)[::29] = np.nan
    N, C, H, W = shape
    x = backend.to_device(host)
    argmax = backend.to_device(np.zeros((N, C, H // 2, W // 2), np.uint8))
    y = ops.maxpool2d_forward(x, argmax=argmax)
    dy = rand(rng, N, C, H // 2, W // 2, dtype=dtype)
    dy.reshape(-1)[::7] = -0.0
    dy = backend.to_device(dy)
    two_ops = backend.to_host(ops.relu_backward(x, ops.maxpool2d_backward(x, dy)))
    for stored in (None, argmax):
        same_bits(backend.to_host(ops.maxpool2d_backward(x, dy, argmax=stored, relu_y=y)), two_ops, "fused")
    np.testing.assert_array_equal(two_ops, ref.maxpool2d_relu_backward(host, backend.to_host(dy)).astype(dtype))
    assert ops.maxpool2d_backward(x, dy, argmax=argmax, relu_y=y, out=x) is x
    same_bits(backend.to_host(x), two_ops, "dx written over x")


def sequential_window_rule(window):
    """The pool's rule, stated as a left-to-right scan: a NaN is kept once seen, else a later
    element replaces the best only when strictly larger or NaN."""
    best, which = window[0], 0
    for i, v in enumerate(window[1:], 1):
        if not np.isnan(best) and (v > best or np.isnan(v)):
            best, which = v, i
    return which


@pytest.mark.parametrize("layout", ["one row", "one window per plane"])
def test_maxpool_every_window_of_a_small_alphabet(backend, dtype, layout):
    # Every 2x2 window over {NaN, -inf, -1, -0.0, +0.0, 1} (6^4 = 1,296): the CPU backend combines
    # the pairs of each row, then the rows (vectorized), which must pick the element the
    # sequential rule picks, ties, signed zeros and NaNs included. "one row" puts the windows side
    # by side in one row pair (vector lanes and a remainder), the other layout one per plane.
    alphabet = np.array([np.nan, -np.inf, -1.0, -0.0, 0.0, 1.0], dtype)
    combos = alphabet[np.stack(np.meshgrid(*[np.arange(6)] * 4, indexing="ij"), -1).reshape(-1, 4)]  # (1296, 4)
    want = np.array([sequential_window_rule(w) for w in combos], np.uint8)
    if layout == "one row":
        host = np.ascontiguousarray(combos.reshape(-1, 2, 2).transpose(1, 0, 2).reshape(1, 1, 2, -1))
        shape_out = (1, 1, 1, len(combos))
    else:
        host = np.ascontiguousarray(combos.reshape(1, -1, 2, 2))
        shape_out = (1, len(combos), 1, 1)
    x = backend.to_device(host)
    argmax = backend.to_device(np.full(shape_out, 255, np.uint8))
    y = backend.to_host(ops.maxpool2d_forward(x, argmax=argmax))
    same_bits(backend.to_host(argmax).reshape(-1), want, "argmax")
    picked = combos[np.arange(len(combos)), want]
    assert np.array_equal(y.reshape(-1).view(np.uint8), picked.view(np.uint8)), "y: not the picked element's bits"


def test_softmax_cross_entropy_into(backend, dtype):
    rng = np.random.default_rng(5)
    totals = backend.to_device(np.array([1.5, 2.0, 0.0]))
    expected = np.array([1.5, 2.0, 0.0])
    for n in (1, 7, 33):
        logits = backend.to_device(rand(rng, n, 10, dtype=dtype))
        labels = backend.to_device(rng.integers(0, 10, n).astype(np.int32))
        loss, dlogits, correct = ops.softmax_cross_entropy(logits, labels)
        buf = backend.to_device(np.zeros((n, 10), dtype))
        got = ops.softmax_cross_entropy(logits, labels, dlogits=buf, into=totals)
        assert got[0] is None and got[1] is buf and got[2] is None
        same_bits(backend.to_host(buf), backend.to_host(dlogits), "dlogits")
        expected += [loss * n, correct, 0]
    got = backend.to_host(totals)
    print("accumulated", got, "expected", expected)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[1] == expected[1] and got[2] == 0


@pytest.mark.parametrize("proximal", [False, True])
def test_adam_update_step_array_and_into(backend, dtype, proximal):
    rng = np.random.default_rng(6)
    n, penalized = 1003, 990
    start = [rand(rng, n, dtype=dtype), rand(rng, n, dtype=dtype), rand(rng, n, dtype=dtype) * 0.1,
             np.abs(rand(rng, n, dtype=dtype)) * 0.1]
    hyper = dict(lr=1e-3, l1=1e-3, l2=2e-3, penalized=penalized, proximal=proximal, with_penalty=True)

    plain = [backend.to_device(a.copy()) for a in start]
    values = [ops.adam_update(*plain, step=t, **hyper) for t in (1, 2, 3)]

    arrays = [backend.to_device(a.copy()) for a in start]
    clock = backend.to_device(np.array([1], np.int64))
    into = backend.to_device(np.zeros(1))
    for _ in range(3):
        assert ops.adam_update(*arrays, step=clock, into=into, **hyper) is None
        clock += 1
    for a, b, name in zip(arrays, plain, ("param", "grad", "m", "v")):
        same_bits(backend.to_host(a), backend.to_host(b), f"adam_update {name} with the step in an array")
    got = float(backend.to_host(into)[0])
    print("penalty sum", got, "expected", sum(values))
    assert got == pytest.approx(sum(values), rel=1e-12)


@pytest.mark.parametrize("proximal", [False, True])
def test_sgd_update_into(backend, dtype, proximal):
    rng = np.random.default_rng(9)
    start = [rand(rng, 1003, dtype=dtype), rand(rng, 1003, dtype=dtype), rand(rng, 1003, dtype=dtype) * 0.1]
    hyper = dict(lr=1e-2, momentum=0.9, l1=1e-1, l2=2e-1, penalized=990, proximal=proximal, with_penalty=True)
    plain = [backend.to_device(a.copy()) for a in start]
    values = [ops.sgd_update(*plain, **hyper) for _ in range(3)]
    arrays = [backend.to_device(a.copy()) for a in start]
    into = backend.to_device(np.zeros(1))
    for _ in range(3):
        assert ops.sgd_update(*arrays, into=into, **hyper) is None
    for a, b, name in zip(arrays, plain, ("param", "grad", "velocity")):
        same_bits(backend.to_host(a), backend.to_host(b), f"sgd_update {name} with into")
    assert float(backend.to_host(into)[0]) == pytest.approx(sum(values), rel=1e-12)


def test_penalty_into(backend, dtype):
    rng = np.random.default_rng(7)
    w, g = backend.to_device(rand(rng, 999, dtype=dtype)), backend.to_device(rand(rng, 999, dtype=dtype))
    into = backend.to_device(np.zeros(1))
    assert ops.penalty(w, 0.1, 0.2, into=into) is None
    g2 = g.copy()
    value = ops.penalty_gradient(w, g, 0.1, 0.2, with_penalty=True)
    assert ops.penalty_gradient(w, g2, 0.1, 0.2, with_penalty=True, into=into) is None
    same_bits(backend.to_host(g2), backend.to_host(g), "penalty_gradient with into")
    assert float(backend.to_host(into)[0]) == pytest.approx(ops.penalty(w, 0.1, 0.2) + value, rel=1e-12)


def test_augment_batch_offset_counter(backend):
    rng = np.random.default_rng(8)
    images = backend.to_device(rng.integers(0, 256, (40, 8, 9, 3), dtype=np.uint8))
    order = backend.to_device(rng.permutation(40).astype(np.int32))
    kw = dict(seed=11, max_shift=2, flip=True)
    # Batch 2 of size 16 (the last one is smaller: 8), at step 5.
    want = ops.augment_batch(images, order[16:32], step=5, **kw)
    assert backend.to_host(ops.augment_batch(images, order, step=5, offset=16, **kw)).shape == (24, 3, 8, 9)
    same_bits(backend.to_host(ops.augment_batch(images, order, step=5, offset=16, **kw))[:16], backend.to_host(want),
              "integer offset")
    clock = backend.to_device(np.array([5, 16], np.int64))
    out = backend.to_device(np.zeros((16, 3, 8, 9), np.float32))
    assert ops.augment_batch(images, order, step=clock[0:1], offset=clock[1:2], out=out, **kw) is out
    same_bits(backend.to_host(out), backend.to_host(want), "offset and step from an array")
    # Past the end: zero images, counted in `into` instead of raising.
    into = backend.to_device(np.zeros(1))
    clock[1] = 32
    ops.augment_batch(images, order, step=clock[0:1], offset=clock[1:2], out=out, into=into, **kw)
    host = backend.to_host(out)
    assert float(backend.to_host(into)[0]) == 8
    assert not host[8:].any() and host[:8].any()
    with pytest.raises(ValueError, match=r"^augment_batch: index: expected sample indices in \[0, 40\) but 8 of 16"):
        ops.augment_batch(images, order, step=5, offset=clock[1:2], out=out, **kw)


def test_take(backend):
    labels = backend.to_device(np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int64))
    order = backend.to_device(np.array([7, 0, 2, 5, 1, 9, -1], np.int32))
    same_bits(backend.to_host(ops.take(labels, order)), np.array([6, 3, 4, 9, 1, -1, -1], np.int32), "take")
    same_bits(backend.to_host(ops.take(labels, order, offset=2)), np.array([4, 9, 1, -1, -1], np.int32), "offset")
    out = backend.to_device(np.zeros(3, np.int32))
    offset = backend.to_device(np.array([5], np.int64))
    assert ops.take(labels, order, offset=offset, out=out) is out
    same_bits(backend.to_host(out), np.array([-1, -1, -1], np.int32), "past the end of index")
    offset[0] = 1
    ops.take(labels, order, offset=offset, out=out)
    same_bits(backend.to_host(out), np.array([3, 4, 9], np.int32), "offset from an array")
    big = backend.to_device(np.array([2 ** 40, 7], np.int64))
    same_bits(backend.to_host(ops.take(big, backend.to_device(np.array([0, 1])))), np.array([-1, 7], np.int32),
              "a value past int32 is out of range")


# ------------------------------------------------------------------ bad arguments

def cpu_case(case):
    rng = np.random.default_rng(9)
    x, w, b = rand(rng, 2, 3, 5, 5), rand(rng, 4, 3, 3, 3), rand(rng, 4)
    if case == "out-shape":
        return lambda: ops.conv2d_forward(x, w, b, 0, out=np.zeros((2, 4, 3, 4), np.float32)), ValueError, \
            r"conv2d_forward: out: expected shape \(2, 4, 3, 3\) but got \(2, 4, 3, 4\)"
    if case == "out-dtype":
        return lambda: ops.conv2d_forward(x, w, b, 0, out=np.zeros((2, 4, 3, 3))), TypeError, \
            r"conv2d_forward: out: expected float32 but got float64"
    if case == "out-overlaps-input":
        return lambda: ops.maxpool2d_forward(x, out=x.reshape(-1)[:2 * 3 * 2 * 2].reshape(2, 3, 2, 2)), ValueError, \
            r"maxpool2d_forward: out: expected memory separate from x"
    if case == "out-not-array":
        return lambda: ops.relu_forward(x, out=[1.0]), TypeError, r"relu_forward: out: expected None or an array"
    if case == "out-read-only":
        ro = np.zeros_like(x)
        ro.flags.writeable = False
        return lambda: ops.relu_forward(x, out=ro), ValueError, r"relu_forward: out: expected a writable array"
    if case == "out-strided":
        return lambda: ops.relu_forward(x, out=np.zeros((2, 3, 5, 10), np.float32)[..., ::2]), ValueError, \
            r"relu_forward: out: expected a C-contiguous array"
    if case == "dx-without-input-grad":
        dy = rand(rng, 2, 4, 3, 3)
        return lambda: ops.conv2d_backward(x, w, dy, 0, input_grad=False, dx=np.zeros_like(x)), ValueError, \
            r"conv2d_backward: dx: expected None when input_grad is False"
    if case == "into-shape":
        return lambda: ops.penalty(w, 0.1, 0.1, into=np.zeros(2)), ValueError, r"penalty: into: expected shape \(1,\)"
    if case == "into-dtype":
        return lambda: ops.penalty(w, 0.1, 0.1, into=np.zeros(1, np.float32)), TypeError, \
            r"penalty: into: expected float64 but got float32"
    if case == "into-without-value":
        p = rand(rng, 10)
        return lambda: ops.adam_update(p, p.copy(), p.copy(), p.copy(), step=1, lr=1e-3, into=np.zeros(1)), \
            ValueError, r"adam_update: into: expected None when with_penalty is False"
    if case == "step-array-dtype":
        p = rand(rng, 10)
        return lambda: ops.adam_update(p, p.copy(), p.copy(), p.copy(), step=np.array([1], np.int32), lr=1e-3), \
            TypeError, r"adam_update: step: expected an integer >= 1 or an int64 array of shape \(1,\) but got a int32"
    if case == "step-array-shape":
        p = rand(rng, 10)
        return lambda: ops.adam_update(p, p.copy(), p.copy(), p.copy(), step=np.array([1, 2]), lr=1e-3), TypeError, \
            r"adam_update: step: .* but got a int64 array of shape \(2,\)"
    if case == "argmax-dtype":
        return lambda: ops.maxpool2d_forward(x, argmax=np.zeros((2, 3, 2, 2), np.int8)), TypeError, \
            r"maxpool2d_forward: argmax: expected uint8 but got int8"
    if case == "argmax-shape":
        return lambda: ops.maxpool2d_backward(x, rand(rng, 2, 3, 2, 2), argmax=np.zeros((2, 3, 2, 3), np.uint8)), \
            ValueError, r"maxpool2d_backward: argmax: expected shape \(2, 3, 2, 2\) but got \(2, 3, 2, 3\)"
    images, index = np.zeros((4, 6, 6, 3), np.uint8), np.arange(4)
    if case == "offset-array-without-out":
        return lambda: ops.augment_batch(images, index, seed=0, step=0, offset=np.array([1])), ValueError, \
            r"augment_batch: out: expected an array \(it sets the batch size\) when offset is an array"
    if case == "offset-past-end":
        return lambda: ops.take(index, index, offset=5), ValueError, \
            r"take: offset: expected an integer in \[0, 4\] \(the length of index\) but got 5"
    if case == "take-out-dtype":
        return lambda: ops.take(index, index, out=np.zeros(4, np.int64)), TypeError, \
            r"take: out: expected int32 but got int64"
    if case == "take-float-values":
        return lambda: ops.take(np.zeros(4), index), TypeError, r"take: values: expected an integer dtype"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "out-shape", "out-dtype", "out-overlaps-input", "out-not-array", "out-read-only", "out-strided",
    "dx-without-input-grad", "into-shape", "into-dtype", "into-without-value", "step-array-dtype", "step-array-shape",
    "offset-array-without-out", "offset-past-end", "take-out-dtype", "take-float-values", "argmax-dtype",
    "argmax-shape"])
def test_bad_arguments(case):
    call, exc, pattern = cpu_case(case)
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert type(info.value) is exc
