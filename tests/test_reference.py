"""Tests of the float64 NumPy reference (pyregnet.reference) on its own."""

import math

import numpy as np
import pytest

from gradcheck import check_backward, numerical_gradient
from pyregnet import reference as ref

# Central differences with h=1e-6 in float64: for losses linear in the
# perturbed input the truncation error is zero and round-off is ~1e-10, for
# smooth nonlinear ones (softmax, L2) truncation is ~h^2.
GRAD_RTOL = 1e-6
GRAD_ATOL = 1e-8
# Forward/closed-form comparisons: only summation-order round-off.
EXACT_RTOL = 1e-12
EXACT_ATOL = 1e-12


# --------------------------------------------------------------------------
# Gradient checks
# --------------------------------------------------------------------------

# (N, C, H, W, K, R, S, padding, stride)
CONV_CASES = [
    (1, 1, 5, 7, 1, 1, 1, 0, 1),
    (2, 3, 5, 7, 5, 3, 3, 1, 1),
    (2, 3, 5, 7, 2, 3, 3, 0, 1),
    (1, 5, 5, 7, 3, 2, 3, 2, 1),
    (2, 1, 4, 3, 3, 2, 3, 0, 1),
    (1, 3, 5, 7, 1, 1, 1, 2, 1),   # 1x1 with padding: border outputs are bias only
    (2, 2, 2, 3, 3, 3, 3, 1, 1),   # filter taller than the input
    (2, 3, 5, 7, 4, 3, 3, 1, 2),   # stride 2 dividing H + 2p - R evenly
    (1, 2, 6, 8, 3, 3, 3, 1, 2),   # stride 2 leaving the last row and column unread
    (2, 2, 7, 5, 2, 2, 3, 0, 3),   # stride 3, non-square filter
    (1, 3, 5, 6, 2, 1, 1, 0, 2),   # 1x1 filter, stride 2: pixels no window reads
]


@pytest.mark.parametrize("N,C,H,W,K,R,S,pad,stride", CONV_CASES)
def test_conv2d_gradients(N, C, H, W, K, R, S, pad, stride):
    rng = np.random.default_rng(N * 1000 + C * 100 + R * 10 + S + pad)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, R, S))
    b = rng.standard_normal(K)
    y = ref.conv2d_forward(x, w, b, pad, stride)
    assert y.shape == (N, K, (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1)
    check_backward(
        lambda x, w, b: ref.conv2d_forward(x, w, b, pad, stride),
        lambda x, w, b, dy: ref.conv2d_backward(x, w, dy, pad, stride),
        [x, w, b], wrt=[0, 1, 2], rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 4, 6), (2, 3, 5, 5), (1, 2, 3, 2), (1, 1, 1, 3)])
def test_maxpool2d_gradient(shape):
    # Distinct values 0.1 apart: no ties, so finite differences are valid.
    rng = np.random.default_rng(sum(shape))
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.1
    y = ref.maxpool2d_forward(x)
    assert y.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    check_backward(ref.maxpool2d_forward, ref.maxpool2d_backward,
                   [x], wrt=[0], rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 4, 5), (3, 13)])
