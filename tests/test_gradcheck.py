"""Numerical gradient checks of the compiled kernels, float64, on every backend present: each
backward against central finite differences of the same backend's own forward."""

import numpy as np
import pytest

from gradcheck import check_backward, numerical_gradient
from pyregnet import ops

# Finite differences with h = 1e-6 in float64 agree with exact gradients to ~1e-8 here.
RTOL, ATOL = 1e-6, 1e-8


def on(backend, op):
    """op on the backend, called with NumPy float64 arrays and returning NumPy arrays."""
    def run(*args, **kwargs):
        out = op(*(backend.to_device(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
        return tuple(backend.to_host(o) for o in out) if isinstance(out, tuple) else backend.to_host(out)
    return run


@pytest.mark.parametrize("case", [(1, 2, 5, 7, 3, 3, 3, 1), (2, 3, 4, 5, 2, 2, 3, 0), (1, 1, 3, 3, 2, 1, 1, 2)],
                         ids=lambda c: "x".join(map(str, c)))
def test_conv2d(backend, case):
    N, C, H, W, K, R, S, pad = case
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, S)), rng.standard_normal(K)
    forward, backward = on(backend, ops.conv2d_forward), on(backend, ops.conv2d_backward)
    check_backward(lambda x, w, b: forward(x, w, b, pad),
                   lambda x, w, b, dy: backward(x, w, dy, pad),
                   [x, w, b], wrt=[0, 1, 2], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 5, 7)], ids=str)
def test_maxpool2d(backend, shape):
    rng = np.random.default_rng(11)
    # Distinct values at least 1e-3 apart: a 1e-6 step never changes a window's argmax.
    x = rng.permutation(np.prod(shape)).reshape(shape) * 1e-3
    forward, backward = on(backend, ops.maxpool2d_forward), on(backend, ops.maxpool2d_backward)
    check_backward(forward, lambda x, dy: backward(x, dy), [x], wrt=[0], rtol=RTOL, atol=ATOL)


def test_relu(backend):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    forward, backward = on(backend, ops.relu_forward), on(backend, ops.relu_backward)
    check_backward(forward, lambda x, dy: backward(forward(x), dy), [x], wrt=[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", [(1, 1, 1), (3, 7, 5), (4, 13, 11)], ids=lambda c: "x".join(map(str, c)))
def test_dense(backend, case):
    N, fan_in, fan_out = case
    rng = np.random.default_rng(13)
    x, w, b = rng.standard_normal((N, fan_in)), rng.standard_normal((fan_out, fan_in)), rng.standard_normal(fan_out)
    forward, backward = on(backend, ops.dense_forward), on(backend, ops.dense_backward)
    check_backward(forward, lambda x, w, b, dy: backward(x, w, dy), [x, w, b], wrt=[0, 1, 2],
                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_softmax_cross_entropy(backend, scale):
    rng = np.random.default_rng(14)
    logits = scale * rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    xent = on(backend, ops.softmax_cross_entropy)
    numeric = numerical_gradient(lambda: xent(logits, labels)[0], logits)
    _, analytic, _ = xent(logits, labels)
    print(f"dlogits: max abs error {np.max(np.abs(analytic - numeric)):.3e}")
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("l1, l2", [(1e-2, 0.0), (0.0, 3e-2), (2e-2, 5e-2)])
def test_penalty_subgradient(backend, l1, l2):
    """The fused update's penalty gradient against finite differences of the penalty kernel.

    With beta1 = 0 and a zero data gradient, adam_update leaves m = g' = the penalty gradient it
    added, so the gradient the fused kernel uses is read back exactly. Weights are kept away from
    0, where |w| has no derivative; at exact zeros the subgradient must be sign(0) = 0.
    """
    rng = np.random.default_rng(15)
    w = rng.standard_normal(41)
    w[np.abs(w) < 1e-2] = 0.1
    penalty = on(backend, ops.penalty)
    numeric = numerical_gradient(lambda: penalty(w, l1, l2), w)

    w_zero = w.copy()
    w_zero[::4] = 0.0
    param, grad, m, v = (backend.to_device(a) for a in (w_zero, np.zeros(41), np.zeros(41), np.zeros(41)))
    ops.adam_update(param, grad, m, v, step=1, lr=1e-3, beta1=0.0, l1=l1, l2=l2)
    fused = backend.to_host(m)
    away = np.arange(41) % 4 != 0
    print(f"penalty gradient: max abs error {np.max(np.abs(fused[away] - numeric[away])):.3e}")
    np.testing.assert_allclose(fused[away], numeric[away], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(fused[~away], 0.0)  # sign(0) = 0 and 2*l2*0 = 0


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 3, 5), (4, 2, 1, 1)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_batchnorm(backend, shape, training):
    rng = np.random.default_rng(30)
    C = shape[1]
    x, gamma, beta = rng.standard_normal(shape) + 0.5, rng.standard_normal(C), rng.standard_normal(C)
    running_mean, running_var = rng.standard_normal(C), 0.5 + rng.random(C)
    forward, backward = on(backend, ops.batchnorm_forward), on(backend, ops.batchnorm_backward)

    def bn(x, gamma, beta):  # fresh running statistics each call: the forward pass updates them
        return forward(x, gamma, beta, running_mean.copy(), running_var.copy(), training=training, eps=1e-3)

    def grads(x, gamma, beta, dy):
        _, mean, invstd = bn(x, gamma, beta)
        return backward(x, gamma, dy, mean, invstd, training=training)

    check_backward(lambda *a: bn(*a)[0], grads, [x, gamma, beta], wrt=[0, 1, 2], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7)], ids=str)
def test_global_avgpool(backend, shape):
    rng = np.random.default_rng(31)
    x = rng.standard_normal(shape)
    forward, backward = on(backend, ops.global_avgpool_forward), on(backend, ops.global_avgpool_backward)
    check_backward(forward, backward, [x], wrt=[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", [(2, 3, 5, 7, 3, 1), (2, 3, 5, 7, 6, 2), (1, 2, 4, 6, 5, 3)],
                         ids=lambda c: "x".join(map(str, c)))
def test_residual_add(backend, case):
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(32)
    main, x = rng.standard_normal((N, K, -(-H // stride), -(-W // stride))), rng.standard_normal((N, C, H, W))
    forward, backward = on(backend, ops.residual_add_forward), on(backend, ops.residual_add_backward)
    # The gradient of main is dy itself; that of x is the shortcut's, added to a zero branch gradient.
    check_backward(lambda main, x: forward(main, x, stride),
                   lambda main, x, dy: (dy, backward(dy, np.zeros_like(x), stride)),
                   [main, x], wrt=[0, 1], rtol=RTOL, atol=ATOL)
