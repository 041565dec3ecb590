"""NumPy float64 reference ("oracle") for every op of the pyregnet kernel library.

Each function here is the specification that the C++ and CUDA kernels are
tested against. The code is written to be read rather than to be fast, but it
is vectorized enough (loops over filter taps, never over output pixels) that
tests on small shapes run in milliseconds. Every function converts its array
inputs to float64 and computes in float64.

Layouts follow PyTorch: activations are NCHW, conv weights are (K, C, R, S),
dense weights are (out, in).
"""

import numpy as np

# Shape letters:
#   N  batch size
#   C  input channels         H, W  input height, width
#   K  output channels        R, S  filter height, width
#                             P, Q  output height, width


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------
# Convolution: stride 1, zero padding `padding` on all four sides,
# cross-correlation (no filter flip), like torch.nn.functional.conv2d.
# --------------------------------------------------------------------------

def _pad(x, padding):
    p = padding
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def conv2d_forward(x, w, b, padding, stride=1):
    """y[n,k,p,q] = b[k] + sum_{c,r,s} xpad[n,c,p*stride+r,q*stride+s] * w[k,c,r,s]."""
    x, w, b = _f64(x), _f64(w), _f64(b)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P = (H + 2 * padding - R) // stride + 1
    Q = (W + 2 * padding - S) // stride + 1
    xp = _pad(x, padding)
    y = np.zeros((N, K, P, Q))
    for r in range(R):
        for s in range(S):
            window = xp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride]
            y += np.einsum("nchw,kc->nkhw", window, w[:, :, r, s])
    return y + b[None, :, None, None]


def conv2d_backward(x, w, dy, padding, stride=1):
    """Gradients (dx, dw, db) of conv2d_forward given the upstream gradient dy (N,K,P,Q)."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            rows, cols = slice(r, r + stride * (P - 1) + 1, stride), slice(s, s + stride * (Q - 1) + 1, stride)
            dxp[:, :, rows, cols] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, r, s])
            dw[:, :, r, s] = np.einsum("nkpq,ncpq->kc", dy, xp[:, :, rows, cols])
    dx = dxp[:, :, padding:padding + H, padding:padding + W]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


# --------------------------------------------------------------------------
# Max pooling: 2x2 window, stride 2, floor mode.
# --------------------------------------------------------------------------

def _windows(x):
    """(N,C,H,W) -> (N,C,H//2,W//2,4); the last axis lists each 2x2 window in
    row-major order (0,0), (0,1), (1,0), (1,1). Odd last row/column dropped."""
    N, C, H, W = x.shape
    Ho, Wo = H // 2, W // 2
    xc = x[:, :, :2 * Ho, :2 * Wo].reshape(N, C, Ho, 2, Wo, 2)
    return xc.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, 4)


def maxpool2d_forward(x):
    x = _f64(x)
    return _windows(x).max(axis=-1)


def maxpool2d_backward(x, dy):
    """Each dy element goes to the argmax of its window; on ties the first
    maximum in row-major window order wins (np.argmax semantics)."""
    x, dy = _f64(x), _f64(dy)
    N, C, H, W = x.shape
    Ho, Wo = H // 2, W // 2
    win = _windows(x)
    first_max = win.argmax(axis=-1)                       # (N,C,Ho,Wo)
    dwin = (np.arange(4) == first_max[..., None]) * dy[..., None]
    dx = np.zeros_like(x)
    dx[:, :, :2 * Ho, :2 * Wo] = (
        dwin.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, 2 * Ho, 2 * Wo)
    )
    return dx


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------

def relu_forward(x):
    x = _f64(x)
    return np.maximum(x, 0.0)


def maxpool2d_relu_backward(x, dy):
    """maxpool2d_backward through the ReLU whose output x is: relu_backward(x, maxpool2d_backward(x, dy))."""
    return relu_backward(x, maxpool2d_backward(x, dy))


def relu_backward(y, dy):
    """Takes the forward OUTPUT y: dx = dy where y > 0, else 0."""
    y, dy = _f64(y), _f64(dy)
    return np.where(y > 0, dy, 0.0)


# --------------------------------------------------------------------------
# Dense (fully connected): x (N,in), w (out,in), b (out,)
# --------------------------------------------------------------------------

def dense_forward(x, w, b):
    x, w, b = _f64(x), _f64(w), _f64(b)
    return x @ w.T + b


def dense_backward(x, w, dy):
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    dx = dy @ w
    dw = dy.T @ x
    db = dy.sum(axis=0)
    return dx, dw, db


# --------------------------------------------------------------------------
# Batch normalization over (N, C, H, W), per channel; global average pooling;
# the residual add with the option-A shortcut of ResNet.
# --------------------------------------------------------------------------

def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training=True, momentum=0.1, eps=1e-5):
    """Returns (y, mean, invstd, new running_mean, new running_var); the inputs are not changed.

    training: batch mean and biased variance over (N, H, W) normalize; the running statistics
    move towards the batch's, the variance unbiased (PyTorch's convention). Else the running
    statistics normalize and are returned unchanged."""
    x, gamma, beta = _f64(x), _f64(gamma), _f64(beta)
    running_mean, running_var = _f64(running_mean).copy(), _f64(running_var).copy()
    if training:
        M = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * M / (M - 1)
    else:
        mean, var = running_mean, running_var
    invstd = 1.0 / np.sqrt(var + eps)
    c = (slice(None), None, None)
    y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c]
    return y, mean, invstd, running_mean, running_var


def batchnorm_backward(x, gamma, dy, mean, invstd, *, training=True):
    """Gradients (dx, dgamma, dbeta) of batchnorm_forward given dy, from the statistics that the
    forward pass returned. In training mode mean and invstd depend on x:
    dx = invstd / M * (M * g - sum(g) - xhat * sum(g * xhat)) with g = dy * gamma per channel."""
    x, gamma, dy, mean, invstd = _f64(x), _f64(gamma), _f64(dy), _f64(mean), _f64(invstd)
    c = (slice(None), None, None)
    xhat = (x - mean[c]) * invstd[c]
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    g = dy * gamma[c]
    if not training:
        return g * invstd[c], dgamma, dbeta
    M = x.shape[0] * x.shape[2] * x.shape[3]
    sum_g = g.sum(axis=(0, 2, 3))
    sum_gx = (g * xhat).sum(axis=(0, 2, 3))
    dx = invstd[c] / M * (M * g - sum_g[c] - xhat * sum_gx[c])
    return dx, dgamma, dbeta


def global_avgpool_forward(x):
    """(N, C, H, W) -> (N, C): the mean over H and W."""
    return _f64(x).mean(axis=(2, 3))


def global_avgpool_backward(x, dy):
    """dx = dy / (H * W) spread over each plane."""
    N, C, H, W = np.shape(x)
    return np.broadcast_to(_f64(dy)[:, :, None, None] / (H * W), (N, C, H, W)).copy()


def shortcut(x, K, stride):
    """He et al.'s option A: x[:, :, ::stride, ::stride], then zero channels up to K."""
    x = _f64(x)[:, :, ::stride, ::stride]
    N, C, P, Q = x.shape
    return np.concatenate([x, np.zeros((N, K - C, P, Q))], axis=1)


