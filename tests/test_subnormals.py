"""Subnormal operands on every backend present.

With flushing (build_info()["flush_denormals"], the default build), every float32 op computes as
if each value below the smallest normal float32 were zero, on every thread that runs it, and
leaves the caller's IEEE mode alone; float64 keeps IEEE subnormals on both backends (nvcc's -ftz
acts on float32 only, and the CPU leaves float64 ops in the caller's mode). A strict-IEEE build
(PYREGNET_FLUSH_DENORMALS=OFF) must give the IEEE results instead, so each case compares with the
reference of the inputs the build should see: flushed, or as given.

The inputs are built so that flushing changes the result far beyond the tolerance: a subnormal
(2^-130 for float32) meets a huge value (2^126) in a product, so an unflushed product adds about
1/16 to a sum; or a subnormal decides a comparison (ReLU's gradient, a pooling window's or a
row's argmax, sign(w), |w| <= 0). Sizes spread the work over every thread of the team, and the
whole module runs again with three OpenMP threads, so that an op whose worker threads missed
the mode fails here even on a one-core machine. augment_batch and take have no float inputs.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyregnet
from conftest import assert_close
from pyregnet import ops
from pyregnet import reference as ref

FLUSHES = pyregnet.build_info()["flush_denormals"]
# A subnormal magnitude and a huge one whose product is 1/16 (1/64 in float64).
SUB = {np.float32: 2.0 ** -130, np.float64: 2.0 ** -1026}
HUGE = {np.float32: 2.0 ** 126, np.float64: 2.0 ** 1020}


def flushes(dtype):
    return FLUSHES and dtype == np.float32


def as_seen(a, dtype):
    """What the build computes with: values below the smallest normal as zeros when it flushes."""
    a = np.asarray(a)
    if not flushes(dtype):
        return a
    return np.where(np.abs(a) < np.finfo(dtype).tiny, 0, a).astype(a.dtype)


def mixed(rng, shape, dtype, sub=False, huge=False):
    """N(0, 1) values; subnormal ones (random sign, 0.5 to 1.5 times SUB) where the boolean mask
    `sub` is set, huge ones (the same around HUGE) where `huge` is."""
    scale = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    a = np.where(sub, SUB[dtype] * scale, rng.standard_normal(shape))
    a = np.where(huge, HUGE[dtype] * scale, a)
    assert np.all(np.isfinite(a.astype(dtype)))
    return a.astype(dtype)


def check_ieee_caller():
    """The calling thread's float arithmetic still produces subnormals after an op."""
    for dtype in (np.float32, np.float64):
        product = dtype(SUB[dtype]) * dtype(1.0)
        assert product != 0 and abs(product) < np.finfo(dtype).tiny, f"the op left {np.dtype(dtype).name} flushing"


def close(got, want, dtype, what):
    assert_close(as_seen(got, dtype), want, dtype, what)


@pytest.mark.parametrize("relu", [False, True])
def test_dense_forward(backend, dtype, relu):
    rng = np.random.default_rng(1)
    N, fan_in, fan_out = 37, 150, 70
    cols = np.arange(fan_in) % 3 == 1  # subnormal features, met by huge weights only
    x = mixed(rng, (N, fan_in), dtype, sub=cols[None, :])
    w = mixed(rng, (fan_out, fan_in), dtype, huge=cols[None, :])
    b = mixed(rng, (fan_out,), dtype)
    y = ops.dense_forward(*map(backend.to_device, (x, w, b)), relu=relu)
    want = ref.dense_forward(as_seen(x, dtype), w, b)
    close(backend.to_host(y), np.maximum(want, 0) if relu else want, dtype, "y")
    check_ieee_caller()


