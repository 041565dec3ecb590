"""Functional API: one function per op and direction.

NumPy arrays run on the CPU backend; CuPy arrays (or anything exposing
``__cuda_array_interface__``) run on the CUDA backend, on CuPy's current stream, and results
come back as CuPy arrays. float32 and float64; all arrays of one call share the dtype and the
device and must be C-contiguous. Layouts are PyTorch's: activations (N, C, H, W), conv weight
(K, C, R, S), dense weight (out, in). Bad arguments raise TypeError or ValueError naming the
argument; a CUDA failure raises RuntimeError naming the kernel.

For a step captured as a CUDA graph (pyregnet.engine), every op can also
- write into preallocated arrays (``out=``, ``dx=``/``dw=``/``db=``, ``dlogits=``), which must
  have the result's shape, dtype and device and share no memory with the inputs (the elementwise
  ReLU ops may write in place);
- add its sums on the device to a float64 array (``into=``) instead of returning them to the host,
  so that nothing synchronizes;
- read a step or an offset when the kernel runs from a one-element int64 array on its device
  (``step=``, ``offset=``), so that each replay of a graph sees the current value.
"""

from . import _core

__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "relu_forward", "relu_backward", "dense_forward", "dense_backward",
    "batchnorm_forward", "batchnorm_backward", "global_avgpool_forward", "global_avgpool_backward",
    "residual_add_forward", "residual_add_backward",
    "softmax_cross_entropy", "penalty", "penalty_gradient", "adam_update", "sgd_update", "sparsity_count",
    "augment_batch",
    "take",
]


def conv2d_forward(x, w, b, padding, *, stride=1, relu=False, out=None):
    """y = conv(x, w) + b: x (N, C, H, W), w (K, C, R, S), b (K,), zero padding ``padding`` >= 0
    on every side, the filter moved by ``stride`` >= 1 pixels in both directions (any integer
    below 2^31; ResNet-20 uses 1 and 2). Returns y (N, K, P, Q) with P = (H + 2p - R) // stride + 1,
    Q = (W + 2p - S) // stride + 1 (rows and columns the last window does not reach are unused);
    with ``relu``, max(y, 0) applied as y is written (the same values as relu_forward, one pass
    less)."""
    return _core.conv2d_forward(x, w, b, padding, stride=stride, relu=relu, out=out)


def conv2d_backward(x, w, dy, padding, *, stride=1, input_grad=True, dx=None, dw=None, db=None):
    """Gradients of conv2d_forward given dy = dL/dy, for the same padding and stride. Returns
    (dx, dw, db); dx is None, and not computed, when ``input_grad`` is False (a first layer has
    no use for it)."""
    return _core.conv2d_backward(x, w, dy, padding, stride=stride, input_grad=input_grad, dx=dx, dw=dw, db=db)


def maxpool2d_forward(x, *, out=None, argmax=None):
    """2x2 max-pooling, stride 2, floor: x (N, C, H, W) -> y (N, C, H // 2, W // 2). ``argmax``:
    a uint8 array of y's shape that receives each window's maximum position (0..3, row-major)."""
    return _core.maxpool2d_forward(x, out=out, argmax=argmax)


def maxpool2d_backward(x, dy, *, out=None, argmax=None, relu_y=None):
    """dx: each dy element goes to its window's maximum in x (the first one on ties, in
    row-major order; a NaN counts as the maximum); everything else, odd trailing rows and
    columns included, gets 0. ``argmax`` from maxpool2d_forward of the same x: the positions
    are read from it instead of recomputed from x (x then only gives the shape, and ``out`` may
    be x itself). ``relu_y``, the pool's output y, where x is a ReLU's output: ReLU's backward
    fused, dx = relu_backward(x, maxpool2d_backward(x, dy)) (dy passes where y > 0: at its
    window's maximum x is y)."""
    return _core.maxpool2d_backward(x, dy, out=out, argmax=argmax, relu_y=relu_y)


def relu_forward(x, *, out=None):
    """y = max(x, 0), any shape (NaN passes through). ``out`` may be x itself."""
    return _core.relu_forward(x, out=out)


def relu_backward(y, dy, *, out=None):
    """dx = dy where the forward output y > 0, else 0. ``out`` may be dy itself."""
    return _core.relu_backward(y, dy, out=out)


def dense_forward(x, w, b, *, relu=False, out=None):
    """y = x . w^T + b: x (N, in), w (out, in), b (out,) -> y (N, out); with ``relu``,
    max(y, 0) applied as y is written."""
    return _core.dense_forward(x, w, b, relu=relu, out=out)