def residual_add_forward(main, x, stride, *, relu=False):
    """main + shortcut(x), with max(., 0) when relu."""
    y = _f64(main) + shortcut(x, np.shape(main)[1], stride)
    return np.maximum(y, 0) if relu else y


def residual_add_backward(dy, grad, stride):
    """grad + the shortcut's adjoint applied to dy: dy's first C channels scattered back to the
    subsampled positions of x (N, C, H, W), zeros elsewhere."""
    grad = _f64(grad).copy()
    C = grad.shape[1]
    grad[:, :, ::stride, ::stride] += _f64(dy)[:, :C]
    return grad


# --------------------------------------------------------------------------
# Softmax cross-entropy, mean over the batch
# --------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    """Returns (loss: float, dlogits: (N,classes), correct: int)."""
    z = _f64(logits)
    labels = np.asarray(labels, dtype=np.int64)
    N = z.shape[0]
    rows = np.arange(N)
    zs = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(zs).sum(axis=1, keepdims=True))  # logsumexp(z) - max(z)
    loss = float(np.mean(lse[:, 0] - zs[rows, labels]))
    dlogits = np.exp(zs - lse)                            # softmax(z)
    dlogits[rows, labels] -= 1.0
    dlogits /= N
    correct = int(np.count_nonzero(z.argmax(axis=1) == labels))
    return loss, dlogits, correct


# --------------------------------------------------------------------------
# L1/L2 weight penalty
# --------------------------------------------------------------------------

def penalty(w, l1, l2):
    """l1 * sum|w| + l2 * sum(w^2)  (no factor 1/2)."""
    w = _f64(w)
    return float(l1 * np.abs(w).sum() + l2 * np.square(w).sum())


def penalty_grad(w, l1, l2):
    """l1 * sign(w) + 2 * l2 * w, with sign(0) = 0."""
    w = _f64(w)
    return l1 * np.sign(w) + 2.0 * l2 * w


def penalty_gradient(w, grad, l1, l2, *, penalized=None, with_penalty=False):
    """grad[:k] += penalty_grad(w[:k]) in place (flat order; k = penalized or all); returns
    penalty(w[:k]) when with_penalty, else None."""
    flat_w, flat_g = np.asarray(w).reshape(-1), grad.reshape(-1)
    k = flat_w.size if penalized is None else penalized
    flat_g[:k] += penalty_grad(flat_w[:k], l1, l2)
    return penalty(flat_w[:k], l1, l2) if with_penalty else None


