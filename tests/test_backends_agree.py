"""The CUDA backend against the CPU backend on the paper's CNN at batch 64, in both dtypes: the
forward pass (logits, loss, hits, dlogits) from the same inputs, and the backward pass into the
flat gradient buffer from the same forward state.

The backends sum in different orders, so they agree to rounding, not bit for bit. Arrays are
compared by ||cuda - cpu|| / ||cpu||. The backward passes start from the GPU's activations and
max-pool choices, copied to the CPU: where the two largest inputs of a pool window lie within
rounding of each other, each backend's own forward pass may pick a different one and send the
gradient to another pixel, a legitimate difference (seen for 1 seed in 12 between float32 and
float64 on the CPU, 8e-4 of a layer's gradient norm) that would hide the kernels' own error.
Bounds: float32 1e-5, float64 1e-12 (measured float32 rounding: ~2e-6).
"""

import numpy as np
import pytest

from pyregnet import model, ops

from conftest import CUDA_MARKS

pytestmark = CUDA_MARKS

BATCH = 64
NORM_TOL = {np.float32: 1e-5, np.float64: 1e-12}
STATE = ("c1", "p1", "c2", "p2", "a1", "a2", "h")   # what backward reads of the forward pass


def inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = model.init_params(seed, dtype)
    for name, shape in model.BIASES:   # nonzero biases, so that their path is exercised too
        model.views(params)[name][...] = rng.uniform(-0.1, 0.1, size=shape)
    x = rng.random((BATCH, *model.INPUT_SHAPE)).astype(dtype)
    labels = rng.integers(0, model.CLASSES, size=BATCH)
    return params, x, labels


def forward(xp, params, x, labels):
    """The forward pass and the loss on xp's device: (logits, act, loss, dlogits, hits)."""
    logits, act = model.forward(xp.asarray(params), xp.asarray(x))
    loss, dlogits, hits = ops.softmax_cross_entropy(logits, xp.asarray(labels))
    return logits, act, loss, dlogits, hits


def backward(xp, params, act, dlogits):
    grad = xp.zeros_like(params)
    model.backward(params, act, dlogits, grad)
    return grad


def on_the_cpu(act, x, dtype):
    """A CPU copy of the GPU's forward state (activations and max-pool choices)."""
    host = model.Activations(np, BATCH, dtype)
    for name in STATE:
        getattr(host, name)[...] = getattr(act, name).get()
    host.input = x
    return host


def rel_norm(got, want):
    return float(np.linalg.norm((got - want).ravel()) / np.linalg.norm(want.ravel()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cuda_forward_and_backward_match_the_cpu_at_batch_64(dtype):
    import cupy
    params, x, labels = inputs(dtype)
    tol = NORM_TOL[dtype]
    logits, act, loss, dlogits, hits = forward(cupy, params, x, labels)
    want_logits, _, want_loss, want_dlogits, want_hits = forward(np, params, x, labels)
    grad = backward(cupy, cupy.asarray(params), act, dlogits).get()
    want_grad = backward(np, params, on_the_cpu(act, x, dtype), dlogits.get())
    errors = {"logits": rel_norm(logits.get(), want_logits), "dlogits": rel_norm(dlogits.get(), want_dlogits)}
    for slot in model.SLOTS:
        errors[slot.name] = rel_norm(model.views(grad)[slot.name], model.views(want_grad)[slot.name])
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert np.isfinite(logits.get()).all() and np.isfinite(grad).all()
    assert max(errors.values()) <= tol, f"||cuda - cpu|| / ||cpu|| above {tol:g}: {errors}"
    assert loss == pytest.approx(want_loss, rel=tol)
    assert hits == want_hits