def test_relu_gradient(shape):
    # Values at least 0.1 away from the kink at 0.
    rng = np.random.default_rng(len(shape))
    x = rng.choice([-1.0, 1.0], size=shape) * (0.1 + np.abs(rng.standard_normal(shape)))
    check_backward(ref.relu_forward,
                   lambda x, dy: ref.relu_backward(ref.relu_forward(x), dy),
                   [x], wrt=[0], rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("N,n_in,n_out", [(1, 1, 1), (2, 7, 13), (1, 13, 7), (2, 1, 7), (3, 13, 1)])
def test_dense_gradients(N, n_in, n_out):
    rng = np.random.default_rng(N * 100 + n_in * 10 + n_out)
    x = rng.standard_normal((N, n_in))
    w = rng.standard_normal((n_out, n_in))
    b = rng.standard_normal(n_out)
    check_backward(ref.dense_forward,
                   lambda x, w, b, dy: ref.dense_backward(x, w, dy),
                   [x, w, b], wrt=[0, 1, 2], rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("N,classes,scale", [(1, 1, 1.0), (1, 3, 1.0), (2, 10, 1.0), (5, 7, 5.0)])
def test_softmax_cross_entropy_gradient(N, classes, scale):
    rng = np.random.default_rng(N * 100 + classes)
    z = rng.standard_normal((N, classes)) * scale
    labels = rng.integers(0, classes, size=N)
    _, dlogits, _ = ref.softmax_cross_entropy(z, labels)
    numeric = numerical_gradient(lambda: ref.softmax_cross_entropy(z, labels)[0], z)
    print("max abs error", np.max(np.abs(dlogits - numeric)))
    np.testing.assert_allclose(dlogits, numeric, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_softmax_cross_entropy_large_logits():
    # Saturated softmax: exp(-1000) underflows to 0 without producing inf/nan.
    z = np.array([[1000.0, -1000.0, 0.0],
                  [1000.0, -1000.0, 0.0],
                  [-1000.0, -1000.0, 1000.0]])
    labels = np.array([0, 1, 0])
    loss, dlogits, correct = ref.softmax_cross_entropy(z, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    # Row losses: 0, 2000, 2000.
    np.testing.assert_allclose(loss, 4000.0 / 3, rtol=EXACT_RTOL)
    expected = np.array([[0.0, 0.0, 0.0],
                         [1.0, -1.0, 0.0],
                         [-1.0, 0.0, 1.0]]) / 3
    np.testing.assert_allclose(dlogits, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert correct == 1

    # Shift invariance: adding 1000 to every logit changes nothing.
    rng = np.random.default_rng(7)
    z = rng.standard_normal((4, 6))
    labels = rng.integers(0, 6, size=4)
    loss0, d0, c0 = ref.softmax_cross_entropy(z, labels)
    loss1, d1, c1 = ref.softmax_cross_entropy(z + 1000.0, labels)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-10)
    np.testing.assert_allclose(d1, d0, rtol=1e-10, atol=1e-13)
    assert c1 == c0


@pytest.mark.parametrize("l1,l2", [(0.1, 0.0), (0.0, 0.05), (0.1, 0.05)])
def test_penalty_gradient(l1, l2):
    rng = np.random.default_rng(3)
    w = rng.choice([-1.0, 1.0], size=(3, 4)) * (0.1 + np.abs(rng.standard_normal((3, 4))))
    numeric = numerical_gradient(lambda: ref.penalty(w, l1, l2), w)
    np.testing.assert_allclose(ref.penalty_grad(w, l1, l2), numeric, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_penalty_values_and_sign_of_zero():
    w = np.array([[0.0, -0.0, 2.0], [-3.0, 0.0, 0.5]])
    assert isinstance(ref.penalty(w, 0.1, 0.01), float)
    np.testing.assert_allclose(ref.penalty(w, 0.1, 0.01),
                               0.1 * 5.5 + 0.01 * (4 + 9 + 0.25), rtol=EXACT_RTOL)
    g = ref.penalty_grad(w, 0.1, 0.01)
    expected = np.array([[0.0, 0.0, 0.1 + 0.04], [-0.1 - 0.06, 0.0, 0.1 + 0.01]])
    np.testing.assert_allclose(g, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert np.all(g[w == 0] == 0.0)


# --------------------------------------------------------------------------
# Independent checks of the forwards and of the non-differentiated ops
# --------------------------------------------------------------------------

def naive_conv2d(x, w, b, padding, stride=1):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = (H + 2 * padding - R) // stride + 1, (W + 2 * padding - S) // stride + 1
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    acc = b[k]
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                h, ww = p * stride + r - padding, q * stride + s - padding
                                if 0 <= h < H and 0 <= ww < W:
                                    acc += x[n, c, h, ww] * w[k, c, r, s]
                    y[n, k, p, q] = acc
    return y


@pytest.mark.parametrize("N,C,H,W,K,R,S,pad,stride", [
    (2, 2, 4, 5, 3, 3, 3, 1, 1),
    (1, 3, 5, 3, 2, 2, 3, 0, 1),
    (1, 1, 3, 4, 2, 1, 1, 2, 1),
    (2, 2, 8, 7, 3, 3, 3, 1, 2),
    (1, 2, 7, 9, 2, 2, 3, 2, 3),
])
def test_conv2d_forward_matches_naive(N, C, H, W, K, R, S, pad, stride):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, R, S))
    b = rng.standard_normal(K)
    np.testing.assert_allclose(ref.conv2d_forward(x, w, b, pad, stride), naive_conv2d(x, w, b, pad, stride),
                               rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_conv2d_is_cross_correlation():
    # A filter with a single 1 at tap (0, 1) shifts the input: y[p,q] = x[p, q+1].
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 1] = 1.0
    y = ref.conv2d_forward(x, w, np.array([0.5]), 0)
    np.testing.assert_array_equal(y, x[:, :, :2, 1:] + 0.5)


def test_conv2d_stride_subsamples():
    # A 1x1 identity filter with stride 2 keeps every other row and column, starting at the first.
    x = np.arange(35.0).reshape(1, 1, 5, 7)
    y = ref.conv2d_forward(x, np.ones((1, 1, 1, 1)), np.zeros(1), 0, 2)
    np.testing.assert_array_equal(y, x[:, :, ::2, ::2])
    dx, _, _ = ref.conv2d_backward(x, np.ones((1, 1, 1, 1)), np.ones_like(y), 0, 2)
    want = np.zeros_like(x)
    want[:, :, ::2, ::2] = 1.0
    np.testing.assert_array_equal(dx, want)


def test_maxpool2d_forward_hand_example():
    x = np.array([[1, 5, 2, 0, 9],
                  [3, 4, 8, 1, 9],
                  [7, 0, 6, 6, 9]], dtype=float).reshape(1, 1, 3, 5)
    y = ref.maxpool2d_forward(x)
    np.testing.assert_array_equal(y, np.array([[[[5.0, 8.0]]]]))
    dx = ref.maxpool2d_backward(x, np.array([[[[10.0, 20.0]]]]))
    expected = np.zeros((3, 5))
    expected[0, 1] = 10.0
    expected[1, 2] = 20.0
    np.testing.assert_array_equal(dx[0, 0], expected)   # dropped row/column get 0


def test_maxpool2d_ties_go_to_first_max():
    # Windows: all equal; (0,1)==(1,1); (1,0)==(1,1); (0,0)==(1,1) with (0,1) smaller.
    x = np.array([[2, 2, 0, 3, 1, 1, 4, 0],
                  [2, 2, 1, 3, 5, 5, 1, 4]], dtype=float).reshape(1, 1, 2, 8)
    dy = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    dx = ref.maxpool2d_backward(x, dy)
    expected = np.array([[1, 0, 0, 2, 0, 0, 4, 0],
                         [0, 0, 0, 0, 3, 0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_relu_forward_and_backward_values():
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0])
    y = ref.relu_forward(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 0.5, 3.0])
    # backward takes y: zero output (including x == 0) passes no gradient.
    dx = ref.relu_backward(y, np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(dx, [0.0, 0.0, 0.0, 4.0, 5.0])


def test_dense_forward_hand_example():
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    w = np.array([[1.0, 0.0], [2.0, 3.0], [-1.0, 1.0]])
    b = np.array([0.5, 0.0, -1.0])
    y = ref.dense_forward(x, w, b)
    np.testing.assert_array_equal(y, [[1.5, 8.0, 0.0], [3.5, 3.0, -5.0]])


def test_softmax_cross_entropy_hand_example():
    z = np.array([[1.0, 2.0, 3.0],
                  [5.0, 5.0, 1.0],
                  [5.0, 5.0, 1.0]])
    labels = np.array([2, 1, 0])
    loss, dlogits, correct = ref.softmax_cross_entropy(z, labels)
    row0 = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0
    row12 = math.log(2 * math.exp(5) + math.exp(1)) - 5.0
    assert isinstance(loss, float)
    assert math.isclose(loss, (row0 + 2 * row12) / 3, rel_tol=EXACT_RTOL)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(dlogits[0], (e / e.sum() - [0, 0, 1]) / 3, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=EXACT_ATOL)
    # argmax ties go to the first index: row 1 predicts 0 (wrong), row 2 predicts 0 (right).
    assert isinstance(correct, int)
    assert correct == 2


def adam_by_hand(p, g, m, v, t, lr, b1, b2, eps, l1, l2, penalized):
    """Scalar-by-scalar Adam step on Python lists, written from the formulas."""
    p, m, v = list(p), list(m), list(v)
    for i in range(len(p)):
        gi = g[i]
        if i < penalized:
            sign = (p[i] > 0) - (p[i] < 0)
            gi += l1 * sign + 2 * l2 * p[i]
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p[i] = p[i] - alpha * m[i] / (math.sqrt(v[i]) + eps)
    return p, m, v


@pytest.mark.parametrize("penalized", [None, 0, 3, 6])
def test_adam_update_two_steps(penalized):
    p0 = [1.0, -2.0, 0.0, 0.5, -0.25, 3.0]
    grads = [[0.1, -0.3, 0.2, 0.0, 1.5, -0.05],
             [-0.2, 0.1, 0.0, 0.4, 1.0, 0.05]]
    hp = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7, l1=0.1, l2=0.05)
    k = len(p0) if penalized is None else penalized

    param = np.array(p0).reshape(2, 3)
    m = np.zeros((2, 3))
    v = np.zeros((2, 3))
    hp_, hm, hv = p0, [0.0] * 6, [0.0] * 6
    for t, g in enumerate(grads, start=1):
        assert ref.adam_update(param, np.array(g).reshape(2, 3), m, v, step=t,
                               penalized=penalized, **hp) is None
        hp_, hm, hv = adam_by_hand(hp_, g, hm, hv, t, hp["lr"], hp["beta1"], hp["beta2"],
                                   hp["eps"], hp["l1"], hp["l2"], k)
        np.testing.assert_allclose(param.ravel(), hp_, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        np.testing.assert_allclose(m.ravel(), hm, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        np.testing.assert_allclose(v.ravel(), hv, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_adam_penalized_prefix_only():
    # Zero gradient: only the first 2 elements feel the penalty and move.
    param = np.array([1.0, -1.0, 1.0, -1.0])
    m, v = np.zeros(4), np.zeros(4)
    ref.adam_update(param, np.zeros(4), m, v, step=1, lr=0.01, l1=0.1, l2=0.0, penalized=2)
    np.testing.assert_array_equal(param[2:], [1.0, -1.0])
    np.testing.assert_array_equal(m[2:], 0.0)
    # First Adam step moves by ~lr against the sign of the (penalty) gradient.
    np.testing.assert_allclose(param[:2], [1.0 - 0.01, -1.0 + 0.01], rtol=1e-5)


def test_adam_first_step_is_lr_times_sign():
    param = np.array([0.3, -0.7, 2.0])
    g = np.array([0.5, -2.0, 1e-2])
    m, v = np.zeros(3), np.zeros(3)
    ref.adam_update(param, g, m, v, step=1, lr=1e-3)
    # m1 = (1-b1) g, sqrt(v1) = sqrt(1-b2) |g|, so the step is
    # lr * sign(g) / (1 + eps / (sqrt(1-b2) |g|)): eps acts like eps / sqrt(1-b2^t)
    # in the bias-corrected form (Keras's "efficient form").
    step = 1e-3 * np.sign(g) / (1.0 + 1e-7 / (math.sqrt(1 - 0.999) * np.abs(g)))
    np.testing.assert_allclose(param, np.array([0.3, -0.7, 2.0]) - step, rtol=EXACT_RTOL)
    np.testing.assert_allclose(step, 1e-3 * np.sign(g), rtol=1e-3)


def test_sparsity_count():
    w = np.array([[0.0, -0.0, 0.5, -0.5], [1e-9, 0.25, 0.75, -0.75]])
    assert ref.sparsity_count(w, 0.0) == 2
    assert ref.sparsity_count(w, 1e-9) == 3          # boundary |w| == threshold counts
    assert ref.sparsity_count(w, 0.25) == 4
    assert ref.sparsity_count(w, 0.5) == 6
    assert ref.sparsity_count(w, 0.75) == 8
    assert isinstance(ref.sparsity_count(w, 0.0), int)


# --------------------------------------------------------------------------
# Batch normalization, global average pooling, residual add (ResNet)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 4, 5), (3, 2, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(shape, training):
    rng = np.random.default_rng(sum(shape))
    C = shape[1]
    x, gamma, beta = rng.standard_normal(shape), rng.standard_normal(C), rng.standard_normal(C)
    rmean, rvar = rng.standard_normal(C), 0.5 + rng.random(C)

    def forward(x, gamma, beta):
        return ref.batchnorm_forward(x, gamma, beta, rmean, rvar, training=training, eps=1e-3)

    def backward(x, gamma, beta, dy):
        _, mean, invstd, _, _ = forward(x, gamma, beta)
        return ref.batchnorm_backward(x, gamma, dy, mean, invstd, training=training)

    check_backward(lambda *a: forward(*a)[0], backward, [x, gamma, beta], wrt=[0, 1, 2],
                   rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_batchnorm_hand_example():
    # One channel of values 1 and 3: mean 2, biased variance 1, unbiased 2.
    x = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    y, mean, invstd, rmean, rvar = ref.batchnorm_forward(x, np.array([2.0]), np.array([0.5]), np.array([1.0]),
                                                         np.array([1.0]), momentum=0.1, eps=0.0)
    np.testing.assert_allclose(y.ravel(), [-1.5, 2.5], rtol=EXACT_RTOL)
    np.testing.assert_allclose([mean[0], invstd[0], rmean[0], rvar[0]], [2.0, 1.0, 1.1, 1.1], rtol=EXACT_RTOL)
    # Evaluation: the running statistics normalize, unchanged.
    y, mean, invstd, rmean, rvar = ref.batchnorm_forward(x, np.array([1.0]), np.array([0.0]), np.array([1.0]),
                                                         np.array([4.0]), training=False, eps=0.0)
    np.testing.assert_allclose(y.ravel(), [0.0, 1.0], rtol=EXACT_RTOL)
    assert rmean[0] == 1.0 and rvar[0] == 4.0
    # The gradient of a normalized output does not see a shift of dy that is constant over
    # the channel (the batch mean absorbs it), so dx = 0 for a constant dy.
    dx, dgamma, dbeta = ref.batchnorm_backward(x, np.array([2.0]), np.full((1, 1, 1, 2), 3.0), np.array([2.0]),
                                               np.array([1.0]))
    np.testing.assert_allclose(dx.ravel(), [0.0, 0.0], atol=EXACT_ATOL)
    np.testing.assert_allclose([dgamma[0], dbeta[0]], [0.0, 6.0], atol=EXACT_ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5)])
def test_global_avgpool_gradient_and_values(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ref.global_avgpool_forward(x), x.reshape(*shape[:2], -1).mean(axis=2),
                               rtol=EXACT_RTOL)
    check_backward(ref.global_avgpool_forward, ref.global_avgpool_backward, [x], wrt=[0],
                   rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_residual_add_hand_example():
    x = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)          # [[1, 2, 3], [4, 5, 6]]
    main = np.full((1, 2, 1, 2), -2.5)
    y = ref.residual_add_forward(main, x, 2)             # x[::2, ::2] = [[1, 3]], then a zero channel
    np.testing.assert_array_equal(y[0, 0], [[-1.5, 0.5]])
    np.testing.assert_array_equal(y[0, 1], [[-2.5, -2.5]])
    np.testing.assert_array_equal(ref.residual_add_forward(main, x, 2, relu=True)[0, 0], [[0.0, 0.5]])
    dy = np.array([10.0, 20.0, 30.0, 40.0]).reshape(1, 2, 1, 2)
    grad = ref.residual_add_backward(dy, np.ones((1, 1, 2, 3)), 2)
    np.testing.assert_array_equal(grad[0, 0], [[11.0, 1.0, 21.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("N,C,H,W,K,stride", [(2, 3, 5, 7, 3, 1), (2, 3, 5, 7, 6, 2), (1, 2, 4, 6, 5, 3)])
def test_residual_add_gradients(N, C, H, W, K, stride):
    rng = np.random.default_rng(N + C + H + W + K + stride)
    main, x = rng.standard_normal((N, K, -(-H // stride), -(-W // stride))), rng.standard_normal((N, C, H, W))
    check_backward(lambda main, x: ref.residual_add_forward(main, x, stride),
                   lambda main, x, dy: (dy, ref.residual_add_backward(dy, np.zeros_like(x), stride)),
                   [main, x], wrt=[0, 1], rtol=GRAD_RTOL, atol=GRAD_ATOL)
