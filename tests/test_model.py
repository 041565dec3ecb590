"""The paper's CNN over its flat buffer: layout and a numerical gradient check of the whole
backward pass (float64, CPU backend) at coordinates in every layer."""

import numpy as np

from gradcheck import central_difference
from pyregnet import model, ops


def test_layout():
    assert model.N_PARAMS == 315_722 and model.N_KERNEL == 315_488
    offsets = [s.offset for s in model.SLOTS]
    assert offsets == sorted(offsets) and all(s.name.endswith(".w") for s in model.SLOTS[:4])
    v = model.views(np.arange(model.N_PARAMS, dtype=np.float64))
    assert v["conv1.w"].shape == (32, 3, 3, 3) and v["dense2.b"][-1] == model.N_PARAMS - 1


def test_init_is_glorot_uniform_with_zero_biases():
    v = model.views(model.init_params(0))
    limit = np.sqrt(6 / (2304 + 128))
    assert np.abs(v["dense1.w"]).max() <= limit and np.abs(v["dense1.w"]).max() > 0.99 * limit
    assert all(not v[name].any() for name, _ in model.BIASES)


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    params = model.init_params(1, np.float64)
    params[model.N_KERNEL:] = rng.normal(0, 0.05, model.N_PARAMS - model.N_KERNEL)  # biases nonzero too
    x, labels = rng.random((2, 3, 32, 32)), np.array([3, 7])

    def loss():
        return ops.softmax_cross_entropy(model.forward(params, x)[0], labels)[0]

    logits, cache = model.forward(params, x)
    _, dlogits, _ = ops.softmax_cross_entropy(logits, labels)
    grad = np.zeros_like(params)
    model.backward(params, cache, dlogits, grad)

    # Coordinates in every tensor, chosen among those with a gradient (ReLU and pooling zero many).
    picks = []
    for slot in model.SLOTS:
        g = grad[slot.offset:slot.offset + slot.size]
        nonzero = np.flatnonzero(g)
        picks += list(slot.offset + rng.choice(nonzero, size=min(3, len(nonzero)), replace=False))
    worst = 0.0
    for i in picks:
        numeric = central_difference(loss, params, i)
        worst = max(worst, abs(numeric - grad[i]))
        np.testing.assert_allclose(grad[i], numeric, rtol=1e-5, atol=1e-9, err_msg=f"parameter {i}")
    print(f"{len(picks)} coordinates, max abs error {worst:.2e}")
    assert len(picks) >= 20