# --------------------------------------------------------------------------
# Adam (Kingma & Ba, "efficient form" with eps outside the bias correction,
# as Keras does it)
# --------------------------------------------------------------------------

def prox_elastic(z, lr, l1, l2):
    """The elastic-net proximal operator with step lr: argmin_w (w - z)^2 / (2 lr) + l1 |w| + l2 w^2."""
    z = _f64(z)
    return np.sign(z) * np.maximum(np.abs(z) - lr * l1, 0.0) / (1.0 + 2.0 * lr * l2)


def _penalized_step(param, grad, *, lr, l1, l2, penalized, proximal, with_penalty, step):
    """Shared by the optimizers: the penalty value before the step, the gradient the optimizer
    sees, and after `step(g)` (which updates param in place) the proximal operator."""
    flat = param.reshape(-1)
    k = flat.size if penalized is None else penalized
    value = penalty(flat[:k], l1, l2) if with_penalty else None
    g = _f64(grad).reshape(-1).copy()
    if not proximal:
        g[:k] += penalty_grad(flat[:k], l1, l2)
    step(g.reshape(param.shape))
    if proximal:
        flat[:k] = prox_elastic(flat[:k], lr, l1, l2)
    return value


def adam_update(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-7,
                l1=0.0, l2=0.0, penalized=None, proximal=False, with_penalty=False):
    """One Adam step, IN PLACE on param, m, v (float64 numpy arrays); returns the penalty value
    of the penalized weights before the step when with_penalty, else None.

    The penalty gradient is added to grad for the first `penalized` elements in flat C order
    only (None = all elements), or with `proximal` the proximal operator is applied to them after
    the step. `step` counts from 1.
    """
    def adam(g):
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        alpha_t = lr * np.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        param[...] = param - alpha_t * m / (np.sqrt(v) + eps)
    return _penalized_step(param, grad, lr=lr, l1=l1, l2=l2, penalized=penalized, proximal=proximal,
                           with_penalty=with_penalty, step=adam)


def sgd_update(param, grad, velocity, *, lr, momentum=0.9, l1=0.0, l2=0.0, penalized=None, proximal=False,
               with_penalty=False):
    """One step of SGD with momentum as PyTorch's SGD (no dampening, no Nesterov), IN PLACE on
    param and velocity; the penalty as in adam_update."""
    def sgd(g):
        velocity[...] = momentum * velocity + g
        param[...] = param - lr * velocity
    return _penalized_step(param, grad, lr=lr, l1=l1, l2=l2, penalized=penalized, proximal=proximal,
                           with_penalty=with_penalty, step=sgd)


# --------------------------------------------------------------------------
# Sparsity
# --------------------------------------------------------------------------

def sparsity_count(w, threshold):
    """Number of elements with |w| <= threshold (threshold 0 counts exact zeros)."""
    w = _f64(w)
    return int(np.count_nonzero(np.abs(w) <= threshold))


# --------------------------------------------------------------------------
# Augmentation: gather a batch, random horizontal flip then shift (edge
# pixels repeat), uint8 (N,H,W,C) -> float (B,C,H,W) in [0, 1]
# --------------------------------------------------------------------------

_U64 = np.uint64


def _mix64(z):
    """SplitMix64's finalizer on uint64 arrays (arithmetic wraps modulo 2**64)."""
    z = np.asarray(z, dtype=_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def augment_draws(seed, step, batch, max_shift, flip):
    """The random (dy, dx, flip) of each sample of a batch: a hash of (seed, step, position)."""
    with np.errstate(over="ignore"):
        r = _mix64(_mix64(_U64(seed) ^ _mix64(_U64(step))) + np.arange(batch, dtype=_U64))
    span = _U64(2 * max_shift + 1)
    dy = ((r & _U64(0xFFFF)) % span).astype(np.int64) - max_shift
    dx = (((r >> _U64(16)) & _U64(0xFFFF)) % span).astype(np.int64) - max_shift
    flips = flip & ((r >> _U64(63)) != 0)
    return dy, dx, flips


def augment_batch(images, index, *, seed, step, max_shift=3, flip=True):
    images = np.asarray(images)
    N, H, W, C = images.shape
    index = np.asarray(index, dtype=np.int64)
    dy, dx, flips = augment_draws(seed, step, len(index), max_shift, flip)
    out = np.empty((len(index), C, H, W))
    for b, n in enumerate(index):
        rows = np.clip(np.arange(H) - dy[b], 0, H - 1)
        cols = np.clip(np.arange(W) - dx[b], 0, W - 1)
        if flips[b]:
            cols = W - 1 - cols
        out[b] = images[n][rows][:, cols].transpose(2, 0, 1) / 255.0
    return out