def dense_backward(x, w, dy, *, dx=None, dw=None, db=None):
    """Gradients of dense_forward given dy (N, out). Returns (dx, dw, db)."""
    return _core.dense_backward(x, w, dy, dx=dx, dw=dw, db=db)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training=True, momentum=0.1, eps=1e-5,
                      out=None, mean=None, invstd=None):
    """Batch normalization of x (N, C, H, W) per channel: y = (x - mean) * invstd * gamma + beta
    with gamma, beta, running_mean, running_var (C,). Returns (y, mean, invstd), the statistics
    that normalized (C,), for batchnorm_backward.

    ``training``: mean and the biased variance var of the batch (over N, H, W; N * H * W > 1),
    invstd = 1 / sqrt(var + eps), and running_mean, running_var updated in place as PyTorch does:
    running = (1 - momentum) * running + momentum * batch statistic, with the unbiased variance
    var * M / (M - 1), M = N * H * W. Else the running statistics normalize and are only read.
    The sums are in double, in an order fixed by the shape: the same bits for any thread count.
    mean and invstd are of x's dtype (as PyTorch saves them): in float32, x - mean is off by up
    to 6e-8 * |mean|. ``out``, ``mean``, ``invstd``: preallocated results."""
    return _core.batchnorm_forward(x, gamma, beta, running_mean, running_var, training=training,
                                   momentum=momentum, eps=eps, out=out, mean=mean, invstd=invstd)


def batchnorm_backward(x, gamma, dy, mean, invstd, *, training=True, dx=None, dgamma=None, dbeta=None):
    """Gradients of batchnorm_forward given dy (N, C, H, W), with the forward's x, gamma and its
    returned mean and invstd. Returns (dx, dgamma, dbeta). ``training`` as in the forward call:
    with batch statistics dx includes their dependence on x; with running ones it is
    dy * gamma * invstd."""
    return _core.batchnorm_backward(x, gamma, dy, mean, invstd, training=training, dx=dx, dgamma=dgamma,
                                    dbeta=dbeta)


def global_avgpool_forward(x, *, out=None):
    """y[n, c] = the mean of x[n, c] over H and W (summed in double): x (N, C, H, W) -> y (N, C)."""
    return _core.global_avgpool_forward(x, out=out)


def global_avgpool_backward(x, dy, *, out=None):
    """dx[n, c, h, w] = dy[n, c] / (H * W); x gives only the shape."""
    return _core.global_avgpool_backward(x, dy, out=out)


def residual_add_forward(main, x, stride, *, relu=False, out=None):
    """The end of a ResNet basic block: y = main + shortcut(x), with He et al.'s option-A shortcut
    shortcut(x)[n, k, p, q] = x[n, k, p * stride, q * stride] for k < C, and 0 for the channels
    C <= k < K that x lacks (appended after x's). main (N, K, P, Q), x (N, C, H, W), C <= K,
    P = ceil(H / stride), Q = ceil(W / stride); stride 1 with K = C is the identity shortcut.
    With ``relu``, max(y, 0). ``out`` may be main itself."""
    return _core.residual_add_forward(main, x, stride, relu=relu, out=out)


def residual_add_backward(dy, grad, stride, *, out=None):
    """The gradient of x from residual_add_forward, added to ``grad`` (N, C, H, W), the gradient of
    x from the block's residual branch: out = grad + the shortcut's gradient from dy
    (N, K, P, Q), i.e. dy[n, c, h / stride, w / stride] where stride divides h and w. (The
    gradient of main is dy itself.) ``out`` may be grad itself."""
    return _core.residual_add_backward(dy, grad, stride, out=out)


def softmax_cross_entropy(logits, labels, *, dlogits=None, into=None):
    """Mean softmax cross-entropy of logits (N, classes) against integer labels (N,) of any
    integer dtype, computed stably. Returns (loss: float, dlogits: the gradient of the mean
    loss, correct: int, the number of rows whose argmax (first on ties) is the label).
    Labels outside [0, classes) raise ValueError. On the GPU this synchronizes the stream.

    ``into``: a float64 array (3,) to which [sum of the row losses, correct, bad labels] are
    added on its device; then nothing synchronizes, the call returns (None, dlogits, None), and
    on the GPU bad labels are only counted (the CPU still raises)."""
    return _core.softmax_cross_entropy(logits, labels, dlogits=dlogits, into=into)


def penalty(w, l1, l2, *, into=None):
    """l1 * sum|w| + l2 * sum w^2 (no 1/2), accumulated in double precision. Returns float, or
    with ``into`` (float64 (1,)) adds it there on the device and returns None."""
    return _core.penalty(w, l1, l2, into=into)


