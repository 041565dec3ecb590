"""Every kernel on every backend present against the NumPy float64 reference, in float32 and
float64, on awkward shapes: batch 1, odd H and W, channel counts no multiple of any tile,
padding 0 to 2, non-square filters, and sizes larger than one block or tile."""

import numpy as np
import pytest

from conftest import assert_close
from pyregnet import ops
from pyregnet import reference as ref

# (N, C, H, W, K, R, S, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0),        # everything 1
    (1, 3, 5, 7, 5, 3, 3, 1),        # batch 1, odd H and W
    (2, 5, 9, 6, 7, 2, 3, 2),        # non-square filter, padding 2
    (3, 13, 11, 13, 17, 3, 3, 0),    # channel counts no multiple of a tile
    (1, 2, 4, 4, 3, 6, 6, 1),        # filter as large as the padded input: 1x1 output
    (2, 3, 32, 32, 32, 3, 3, 0),     # the paper's first conv layer
    (2, 32, 15, 15, 64, 3, 3, 0),    # the paper's second conv layer
    (4, 7, 33, 35, 70, 3, 3, 1),     # K > 64 and N*P*Q > one tile
    (9, 3, 40, 40, 33, 3, 3, 1),     # long reduction for dw (N*P*Q = 14400)
    # Larger than one CPU im2col tile (1 MiB of scratch per thread): split along C*R*S
    (2, 300, 12, 12, 5, 5, 5, 2),    # C*R*S = 7500: the forward reduction in several row tiles
    (1, 2, 400, 400, 2, 3, 3, 1),    # P*Q = 160000: column tiles; float64 backward one row at a time
    (1, 1, 520, 520, 1, 3, 3, 1),    # P*Q = 270400: float32 backward one row at a time too
]

# (N, in, out)
DENSE_CASES = [(1, 1, 1), (1, 7, 13), (5, 37, 11), (65, 130, 70), (64, 2304, 128), (3, 1000, 1)]

POOL_SHAPES = [(1, 1, 2, 2), (2, 3, 5, 7), (3, 5, 32, 33), (1, 2, 9, 9), (2, 70, 31, 30)]


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv2d(backend, dtype, case):
    N, C, H, W, K, R, S, pad = case
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, (N, C, H, W), dtype), rand(rng, (K, C, R, S), dtype), rand(rng, (K,), dtype)
    y = ops.conv2d_forward(backend.to_device(x), backend.to_device(w), backend.to_device(b), pad)
    assert_close(backend.to_host(y), ref.conv2d_forward(x, w, b, pad), dtype, "y")

    dy = rand(rng, y.shape, dtype)
    grads = ops.conv2d_backward(backend.to_device(x), backend.to_device(w), backend.to_device(dy), pad)
    for name, got, want in zip(("dx", "dw", "db"), grads, ref.conv2d_backward(x, w, dy, pad)):
        assert_close(backend.to_host(got), want, dtype, name)

    # Without the input gradient: no dx, the same dw and db to the bit.
    dx, dw, db = ops.conv2d_backward(backend.to_device(x), backend.to_device(w), backend.to_device(dy), pad,
                                     input_grad=False)
    assert dx is None
    np.testing.assert_array_equal(backend.to_host(dw), backend.to_host(grads[1]))
    np.testing.assert_array_equal(backend.to_host(db), backend.to_host(grads[2]))


@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_dense(backend, dtype, case):
    N, fan_in, fan_out = case
    rng = np.random.default_rng(2)
    x, w, b = rand(rng, (N, fan_in), dtype), rand(rng, (fan_out, fan_in), dtype), rand(rng, (fan_out,), dtype)
    y = ops.dense_forward(backend.to_device(x), backend.to_device(w), backend.to_device(b))
    assert_close(backend.to_host(y), ref.dense_forward(x, w, b), dtype, "y")

    dy = rand(rng, (N, fan_out), dtype)
    grads = ops.dense_backward(backend.to_device(x), backend.to_device(w), backend.to_device(dy))
    for name, got, want in zip(("dx", "dw", "db"), grads, ref.dense_backward(x, w, dy)):
        assert_close(backend.to_host(got), want, dtype, name)


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_maxpool2d(backend, dtype, shape, ties):
    rng = np.random.default_rng(3)
    # With ties, few distinct values: the first maximum of each window must win, as in the reference.
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    y = ops.maxpool2d_forward(backend.to_device(x))
    np.testing.assert_array_equal(backend.to_host(y), ref.maxpool2d_forward(x))

    dy = rand(rng, y.shape, dtype)
    dx = ops.maxpool2d_backward(backend.to_device(x), backend.to_device(dy))
    # Routing copies values: exact on every backend.
    np.testing.assert_array_equal(backend.to_host(dx), ref.maxpool2d_backward(x, dy))