def backward_operands(rng, dtype, x_shape, w_shape, dy_shape):
    """x, w, dy for a backward pass: dy is subnormal on some samples (whose x is huge) and on some
    output units (whose weights are huge), so that every product with a huge factor has a
    subnormal one and nothing overflows."""
    samples = (np.arange(x_shape[0]) % 2 == 0).reshape((-1,) + (1,) * (len(x_shape) - 1))
    units = (np.arange(w_shape[0]) % 3 == 0).reshape((-1,) + (1,) * (len(w_shape) - 1))
    units_in_dy = units.reshape((1, -1) + (1,) * (len(dy_shape) - 2))
    x = mixed(rng, x_shape, dtype, huge=samples)
    w = mixed(rng, w_shape, dtype, huge=units)
    dy = mixed(rng, dy_shape, dtype, sub=samples.reshape((-1,) + (1,) * (len(dy_shape) - 1)) | units_in_dy)
    return x, w, dy


def test_dense_backward(backend, dtype):
    rng = np.random.default_rng(2)
    N, fan_in, fan_out = 37, 150, 70
    x, w, dy = backward_operands(rng, dtype, (N, fan_in), (fan_out, fan_in), (N, fan_out))
    got = ops.dense_backward(*map(backend.to_device, (x, w, dy)))
    for name, g, want in zip(("dx", "dw", "db"), got, ref.dense_backward(x, w, as_seen(dy, dtype))):
        close(backend.to_host(g), want, dtype, name)
    check_ieee_caller()


@pytest.mark.parametrize("stride", [1, 2], ids=["stride1", "stride2"])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_forward(backend, dtype, relu, stride):
    rng = np.random.default_rng(3)
    channels = (np.arange(5) % 2 == 1)  # subnormal input channels, met by huge filter taps only
    x = mixed(rng, (9, 5, 9, 8), dtype, sub=channels[None, :, None, None])
    w = mixed(rng, (7, 5, 3, 3), dtype, huge=channels[None, :, None, None])
    b = mixed(rng, (7,), dtype)
    y = ops.conv2d_forward(*map(backend.to_device, (x, w, b)), 1, stride=stride, relu=relu)
    want = ref.conv2d_forward(as_seen(x, dtype), w, b, 1, stride)
    close(backend.to_host(y), np.maximum(want, 0) if relu else want, dtype, "y")
    check_ieee_caller()


@pytest.mark.parametrize("stride", [1, 2], ids=["stride1", "stride2"])
def test_conv2d_backward(backend, dtype, stride):
    rng = np.random.default_rng(4)
    P, Q = (9 + 2 - 3) // stride + 1, (8 + 2 - 3) // stride + 1
    x, w, dy = backward_operands(rng, dtype, (9, 5, 9, 8), (7, 5, 3, 3), (9, 7, P, Q))
    got = ops.conv2d_backward(*map(backend.to_device, (x, w, dy)), 1, stride=stride)
    for name, g, want in zip(("dx", "dw", "db"), got, ref.conv2d_backward(x, w, as_seen(dy, dtype), 1, stride)):
        close(backend.to_host(g), want, dtype, name)
    check_ieee_caller()