def penalty_gradient(w, grad, l1, l2, *, penalized=None, with_penalty=False, into=None):
    """The penalty's gradient as its own pass, in place: grad += l1 * sign(w) + 2 * l2 * w
    (sign(0) = 0) over the first ``penalized`` elements (None: all). The unfused alternative to
    adam_update's fused penalty. Returns the penalty value of those weights, summed in the same
    pass, when ``with_penalty`` (added to ``into`` instead when given); else None."""
    return _core.penalty_gradient(w, grad, l1, l2, penalized=penalized, with_penalty=with_penalty, into=into)


def adam_update(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-7,
                l1=0.0, l2=0.0, penalized=None, proximal=False, with_penalty=False, into=None):
    """The fused penalty + Adam update, in place on param, m and v, in one pass and one launch.

    g' = grad + l1 * sign(param) + 2 * l2 * param   (sign(0) = 0; g' = grad when proximal)
    m = beta1 m + (1 - beta1) g';  v = beta2 v + (1 - beta2) g'^2
    param -= lr * sqrt(1 - beta2^step) / (1 - beta1^step) * m / (sqrt(v) + eps)
    proximal: then param = sign(param) * max(|param| - lr * l1, 0) / (1 + 2 * lr * l2)

    ``penalized``: over a flat parameter buffer whose kernel weights come first, the number of
    leading elements that get the penalty (the biases after them do not); None = all.
    ``proximal``: the penalty as the elastic-net proximal operator after the step (exact zeros
    under L1, decoupled weight decay under L2) instead of as a gradient before it.
    ``with_penalty``: also return l1 * sum|w| + l2 * sum w^2 of those weights before the step,
    summed (in double) in the same pass (or add it to ``into``, float64 (1,)); else None.
    ``step``: t >= 1, or an int64 array (1,) holding t, read when the kernel runs.
    """
    return _core.adam_update(param, grad, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, l1=l1,
                             l2=l2, penalized=penalized, proximal=proximal, with_penalty=with_penalty, into=into)


def sgd_update(param, grad, velocity, *, lr, momentum=0.9, l1=0.0, l2=0.0, penalized=None, proximal=False,
               with_penalty=False, into=None):
    """The fused penalty + SGD-with-momentum update (PyTorch's SGD: no dampening, no Nesterov), in
    place on param and velocity, in one pass and one launch.

    g' = grad + l1 * sign(param) + 2 * l2 * param   (g' = grad when proximal)
    velocity = momentum * velocity + g';  param -= lr * velocity
    proximal: then param = sign(param) * max(|param| - lr * l1, 0) / (1 + 2 * lr * l2)

    ``penalized``, ``with_penalty`` and ``into`` as for adam_update. A zero velocity makes the first
    step velocity = g', as PyTorch's first step does.
    """
    return _core.sgd_update(param, grad, velocity, lr=lr, momentum=momentum, l1=l1, l2=l2, penalized=penalized,
                            proximal=proximal, with_penalty=with_penalty, into=into)


def sparsity_count(w, threshold):
    """Number of elements with |w| <= threshold (threshold 0 counts exact zeros). Returns int."""
    return _core.sparsity_count(w, threshold)


def augment_batch(images, index, *, seed, step, max_shift=3, flip=True, dtype="float32", offset=0, out=None,
                  into=None):
    """Gather and augment a training batch on the images' device.

    images: uint8 (N, H, W, C), the whole data set; index: integers (n,), the samples to take from,
    starting at position ``offset``: B = out.shape[0] of them when ``out`` is given (needed when
    offset is an array), else all from offset on. ``step`` and ``offset`` may be int64 arrays (1,)
    read when the kernel runs. Positions or indices out of range raise ValueError, or are counted
    in ``into`` (float64 (1,)) when given, their images left zero.
    Returns batch (B, C, H, W) of ``dtype`` in [0, 1]: sample b is images[index[offset + b]]
    mirrored left-right with probability 1/2 when ``flip``, then shifted by (dy, dx), each uniform
    in [-max_shift, max_shift]; pixels shifted in from outside repeat the nearest edge pixel
    (Keras' fill_mode="nearest"). The draws are a hash of (seed, step, b): the same arguments
    give the same batch on every backend. max_shift=0 and flip=False only gather and scale.
    """
    return _core.augment_batch(images, index, seed=seed, step=step, max_shift=max_shift, flip=flip,
                               dtype=dtype, offset=offset, out=out, into=into)


def take(values, index, *, offset=0, out=None):
    """The batch's labels: out[b] = values[index[offset + b]] as int32, B = out.shape[0] when
    ``out`` is given (needed when offset is an int64 array (1,) read when the kernel runs), else
    all from offset on. A position or value out of range gives -1, which softmax_cross_entropy
    then reports as a bad label."""
    return _core.take(values, index, offset=offset, out=out)