@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 5, 7), (100_003,)], ids=str)
def test_relu(backend, dtype, shape):
    rng = np.random.default_rng(4)
    x = rand(rng, shape, dtype)
    x.reshape(-1)[::5] = 0  # exact zeros take the zero branch on both sides
    y = ops.relu_forward(backend.to_device(x))
    np.testing.assert_array_equal(backend.to_host(y), ref.relu_forward(x))
    dy = rand(rng, shape, dtype)
    dx = ops.relu_backward(y, backend.to_device(dy))
    np.testing.assert_array_equal(backend.to_host(dx), ref.relu_backward(backend.to_host(y), dy))


def test_relu_propagates_nan(backend, dtype):
    x = np.array([np.nan, -1.0, 2.0], dtype=dtype)
    y = backend.to_host(ops.relu_forward(backend.to_device(x)))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2


LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 10), (64, 10), (300, 13)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["unit", "large"])
def test_softmax_cross_entropy(backend, dtype, shape, scale):
    N, classes = shape
    rng = np.random.default_rng(5)
    logits = (scale * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, classes, N)
    for i, label_dtype in enumerate(LABEL_DTYPES):
        lab = labels.astype(label_dtype)
        loss, dlogits, correct = ops.softmax_cross_entropy(backend.to_device(logits), backend.to_device(lab))
        ref_loss, ref_dlogits, ref_correct = ref.softmax_cross_entropy(logits, labels)
        assert isinstance(loss, float) and isinstance(correct, int)
        assert np.isfinite(loss)
        assert correct == ref_correct
        assert_close(loss, ref_loss, dtype, f"loss, labels {np.dtype(label_dtype).name}")
        assert_close(backend.to_host(dlogits), ref_dlogits, dtype, "dlogits")


def test_softmax_cross_entropy_counts_hits(backend, dtype):
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 5.0, 1.0], [0.0, 0.0, 9.0]], dtype=dtype)
    labels = np.array([1, 1, 0])  # hit; tie resolved to class 0 so a miss; miss
    _, _, correct = ops.softmax_cross_entropy(backend.to_device(logits), backend.to_device(labels))
    assert correct == 1


@pytest.mark.parametrize("size", [0, 1, 1023, 315_722, 1_000_003])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-2), (1e-4, 5e-4)])
def test_penalty(backend, dtype, size, l1, l2):
    rng = np.random.default_rng(6)
    w = rand(rng, (size,), dtype)
    got = ops.penalty(backend.to_device(w), l1, l2)
    assert isinstance(got, float)
    # Accumulated in double on every backend: only the summation order differs from NumPy's.
    np.testing.assert_allclose(got, ref.penalty(w, l1, l2), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("size", [1, 7, 4099, 315_722])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-2), (1e-4, 5e-4)])