def test_maxpool2d(backend, dtype):
    rng = np.random.default_rng(5)
    N, C, H, W = 4, 6, 17, 18
    P, Q = H // 2, W // 2
    # Half the windows hold four distinct positive subnormals in random order: their maximum is
    # wherever the largest is, or the first element when all four count as zero.
    windows = mixed(rng, (N, C, P, Q, 4), dtype)
    picked = rng.random((N, C, P, Q)) < 0.5
    magnitudes = SUB[dtype] * rng.permuted(np.broadcast_to([0.6, 0.8, 1.0, 1.2], windows.shape), axis=-1)
    windows[picked] = magnitudes[picked].astype(dtype)
    x = mixed(rng, (N, C, H, W), dtype)  # the odd last column stays normal
    x[:, :, :2 * P, :2 * Q] = windows.reshape(N, C, P, Q, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, 2 * P, 2 * Q)
    assert np.array_equal(ref._windows(x), windows)
    dy = mixed(rng, (N, C, H // 2, W // 2), dtype)
    seen = as_seen(x, dtype)
    argmax = backend.to_device(np.zeros(dy.shape, np.uint8))
    y = ops.maxpool2d_forward(backend.to_device(x), argmax=argmax)
    close(backend.to_host(y), ref.maxpool2d_forward(seen), dtype, "y")
    np.testing.assert_array_equal(backend.to_host(argmax), ref._windows(seen).argmax(axis=-1))
    for stored in (None, argmax):
        dx = ops.maxpool2d_backward(backend.to_device(x), backend.to_device(dy), argmax=stored)
        close(backend.to_host(dx), ref.maxpool2d_backward(seen, dy), dtype, "dx")
    check_ieee_caller()


def test_relu(backend, dtype):
    rng = np.random.default_rng(6)
    n = 100_003
    y = mixed(rng, (n,), dtype, sub=rng.random(n) < 0.5)
    dy = mixed(rng, (n,), dtype)
    close(backend.to_host(ops.relu_forward(backend.to_device(y))), ref.relu_forward(as_seen(y, dtype)), dtype, "y")
    dx = ops.relu_backward(backend.to_device(y), backend.to_device(dy))
    close(backend.to_host(dx), ref.relu_backward(as_seen(y, dtype), dy), dtype, "dx")
    check_ieee_caller()


def test_softmax_cross_entropy(backend, dtype):
    rng = np.random.default_rng(7)
    N, classes = 64, 10
    logits = mixed(rng, (N, classes), dtype)
    # Every other row: distinct positive subnormals, labelled with their largest, which is the
    # argmax under IEEE and loses to the first class when they all count as zero.
    tiny_rows = np.arange(N) % 2 == 0
    logits[tiny_rows] = (SUB[dtype] * rng.uniform(0.5, 1.5, (tiny_rows.sum(), classes))).astype(dtype)
    labels = np.where(tiny_rows, logits.argmax(axis=1), rng.integers(0, classes, N)).astype(np.int64)
    loss, dlogits, correct = ops.softmax_cross_entropy(backend.to_device(logits), backend.to_device(labels))
    want_loss, want_dlogits, want_correct = ref.softmax_cross_entropy(as_seen(logits, dtype), labels)
    assert correct == want_correct
    close(np.float64(loss), want_loss, dtype, "loss")
    close(backend.to_host(dlogits), want_dlogits, dtype, "dlogits")
    check_ieee_caller()


# Longer than two 16,384-element chunks of the CPU's reductions: every thread gets one.
N_WEIGHTS = 3 * 2 ** 14 + 5


def test_penalty(backend, dtype):
    # All subnormal: with flushing the value is exactly 0, else l1 * sum|w| + l2 * sum w^2 with
    # the lambdas scaled so that both terms are about 1/16 per weight (w^2 underflows in float64).
    rng = np.random.default_rng(8)
    w = mixed(rng, (N_WEIGHTS,), dtype, sub=True)
    l1, l2 = HUGE[dtype], (2.0 ** 256 if dtype == np.float32 else 1.0)
    value = ops.penalty(backend.to_device(w), l1, l2)
    close(np.float64(value), ref.penalty(as_seen(w, dtype), l1, l2), dtype, "penalty")
    check_ieee_caller()


@pytest.mark.parametrize("with_penalty", [False, True])
def test_penalty_gradient(backend, dtype, with_penalty):
    rng = np.random.default_rng(9)
    w = mixed(rng, (N_WEIGHTS,), dtype, sub=rng.random(N_WEIGHTS) < 0.5)
    grad = mixed(rng, (N_WEIGHTS,), dtype)
    # sign(w) of a subnormal is 0 when flushed: l1 changes the gradient by 0.5.
    g_dev = backend.to_device(grad.copy())
    value = ops.penalty_gradient(backend.to_device(w), g_dev, 0.5, 0.25, penalized=N_WEIGHTS - 7,
                                 with_penalty=with_penalty)
    want_g = grad.astype(np.float64)
    want_value = ref.penalty_gradient(as_seen(w, dtype), want_g, 0.5, 0.25, penalized=N_WEIGHTS - 7,
                                      with_penalty=with_penalty)
    close(backend.to_host(g_dev), want_g, dtype, "grad")
    if with_penalty:
        close(np.float64(value), want_value, dtype, "penalty")
    # All subnormal with a huge l1: the value is exactly 0 when flushed, about 1/16 per weight else.
    w_sub = mixed(rng, (N_WEIGHTS,), dtype, sub=True)
    g_dev = backend.to_device(grad.copy())
    value = ops.penalty_gradient(backend.to_device(w_sub), g_dev, HUGE[dtype], 0.0, with_penalty=True)
    want_g = grad.astype(np.float64)
    want_value = ref.penalty_gradient(as_seen(w_sub, dtype), want_g, HUGE[dtype], 0.0, with_penalty=True)
    close(backend.to_host(g_dev), want_g, dtype, "grad (huge l1)")
    close(np.float64(value), want_value, dtype, "penalty (huge l1)")
    check_ieee_caller()


@pytest.mark.parametrize("with_penalty", [False, True])
def test_adam_update(backend, dtype, with_penalty):
    rng = np.random.default_rng(10)
    n, penalized = N_WEIGHTS, N_WEIGHTS - 7
    w = mixed(rng, (n,), dtype, sub=rng.random(n) < 0.5)
    grad = mixed(rng, (n,), dtype, sub=rng.random(n) < 0.25)
    # |grad| >= 1 where normal: the penalty gradient (about 0.5) cannot cancel it, which would
    # leave v tiny and the step ill-conditioned, in float32 rounding, whatever the subnormals do.
    grad = np.where(np.abs(grad) < np.finfo(dtype).tiny, grad, np.sign(grad) * (1 + np.abs(grad))).astype(dtype)
    m = mixed(rng, (n,), dtype, sub=rng.random(n) < 0.25)
    v = np.abs(mixed(rng, (n,), dtype, sub=rng.random(n) < 0.25))
    dev = [backend.to_device(a.copy()) for a in (w, grad, m, v)]
    hyper = dict(step=3, lr=1e-3, l1=0.5, l2=0.01, penalized=penalized, with_penalty=with_penalty)
    value = ops.adam_update(*dev, **hyper)
    want = [as_seen(a, dtype).astype(np.float64) for a in (w, m, v)]
    want_value = ref.adam_update(want[0], as_seen(grad, dtype), want[1], want[2], eps=1e-7, **hyper)
    for name, got, wanted in zip(("param", "m", "v"), (dev[0], dev[2], dev[3]), want):
        close(backend.to_host(got), wanted, dtype, name)
    if with_penalty:
        close(np.float64(value), want_value, dtype, "penalty")
    check_ieee_caller()


def test_sparsity_count(backend, dtype):
    rng = np.random.default_rng(11)
    w = mixed(rng, (N_WEIGHTS,), dtype, sub=rng.random(N_WEIGHTS) < 0.3)
    w[rng.random(N_WEIGHTS) < 0.1] = 0
    w_dev = backend.to_device(w)
    # |w| <= 0 counts the subnormals too when they count as zero ...
    assert ops.sparsity_count(w_dev, 0.0) == ref.sparsity_count(as_seen(w, dtype), 0.0)
    # ... and a threshold at the smallest normal float counts the same in either mode.
    tiny = float(np.finfo(dtype).tiny)
    assert ops.sparsity_count(w_dev, tiny) == ref.sparsity_count(w, tiny)
    check_ieee_caller()


# ------------------------------------------------------------------ the ResNet ops

def close_in_parts(got, want, dtype, what):
    """close() on the results below the smallest normal and on the rest separately: a tolerance
    scaled by the normal results would not see the subnormal ones, which an IEEE build must keep
    (and a flushing one must not turn into normal values). Subnormals have a fixed absolute
    spacing, so each of those results may be off by a rounding or two: 2 units of the last place."""
    got, want = np.asarray(got), np.asarray(want)
    small = np.abs(want) < np.finfo(dtype).tiny
    got_small, want_small = as_seen(got[small], dtype).astype(np.float64), as_seen(want[small], dtype)
    err = float(np.max(np.abs(got_small - want_small), initial=0.0))
    ulp = float(np.finfo(dtype).smallest_subnormal)
    print(f"{what} (results below the smallest normal): max abs error {err / ulp:.1f} units ({np.dtype(dtype).name})")
    np.testing.assert_allclose(got_small, want_small, rtol=0, atol=2 * ulp, err_msg=what)
    close(got[~small], want[~small], dtype, what)


# batch norm's gamma on channels of subnormals in training mode (see test_batchnorm_forward)
GAMMA_TRAINING = {np.float32: 2.0 ** 118, np.float64: 2.0 ** 1014}


def channel_mask(C):
    return np.arange(C) % 2 == 1


@pytest.mark.parametrize("training", [False, True], ids=["evaluation", "training"])
def test_batchnorm_forward(backend, dtype, training):
    rng = np.random.default_rng(20)
    N, C, H, W = 6, 8, 5, 7
    sub = channel_mask(C)
    x = mixed(rng, (N, C, H, W), dtype, sub=sub[None, :, None, None])
    if training:
        # Whole channels of subnormals: flushed, the channel is constant and y = beta; else
        # (x - mean) * invstd * gamma with invstd = 1 / sqrt(eps) ~ 2^8.3 and gamma ~ 2^118 (2^1014
        # in float64), so that an unflushed x moves y by about 1/13 and invstd * gamma stays finite.
        gamma = np.where(sub, GAMMA_TRAINING[dtype] * rng.uniform(0.5, 1.0, C), 1 + rng.standard_normal(C)).astype(dtype)
    else:
        gamma = mixed(rng, (C,), dtype, huge=sub)  # meets the subnormal x through invstd ~ 1
    beta = mixed(rng, (C,), dtype)
    running_mean = np.where(sub, 0, rng.standard_normal(C)).astype(dtype)
    running_var = (0.5 + rng.random(C)).astype(dtype)
    stats = [backend.to_device(a.copy()) for a in (running_mean, running_var)]
    got = ops.batchnorm_forward(*map(backend.to_device, (x, gamma, beta)), *stats, training=training)
    want = ref.batchnorm_forward(as_seen(x, dtype), gamma, beta, running_mean, running_var, training=training)
    for name, g, w in zip(("y", "mean", "invstd", "running_mean", "running_var"), (*got, *stats), want):
        close_in_parts(backend.to_host(g), w, dtype, name)
    check_ieee_caller()


@pytest.mark.parametrize("training", [False, True], ids=["evaluation", "training"])
def test_batchnorm_backward(backend, dtype, training):
    rng = np.random.default_rng(21)
    N, C, H, W = 6, 8, 5, 7
    sub = channel_mask(C)
    # Subnormal dy on some channels, met by a huge gamma (dx) and, in evaluation mode, by a huge
    # x (dgamma); in training mode x stays normal there, as a huge x would overflow the term of dx
    # that carries sum(dy * (x - mean)).
    dy = mixed(rng, (N, C, H, W), dtype, sub=sub[None, :, None, None])
    x = mixed(rng, (N, C, H, W), dtype, huge=(sub[None, :, None, None] & (not training)))
    gamma = mixed(rng, (C,), dtype, huge=sub)
    mean = np.where(sub, 0, rng.standard_normal(C)).astype(dtype)
    invstd = np.where(sub, 1, 0.5 + rng.random(C)).astype(dtype)
    got = ops.batchnorm_backward(*map(backend.to_device, (x, gamma, dy, mean, invstd)), training=training)
    want = ref.batchnorm_backward(x, gamma, as_seen(dy, dtype), mean, invstd, training=training)
    for name, g, w in zip(("dx", "dgamma", "dbeta"), got, want):
        close_in_parts(backend.to_host(g), w, dtype, name)
    check_ieee_caller()


def test_global_avgpool(backend, dtype):
    rng = np.random.default_rng(22)
    N, C, H, W = 3, 4, 5, 7
    planes = (np.arange(N)[:, None] + np.arange(C)[None, :]) % 3 == 0  # whole planes of subnormals
    x = mixed(rng, (N, C, H, W), dtype, sub=planes[:, :, None, None])
    y = ops.global_avgpool_forward(backend.to_device(x))
    close_in_parts(backend.to_host(y), ref.global_avgpool_forward(as_seen(x, dtype)), dtype, "y")
    # dy: subnormal, or normal but small enough that dy / (H * W) is not.
    dy = mixed(rng, (N, C), dtype, sub=planes)
    small = (np.arange(N)[:, None] + np.arange(C)[None, :]) % 3 == 1
    dy[small] = (np.finfo(dtype).tiny * rng.uniform(2, 8, int(small.sum()))).astype(dtype)
    dx = ops.global_avgpool_backward(backend.to_device(x), backend.to_device(dy))
    close_in_parts(backend.to_host(dx), ref.global_avgpool_backward(x, as_seen(dy, dtype)), dtype, "dx")
    check_ieee_caller()


@pytest.mark.parametrize("relu", [False, True])
def test_residual_add(backend, dtype, relu):
    rng = np.random.default_rng(23)
    N, C, H, W, K, stride = 2, 3, 5, 7, 6, 2
    P, Q = -(-H // stride), -(-W // stride)
    # Subnormals on both sides of the add, and in the appended channels: sums of two subnormals
    # and the ReLU's comparison decided by one.
    main = mixed(rng, (N, K, P, Q), dtype, sub=rng.random((N, K, P, Q)) < 0.5)
    x = mixed(rng, (N, C, H, W), dtype, sub=rng.random((N, C, H, W)) < 0.5)
    y = ops.residual_add_forward(backend.to_device(main), backend.to_device(x), stride, relu=relu)
    want = ref.residual_add_forward(as_seen(main, dtype), as_seen(x, dtype), stride, relu=relu)
    close_in_parts(backend.to_host(y), want, dtype, "y")
    dy = mixed(rng, (N, K, P, Q), dtype, sub=rng.random((N, K, P, Q)) < 0.5)
    grad = mixed(rng, (N, C, H, W), dtype, sub=rng.random((N, C, H, W)) < 0.5)
    out = ops.residual_add_backward(backend.to_device(dy), backend.to_device(grad), stride)
    want = ref.residual_add_backward(as_seen(dy, dtype), as_seen(grad, dtype), stride)
    close_in_parts(backend.to_host(out), want, dtype, "grad + dx")
    # Where the subsampling skips a pixel, out is grad + 0 on both backends: a subnormal grad is
    # flushed there too (exactly 0, not kept), so CPU and GPU agree bit for bit.
    skipped = np.ones((H, W), bool)
    skipped[::stride, ::stride] = False
    got = backend.to_host(out)[:, :, skipped]
    expect = as_seen(grad, dtype)[:, :, skipped] + dtype(0)
    assert np.array_equal(np.ascontiguousarray(got).view(np.uint8),
                          np.ascontiguousarray(expect.astype(dtype)).view(np.uint8)), "skipped pixels: grad + 0"
    check_ieee_caller()


CPU_SOURCES = Path(__file__).resolve().parents[1] / "csrc" / "cpu"


@pytest.mark.skipif(not CPU_SOURCES.is_dir(), reason="the C++ sources are not next to the tests")
def test_every_cpu_parallel_region_sets_the_mode():
    # OpenMP worker threads keep their own MXCSR from region to region: every region must go
    # through cpu::parallel (cpu/fp_mode.h), which gives them the caller's FTZ/DAZ bits.
    raw = [f"{path.name}: {line.strip()}" for path in sorted(CPU_SOURCES.iterdir()) if path.name != "fp_mode.h"
           for line in path.read_text().splitlines() if re.match(r"\s*#\s*pragma\s+omp\s+parallel", line)]
    assert not raw, "parallel regions that bypass cpu::parallel:\n" + "\n".join(raw)


@pytest.mark.skipif(os.environ.get("PYREGNET_SUBNORMAL_THREADS") is None, reason="runs in the three-thread rerun")
def test_the_rerun_has_three_cpu_threads():
    assert pyregnet.build_info()["cpu_threads"] == 3


@pytest.mark.skipif(os.environ.get("PYREGNET_SUBNORMAL_THREADS") is not None, reason="already the rerun")
def test_cpu_cases_with_three_threads():
    # Here every CPU case above runs on a team of three, whatever the cores of this machine.
    env = dict(os.environ, OMP_NUM_THREADS="3", PYREGNET_SUBNORMAL_THREADS="3")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpu or rerun", __file__],
                         cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\b\d+ passed", run.stdout), run.stdout[-2000:]
