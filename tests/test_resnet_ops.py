"""The kernels ResNet-20 adds (batch normalization, global average pooling, the residual add with
the option-A shortcut) on every backend present against the NumPy float64 reference, in float32
and float64, on awkward shapes: batch 1, one value per plane, odd H and W, channel counts no
multiple of any tile, more values per channel than one reduction block (and than many). Also:
preallocated outputs give the same bits, results repeat bit for bit, and on the CPU they do not
depend on the number of threads."""

import numpy as np
import pytest

from bits import assert_thread_count_independent, digest
from conftest import CUDA_SKIP, TOLERANCES, assert_close
from pyregnet import ops
from pyregnet import reference as ref

# (N, C, H, W)
BN_SHAPES = [
    (1, 1, 1, 2),        # the fewest values a batch statistic allows
    (2, 5, 1, 1),        # 1x1 planes: the statistics run over the batch only
    (1, 3, 5, 7),        # batch 1, odd H and W
    (3, 13, 11, 13),     # channels no multiple of a tile
    (2, 70, 31, 30),     # C > 64
    (128, 16, 16, 16),   # a ResNet-20 stage-2 batch: 32,768 values per channel, 8 GPU splits
    (1, 2, 300, 301),    # one huge plane: 90,300 values, splits that do not divide it
]
POOL_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 13, 8, 8), (2, 70, 31, 30), (1, 5, 300, 301)]
# (N, C, H, W, K, stride)
RESIDUAL_CASES = [
    (1, 1, 1, 1, 1, 1),      # everything 1
    (2, 3, 5, 7, 3, 1),      # identity shortcut, odd H and W
    (2, 3, 5, 7, 6, 2),      # option A, odd H and W: the last row and column are kept
    (3, 13, 11, 13, 17, 2),  # K - C not a multiple of C
    (1, 16, 32, 32, 32, 2),  # ResNet-20's first downsampling block
    (2, 5, 9, 10, 5, 3),     # stride 3, no new channels
    (1, 2, 4, 4, 7, 1),      # new channels without subsampling
    (4, 32, 16, 16, 64, 2),  # ResNet-20's second downsampling block, larger than one grid pass
]


def rand(rng, shape, dtype, loc=0.0):
    return (loc + rng.standard_normal(shape)).astype(dtype)


def channel_params(rng, C, dtype):
    gamma, beta = rand(rng, (C,), dtype, 1.0), rand(rng, (C,), dtype)
    running_mean, running_var = rand(rng, (C,), dtype), (0.5 + rng.random(C)).astype(dtype)
    return gamma, beta, running_mean, running_var