@pytest.mark.parametrize("penalized", ["all", "none", "part"])
def test_adam_update(backend, dtype, size, l1, l2, penalized):
    rng = np.random.default_rng(7)
    k = {"all": None, "none": 0, "part": size // 3}[penalized]
    param = rand(rng, (size,), dtype)
    param[::7] = 0  # sign(0) = 0: the L1 term leaves these alone
    m, v = np.zeros_like(param), np.zeros_like(param)
    want = [a.astype(np.float64) for a in (param, m, v)]
    dev = [backend.to_device(a) for a in (param, m, v)]
    for step in (1, 2, 3):
        grad = rand(rng, (size,), dtype)
        ops.adam_update(*dev[:1], backend.to_device(grad), *dev[1:], step=step, lr=1e-3,
                        l1=l1, l2=l2, penalized=k)
        ref.adam_update(*want[:1], grad, *want[1:], step=step, lr=1e-3, l1=l1, l2=l2, penalized=k)
    for name, got, exp in zip(("param", "m", "v"), dev, want):
        assert_close(backend.to_host(got), exp, dtype, name)


def test_adam_update_hyperparameters(backend, dtype):
    rng = np.random.default_rng(8)
    param, grad = rand(rng, (513,), dtype), rand(rng, (513,), dtype)
    m, v = rand(rng, (513,), dtype) * 0.1, np.abs(rand(rng, (513,), dtype))
    want = [a.astype(np.float64) for a in (param, m, v)]
    dev = [backend.to_device(a) for a in (param, m, v)]
    kw = dict(step=17, lr=3e-2, beta1=0.5, beta2=0.75, eps=1e-3, l1=2e-3, l2=1e-3, penalized=300)
    ops.adam_update(dev[0], backend.to_device(grad), dev[1], dev[2], **kw)
    ref.adam_update(want[0], grad, want[1], want[2], **kw)
    for name, got, exp in zip(("param", "m", "v"), dev, want):
        assert_close(backend.to_host(got), exp, dtype, name)


@pytest.mark.parametrize("size", [0, 1, 1000, 1_000_003])
def test_sparsity_count(backend, dtype, size):
    rng = np.random.default_rng(9)
    w = (rng.standard_normal(size) * 1e-3).astype(dtype)
    w[::3] = 0
    w[1::11] = dtype(1e-4)   # exactly at a threshold (as the dtype rounds it): counted
    w[2::13] = -dtype(1e-3)
    for threshold in (0.0, 1e-4, 1e-3, 1.0, np.inf):
        got = ops.sparsity_count(backend.to_device(w), threshold)
        assert isinstance(got, int)
        assert got == ref.sparsity_count(w, threshold), threshold


@pytest.mark.parametrize("size, penalized", [(1, None), (7, 3), (40_000, 33_333), (315_722, 315_488)])
@pytest.mark.parametrize("l1, l2", [(1e-3, 0.0), (0.0, 1e-2), (1e-4, 5e-4)])
def test_adam_update_returns_the_penalty_of_the_same_pass(backend, dtype, size, penalized, l1, l2):
    rng = np.random.default_rng(16)
    param, grad = rand(rng, (size,), dtype), rand(rng, (size,), dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    want = [a.astype(np.float64) for a in (param, m, v)]
    dev = [backend.to_device(a) for a in (param, m, v)]
    got = ops.adam_update(dev[0], backend.to_device(grad), dev[1], dev[2], step=1, lr=1e-3, l1=l1, l2=l2,
                          penalized=penalized, with_penalty=True)
    expected = ref.adam_update(want[0], grad, want[1], want[2], step=1, lr=1e-3, l1=l1, l2=l2,
                               penalized=penalized, with_penalty=True)
    assert isinstance(got, float)
    # The weights before the step, summed in double on every backend: only the order differs.
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert_close(backend.to_host(dev[0]), want[0], dtype, "param")


@pytest.mark.parametrize("size, penalized", [(1, None), (9, 4), (40_000, None), (315_722, 315_488)])
@pytest.mark.parametrize("with_penalty", [False, True])
def test_penalty_gradient(backend, dtype, size, penalized, with_penalty):
    rng = np.random.default_rng(17)
    w, grad = rand(rng, (size,), dtype), rand(rng, (size,), dtype)
    w[::5] = 0  # sign(0) = 0
    want = grad.astype(np.float64)
    dev_grad = backend.to_device(grad)
    got = ops.penalty_gradient(backend.to_device(w), dev_grad, 1e-3, 2e-3, penalized=penalized,
                               with_penalty=with_penalty)
    expected = ref.penalty_gradient(w, want, 1e-3, 2e-3, penalized=penalized, with_penalty=with_penalty)
    assert_close(backend.to_host(dev_grad), want, dtype, "grad")
    if with_penalty:
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    else:
        assert got is None


def _update(optimizer, arrays, grad, step, **kw):
    """One step of `optimizer` through `arrays` (param + state), the ops or the reference signature.
    Adam's eps is large: where the penalty gradient cancels the data gradient, m / (sqrt(v) + eps)
    with a tiny eps amplifies float32 rounding of g' a thousandfold, and the comparison would test
    that conditioning rather than the kernel."""
    if optimizer == "adam":
        return kw.pop("impl").adam_update(arrays[0], grad, arrays[1], arrays[2], step=step, lr=1e-3, eps=1e-3,
                                          **kw)
    return kw.pop("impl").sgd_update(arrays[0], grad, arrays[1], lr=1e-2, momentum=0.9, **kw)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("proximal", [False, True])
@pytest.mark.parametrize("size", [1, 7, 4099, 315_722])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (1e-1, 0.0), (0.0, 5.0), (1e-1, 5e-1)])
@pytest.mark.parametrize("penalized", ["all", "part"])
def test_update_penalty_steps(backend, dtype, optimizer, proximal, size, l1, l2, penalized):
    rng = np.random.default_rng(21)
    k = {"all": None, "part": size // 3}[penalized]
    param = rand(rng, (size,), dtype) * dtype(1e-3)  # the scale of lr * l1: some weights cross zero
    param[::7] = 0
    state = [np.zeros_like(param) for _ in range(2 if optimizer == "adam" else 1)]
    want = [a.astype(np.float64) for a in (param, *state)]
    dev = [backend.to_device(a) for a in (param, *state)]
    for step in (1, 2, 3):
        grad = rand(rng, (size,), dtype) * dtype(1e-2)
        got = _update(optimizer, dev, backend.to_device(grad), step, impl=ops, l1=l1, l2=l2, penalized=k,
                      proximal=proximal, with_penalty=True)
        expected = _update(optimizer, want, grad, step, impl=ref, l1=l1, l2=l2, penalized=k, proximal=proximal,
                           with_penalty=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-300)
    for name, got, exp in zip(("param", "state0", "state1"), dev, want):
        assert_close(backend.to_host(got), exp, dtype, name)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_proximal_step_makes_exact_zeros(backend, dtype, optimizer):
    """Weights with no data gradient and |w| below lr * l1 become exactly 0 (the coupled subgradient
    only makes them oscillate around it); weights beyond the penalized range are left alone."""
    n, k = 1000, 700
    lr = 1e-3 if optimizer == "adam" else 1e-2
    rng = np.random.default_rng(22)
    param = (rng.uniform(-0.5, 0.5, n) * lr * 0.1).astype(dtype)   # all inside the dead zone of l1 = 0.1
    assert np.count_nonzero(param) > 0.99 * n
    zero_grad = backend.to_device(np.zeros_like(param))
    for proximal in (True, False):
        # copies: on the CPU, to_device hands back the array itself, which the update overwrites
        dev = [backend.to_device(a.copy()) for a in [param] + [np.zeros_like(param)] * (1 + (optimizer == "adam"))]
        _update(optimizer, dev, zero_grad, 1, impl=ops, l1=0.1, l2=0.0, penalized=k, proximal=proximal)
        got = backend.to_host(dev[0])
        np.testing.assert_array_equal(got[k:], param[k:])
        if proximal:
            assert np.count_nonzero(got[:k]) == 0
        else:
            assert np.count_nonzero(got[:k]) > 0.99 * k


def test_proximal_operator_reference():
    """sign(z) max(|z| - lr l1, 0) / (1 + 2 lr l2) is the minimizer of its objective (checked on a fine
    grid) and, with l1 = 0, a decay by 1 / (1 + 2 lr l2)."""
    lr, l1, l2 = 0.1, 0.3, 0.7
    grid = np.linspace(-3, 3, 600_001)
    for z in (-2.0, -0.04, 0.0, 0.02, 0.5, 2.5):
        objective = (grid - z) ** 2 / (2 * lr) + l1 * np.abs(grid) + l2 * grid ** 2
        assert abs(ref.prox_elastic(z, lr, l1, l2) - grid[np.argmin(objective)]) <= 1e-5, z
    np.testing.assert_allclose(ref.prox_elastic(np.array([2.0, -1.0]), lr, 0.0, l2), np.array([2.0, -1.0]) / 1.14)


def test_sgd_reference_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch (the bench extra) checks the SGD reference")
    rng = np.random.default_rng(23)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(4)]
    param, velocity = p0.copy(), np.zeros(50)
    for g in grads:
        ref.sgd_update(param, g, velocity, lr=0.05, momentum=0.9, l2=0.01)
    t = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.SGD([t], lr=0.05, momentum=0.9, weight_decay=2 * 0.01)  # L2 λ Σw² has gradient 2λw
    for g in grads:
        t.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param, t.detach().numpy(), rtol=1e-12)
