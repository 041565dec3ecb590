"""Finite-difference gradient checking helpers for the tests.

check_backward works with any forward/backward pair called like the functions
in pyregnet.reference, so it can be reused for the compiled kernels.
"""

import numpy as np


def numerical_gradient(f, x, h=1e-6):
    """Central finite differences of the scalar f() with respect to array x.

    f takes no arguments and must read x (it closes over it); x is perturbed
    in place one element at a time and restored afterwards.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        grad[idx] = central_difference(f, x, idx, h)
    return grad


def central_difference(f, x, index, h=1e-6):
    """(f(x + h e) - f(x - h e)) / 2h for the coordinate `index` of x, perturbed in place and
    restored."""
    old = x[index]
    x[index] = old + h
    f_plus = float(f())
    x[index] = old - h
    f_minus = float(f())
    x[index] = old
    return (f_plus - f_minus) / (2.0 * h)


def check_backward(forward, backward, inputs, wrt, rtol, atol, seed=0, h=1e-6):
    """Compare analytic gradients from `backward` with finite differences of `forward`.

    forward(*inputs) -> array y.
    backward(*inputs, G) -> one gradient per input (a tuple aligned with
        `inputs`, or a single array when there is one input), where G = dL/dy.
    wrt: indices into `inputs` whose gradients are checked.

    The scalar loss is L = sum(forward(*inputs) * G) for a random G, so the
    true dL/dinput is exactly what backward computes from G. Inputs are
    perturbed in place (and restored), so they must be writable arrays.
    Returns a dict {index: max abs error}.
    """
    rng = np.random.default_rng(seed)
    inputs = list(inputs)
    G = rng.standard_normal(np.shape(forward(*inputs)))

    def loss():
        return np.sum(np.asarray(forward(*inputs), dtype=np.float64) * G)

    grads = backward(*inputs, G)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)

    errors = {}
    for i in wrt:
        analytic = np.asarray(grads[i], dtype=np.float64)
        numeric = numerical_gradient(loss, inputs[i], h=h)
        assert analytic.shape == numeric.shape, (i, analytic.shape, numeric.shape)
        errors[i] = float(np.max(np.abs(analytic - numeric), initial=0.0))
        print(f"input {i}: shape {analytic.shape}, max abs error {errors[i]:.3e}")
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")
    return errors