def assert_close_to_terms(got, want, terms, dtype, what):
    """assert_close with the absolute tolerance relative to the terms that `want` sums: the
    training-mode dx is gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), which nearly
    cancels where a channel has few values (exactly 0 at M = 2 but for eps); a batch mean of
    centred values is near 0."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    magnitude = float(np.max(np.abs(terms)))
    err = float(np.max(np.abs(got - want)))
    print(f"{what}: max abs error {err:.3e} = {err / magnitude:.2e} * max|terms| ({np.dtype(dtype).name})")
    np.testing.assert_allclose(got, want, rtol=TOLERANCES[dtype]["rtol"], atol=TOLERANCES[dtype]["scale"] * magnitude,
                               err_msg=what)


def ids(case):
    return "x".join(map(str, case))


@pytest.mark.parametrize("shape", BN_SHAPES, ids=ids)
@pytest.mark.parametrize("loc", [0.0, 50.0], ids=["centred", "offset"])
def test_batchnorm_training(backend, dtype, shape, loc):
    rng = np.random.default_rng(21)
    # An offset of 50 standard deviations: a one-pass variance without the shift would lose
    # float32's digits to cancellation.
    x = rand(rng, shape, dtype, loc)
    gamma, beta, rmean, rvar = channel_params(rng, shape[1], dtype)
    # Copies: on the CPU to_device may return the array itself, and the running statistics
    # are updated in place.
    dev = [backend.to_device(a.copy()) for a in (x, gamma, beta, rmean, rvar)]
    y, mean, invstd = ops.batchnorm_forward(*dev, momentum=0.25, eps=1e-3)
    want = ref.batchnorm_forward(x, gamma, beta, rmean, rvar, momentum=0.25, eps=1e-3)
    for name, got, exp in zip(("y", "invstd", "running_mean", "running_var"), (y, invstd, dev[3], dev[4]),
                              (want[0], *want[2:])):
        assert_close(backend.to_host(got), exp, dtype, name)
    # A centred batch has a mean near 0 from terms near 1: the error scales with the terms.
    assert_close_to_terms(backend.to_host(mean), want[1], x, dtype, "mean")

    dy = rand(rng, shape, dtype)
    dx, dgamma, dbeta = ops.batchnorm_backward(dev[0], dev[1], backend.to_device(dy), mean, invstd)
    # From the statistics the forward pass returned, as the op specifies: they are of x's dtype,
    # and a float32 mean is off by up to 6e-8 * |mean|, which is 3e-6 standard deviations at
    # the offset of 50 (PyTorch saves float32 statistics too).
    stats = [backend.to_host(a).astype(np.float64) for a in (mean, invstd)]
    want_dx, want_dgamma, want_dbeta = ref.batchnorm_backward(x, gamma, dy, *stats)
    assert_close_to_terms(backend.to_host(dx), want_dx, gamma[:, None, None] * stats[1][:, None, None] * dy, dtype,
                          "dx")
    assert_close(backend.to_host(dgamma), want_dgamma, dtype, "dgamma")
    assert_close(backend.to_host(dbeta), want_dbeta, dtype, "dbeta")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 5, 7), (3, 13, 11, 13), (128, 16, 16, 16)], ids=ids)
def test_batchnorm_evaluation(backend, dtype, shape):
    rng = np.random.default_rng(22)
    x = rand(rng, shape, dtype)
    gamma, beta, rmean, rvar = channel_params(rng, shape[1], dtype)
    dev = [backend.to_device(a) for a in (x, gamma, beta, rmean, rvar)]
    y, mean, invstd = ops.batchnorm_forward(*dev, training=False)
    want = ref.batchnorm_forward(x, gamma, beta, rmean, rvar, training=False)
    for name, got, exp in zip(("y", "mean", "invstd"), (y, mean, invstd), want):
        assert_close(backend.to_host(got), exp, dtype, name)
    # Evaluation reads the running statistics and leaves them as they were, to the bit.
    np.testing.assert_array_equal(backend.to_host(dev[3]), rmean)
    np.testing.assert_array_equal(backend.to_host(dev[4]), rvar)

    dy = rand(rng, shape, dtype)
    grads = ops.batchnorm_backward(dev[0], dev[1], backend.to_device(dy), mean, invstd, training=False)
    want_grads = ref.batchnorm_backward(x, gamma, dy, want[1], want[2], training=False)
    for name, got, exp in zip(("dx", "dgamma", "dbeta"), grads, want_grads):
        assert_close(backend.to_host(got), exp, dtype, name)


def test_batchnorm_running_statistics_over_steps(backend, dtype):
    # Momentum 1 makes the running statistics the last batch's (variance unbiased); momentum 0
    # leaves them alone; three steps of 0.1 follow PyTorch's recurrence.
    rng = np.random.default_rng(23)
    shape = (4, 3, 2, 3)
    gamma, beta, rmean, rvar = channel_params(rng, 3, dtype)
    for momentum in (1.0, 0.0, 0.1):
        dev = [backend.to_device(a.copy()) for a in (gamma, beta, rmean, rvar)]
        want_mean, want_var = rmean, rvar
        for _ in range(3):
            x = rand(rng, shape, dtype, 2.0)
            ops.batchnorm_forward(backend.to_device(x), *dev, momentum=momentum)
            *_, want_mean, want_var = ref.batchnorm_forward(x, gamma, beta, want_mean, want_var, momentum=momentum)
        if momentum == 1.0:
            np.testing.assert_allclose(want_var, x.astype(np.float64).var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
        assert_close(backend.to_host(dev[2]), want_mean, dtype, f"running_mean, momentum {momentum}")
        assert_close(backend.to_host(dev[3]), want_var, dtype, f"running_var, momentum {momentum}")


def test_batchnorm_normalizes(backend, dtype):
    # With gamma = 1 and beta = 0 each channel of y has mean 0 and (biased) variance
    # var / (var + eps): a property, not a comparison with the reference.
    rng = np.random.default_rng(24)
    x = (3.0 * rng.standard_normal((8, 5, 6, 7)) - 2.0).astype(dtype)
    ones, zeros = np.ones(5, dtype), np.zeros(5, dtype)
    y, _, _ = ops.batchnorm_forward(*(backend.to_device(a) for a in (x, ones, zeros, zeros.copy(), ones.copy())),
                                    eps=1e-5)
    y = backend.to_host(y).astype(np.float64)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=tol)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=tol)


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=ids)
def test_global_avgpool(backend, dtype, shape):
    rng = np.random.default_rng(25)
    x = rand(rng, shape, dtype)
    y = ops.global_avgpool_forward(backend.to_device(x))
    assert_close(backend.to_host(y), ref.global_avgpool_forward(x), dtype, "y")
    dy = rand(rng, shape[:2], dtype)
    dx = ops.global_avgpool_backward(backend.to_device(x), backend.to_device(dy))
    # dy / HW divided in double and rounded once: the reference's value, rounded.
    np.testing.assert_array_equal(backend.to_host(dx), ref.global_avgpool_backward(x, dy).astype(dtype))


@pytest.mark.parametrize("case", RESIDUAL_CASES, ids=ids)
@pytest.mark.parametrize("relu", [False, True], ids=["add", "add-relu"])
def test_residual_add(backend, dtype, case, relu):
    N, C, H, W, K, stride = case
    P, Q = -(-H // stride), -(-W // stride)
    rng = np.random.default_rng(26)
    main, x = rand(rng, (N, K, P, Q), dtype), rand(rng, (N, C, H, W), dtype)
    y = ops.residual_add_forward(backend.to_device(main), backend.to_device(x), stride, relu=relu)
    # One addition (and a max) per element, rounded once: the reference rounded to the dtype.
    want = ref.residual_add_forward(main, x, stride, relu=relu).astype(dtype)
    np.testing.assert_array_equal(backend.to_host(y), want)

    dy, grad = rand(rng, (N, K, P, Q), dtype), rand(rng, (N, C, H, W), dtype)
    out = ops.residual_add_backward(backend.to_device(dy), backend.to_device(grad), stride)
    np.testing.assert_array_equal(backend.to_host(out), ref.residual_add_backward(dy, grad, stride).astype(dtype))


def test_residual_add_in_place(backend, dtype):
    rng = np.random.default_rng(27)
    main, x = rand(rng, (2, 6, 3, 4), dtype), rand(rng, (2, 3, 5, 7), dtype)
    want = backend.to_host(ops.residual_add_forward(backend.to_device(main), backend.to_device(x), 2, relu=True))
    main_dev = backend.to_device(main)
    assert ops.residual_add_forward(main_dev, backend.to_device(x), 2, relu=True, out=main_dev) is main_dev
    np.testing.assert_array_equal(backend.to_host(main_dev), want)

    dy, grad = rand(rng, (2, 6, 3, 4), dtype), rand(rng, (2, 3, 5, 7), dtype)
    want = backend.to_host(ops.residual_add_backward(backend.to_device(dy), backend.to_device(grad), 2))
    grad_dev = backend.to_device(grad)
    assert ops.residual_add_backward(backend.to_device(dy), grad_dev, 2, out=grad_dev) is grad_dev
    np.testing.assert_array_equal(backend.to_host(grad_dev), want)


def test_preallocated_outputs(backend, dtype):
    # A captured step writes into arrays it owns: the same bits as the returned ones.
    rng = np.random.default_rng(28)
    x, dy = rand(rng, (3, 5, 4, 6), dtype), rand(rng, (3, 5, 4, 6), dtype)
    gamma, beta, rmean, rvar = channel_params(rng, 5, dtype)

    def stats():
        return [backend.to_device(a.copy()) for a in (rmean, rvar)]

    xd, gd, bd, dyd = (backend.to_device(a) for a in (x, gamma, beta, dy))
    for training in (True, False):
        want = [backend.to_host(a) for a in ops.batchnorm_forward(xd, gd, bd, *stats(), training=training)]
        bufs = [backend.to_device(np.full(a.shape, np.nan, dtype)) for a in want]
        got = ops.batchnorm_forward(xd, gd, bd, *stats(), training=training, out=bufs[0], mean=bufs[1],
                                    invstd=bufs[2])
        for g, buf, w in zip(got, bufs, want):
            assert g is buf
            np.testing.assert_array_equal(backend.to_host(buf), w)
        mean, invstd = bufs[1], bufs[2]
        want = [backend.to_host(a) for a in ops.batchnorm_backward(xd, gd, dyd, mean, invstd, training=training)]
        bufs = [backend.to_device(np.full(a.shape, np.nan, dtype)) for a in want]
        got = ops.batchnorm_backward(xd, gd, dyd, mean, invstd, training=training, dx=bufs[0], dgamma=bufs[1],
                                     dbeta=bufs[2])
        for g, buf, w in zip(got, bufs, want):
            assert g is buf
            np.testing.assert_array_equal(backend.to_host(buf), w)

    want = backend.to_host(ops.global_avgpool_forward(xd))
    buf = backend.to_device(np.full(want.shape, np.nan, dtype))
    assert ops.global_avgpool_forward(xd, out=buf) is buf
    np.testing.assert_array_equal(backend.to_host(buf), want)
    want = backend.to_host(ops.global_avgpool_backward(xd, buf))
    dx = backend.to_device(np.full(x.shape, np.nan, dtype))
    assert ops.global_avgpool_backward(xd, buf, out=dx) is dx
    np.testing.assert_array_equal(backend.to_host(dx), want)


# ------------------------------------------------------------------ reproducibility

def run_all(to_device, to_host, dtype):
    """Every reduction of these ops on fixed data; returns the results as host arrays."""
    rng = np.random.default_rng(29)
    x = to_device(rand(rng, (16, 7, 19, 21), dtype, 0.5))
    gamma, beta, rmean, rvar = (to_device(a) for a in channel_params(rng, 7, dtype))
    dy = to_device(rand(rng, (16, 7, 19, 21), dtype))
    y, mean, invstd = ops.batchnorm_forward(x, gamma, beta, rmean, rvar)
    grads = ops.batchnorm_backward(x, gamma, dy, mean, invstd)
    pooled = ops.global_avgpool_forward(x)
    return [to_host(a) for a in (y, mean, invstd, rmean, rvar, *grads, pooled)]


def test_repeatable_bit_for_bit(backend, dtype):
    first = run_all(backend.to_device, backend.to_host, dtype)
    assert digest(run_all(backend.to_device, backend.to_host, dtype)) == digest(first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_bits_do_not_depend_on_the_thread_count(dtype):
    assert_thread_count_independent("test_resnet_ops", dtype)


# ------------------------------------------------------------------ CUDA graph capture

def block_step(s):
    """One block's forward and backward through every new op, into the preallocated arrays of s."""
    ops.batchnorm_forward(s["x"], s["gamma"], s["beta"], s["running_mean"], s["running_var"], out=s["y"],
                          mean=s["mean"], invstd=s["invstd"])
    ops.residual_add_forward(s["y"], s["skip"], 2, relu=True, out=s["y"])
    ops.global_avgpool_forward(s["y"], out=s["pooled"])
    ops.global_avgpool_backward(s["y"], s["dpooled"], out=s["dy"])
    ops.relu_backward(s["y"], s["dy"], out=s["dy"])
    ops.residual_add_backward(s["dy"], s["dskip"], 2, out=s["dskip"])  # accumulates over the steps
    ops.batchnorm_backward(s["x"], s["gamma"], s["dy"], s["mean"], s["invstd"], dx=s["dx"], dgamma=s["dgamma"],
                           dbeta=s["dbeta"])


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_captured_cuda_graph_gives_the_eager_bits(dtype):
    # Nothing in these ops synchronizes or allocates outside the stream: a step captured as a
    # CUDA graph (as pyregnet.engine does) replays to the same bits as the launches themselves.
    import cupy as cp
    rng = np.random.default_rng(30)
    host = dict(x=rand(rng, (4, 8, 9, 9), dtype, 0.3), skip=rand(rng, (4, 4, 17, 17), dtype),
                dpooled=rand(rng, (4, 8), dtype), dskip=np.zeros((4, 4, 17, 17), dtype))
    host.update(zip(("gamma", "beta", "running_mean", "running_var"), channel_params(rng, 8, dtype)))
    outputs = dict(y=(4, 8, 9, 9), mean=(8,), invstd=(8,), pooled=(4, 8), dy=(4, 8, 9, 9), dx=(4, 8, 9, 9),
                   dgamma=(8,), dbeta=(8,))

    def state():
        s = {k: cp.asarray(v) for k, v in host.items()}
        s.update({k: cp.full(shape, np.nan, dtype) for k, shape in outputs.items()})
        return s

    stream = cp.cuda.Stream(non_blocking=False)
    with stream:
        eager, captured = state(), state()
        block_step(eager)
        block_step(eager)
        block_step(captured)  # the first step eagerly, as the engine does: it loads the kernels
        stream.begin_capture()
        try:
            block_step(captured)
        finally:
            graph = stream.end_capture()
        graph.launch(stream=stream)
        stream.synchronize()
    for k in eager:
        np.testing.assert_array_equal(cp.asnumpy(captured[k]), cp.asnumpy(eager[k]), err_msg=k)
    assert not np.isnan(cp.asnumpy(eager["dx"])).any()
