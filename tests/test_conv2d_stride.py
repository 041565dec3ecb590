"""conv2d with a stride (ResNet-20 downsamples with 3x3, padding 1, stride 2) on every backend
present: against the NumPy float64 reference in float32 and float64 on awkward sizes, float64
gradient checks, preallocated outputs, results repeated bit for bit (on the CPU whatever the
number of threads), and a captured CUDA graph that replays to the eager bits."""

import numpy as np
import pytest

from bits import assert_thread_count_independent, digest
from conftest import CUDA_SKIP, TOLERANCES, assert_close
from gradcheck import check_backward
from pyregnet import ops
from pyregnet import reference as ref

# (N, C, H, W, K, R, S, padding, stride)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0, 2),          # everything 1: one output pixel
    (1, 3, 7, 9, 5, 3, 3, 1, 2),          # batch 1, odd H and W, the stride dividing H + 2p - R
    (2, 5, 8, 10, 7, 3, 3, 1, 2),         # even H and W: the last row and column under no window's end
    (3, 13, 11, 13, 17, 3, 3, 0, 2),      # channel counts no multiple of 4, 8 or a tile
    (2, 6, 9, 7, 10, 2, 3, 2, 2),         # non-square filter, padding 2
    (2, 4, 6, 7, 3, 1, 1, 0, 2),          # 1x1 filter: three in four input pixels get no gradient
    (2, 3, 10, 11, 4, 3, 3, 1, 3),        # stride 3
    (1, 2, 4, 4, 3, 6, 6, 1, 2),          # filter as large as the padded input: 1x1 output
    (4, 16, 32, 32, 32, 3, 3, 1, 2),      # ResNet-20's first downsampling conv
    (3, 32, 16, 16, 64, 3, 3, 1, 2),      # its second
    (9, 3, 41, 40, 33, 3, 3, 1, 2),       # K > 32, N*P*Q = 3780: a long dw reduction
    # Larger than one CPU im2col tile (1 MiB of scratch per thread)
    (2, 300, 12, 12, 5, 5, 5, 2, 2),      # C*R*S = 7500: the forward reduction in several row tiles
    (1, 2, 801, 800, 2, 3, 3, 1, 2),      # P*Q = 160400: column tiles; float64 backward one row at a time
    (1, 1, 1041, 1040, 1, 3, 3, 1, 2),    # P*Q = 270920: float32 backward one row at a time too
]


def ids(case):
    return "x".join(map(str, case[:8])) + f"-stride{case[8]}"


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def out_size(extent, filt, pad, stride):
    return (extent + 2 * pad - filt) // stride + 1


def assert_db_close(got, want, dy, dtype):
    """db[k] adds the N*P*Q values of dy[:, k] (160,000 and more here): the result largely
    cancels, so a tolerance relative to max|db| would pass by luck. The error of adding them one
    after another is bounded, to first order, by the unit roundoff times the sum of the partial
    sums' magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4);
    the GPU's tree of sums has smaller partial sums than that order."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    per_channel = dy.astype(np.float64).transpose(1, 0, 2, 3).reshape(dy.shape[1], -1)
    atol = np.finfo(dtype).eps / 2 * float(np.abs(np.cumsum(per_channel, axis=1)).sum(axis=1).max())
    err = float(np.max(np.abs(got - want)))
    print(f"db: max abs error {err:.3e} = {err / max(atol, 1e-300):.2e} * the first-order bound ({np.dtype(dtype).name})")
    np.testing.assert_allclose(got, want, rtol=TOLERANCES[dtype]["rtol"], atol=atol, err_msg="db")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_against_reference(backend, dtype, case):
    N, C, H, W, K, R, S, pad, stride = case
    rng = np.random.default_rng(40)
    x, w, b = rand(rng, (N, C, H, W), dtype), rand(rng, (K, C, R, S), dtype), rand(rng, (K,), dtype)
    xd, wd = backend.to_device(x), backend.to_device(w)
    y = backend.to_host(ops.conv2d_forward(xd, wd, backend.to_device(b), pad, stride=stride))
    assert y.shape == (N, K, out_size(H, R, pad, stride), out_size(W, S, pad, stride))
    assert_close(y, ref.conv2d_forward(x, w, b, pad, stride), dtype, "y")

    dy = rand(rng, y.shape, dtype)
    grads = ops.conv2d_backward(xd, wd, backend.to_device(dy), pad, stride=stride)
    want = ref.conv2d_backward(x, w, dy, pad, stride)
    assert_close(backend.to_host(grads[0]), want[0], dtype, "dx")
    assert_close(backend.to_host(grads[1]), want[1], dtype, "dw")
    assert_db_close(backend.to_host(grads[2]), want[2], dy, dtype)

    # Without the input gradient: no dx, the same dw and db to the bit.
    dx, dw, db = ops.conv2d_backward(xd, wd, backend.to_device(dy), pad, stride=stride, input_grad=False)
    assert dx is None
    np.testing.assert_array_equal(backend.to_host(dw), backend.to_host(grads[1]))
    np.testing.assert_array_equal(backend.to_host(db), backend.to_host(grads[2]))


def test_pixels_no_window_reads_get_exactly_zero(backend, dtype):
    # 1x1 filter, stride 2, H and W even: odd rows and columns are never read, so their gradient
    # is 0 exactly (no rounding residue of a scatter), and the forward is a subsampled channel mix.
    rng = np.random.default_rng(41)
    x, w, b = rand(rng, (2, 3, 6, 8), dtype), rand(rng, (4, 3, 1, 1), dtype), np.zeros(4, dtype)
    y = backend.to_host(ops.conv2d_forward(*map(backend.to_device, (x, w, b)), 0, stride=2))
    assert_close(y, np.einsum("nchw,kc->nkhw", x[:, :, ::2, ::2].astype(np.float64), w[:, :, 0, 0]), dtype, "y")
    dy = rand(rng, y.shape, dtype)
    dx = backend.to_host(ops.conv2d_backward(*map(backend.to_device, (x, w, dy)), 0, stride=2)[0])
    unread = np.ones(x.shape, bool)
    unread[:, :, ::2, ::2] = False
    assert np.all(dx[unread] == 0)
    assert np.all(dx[~unread] != 0)


def test_stride_is_keyword_only_and_defaults_to_1(backend, dtype):
    rng = np.random.default_rng(42)
    x, w, b = (backend.to_device(rand(rng, s, dtype)) for s in ((2, 3, 6, 5), (4, 3, 3, 3), (4,)))
    with pytest.raises(TypeError):
        ops.conv2d_forward(x, w, b, 1, 2)
    np.testing.assert_array_equal(backend.to_host(ops.conv2d_forward(x, w, b, 1, stride=1)),
                                  backend.to_host(ops.conv2d_forward(x, w, b, 1)))
    assert ops.conv2d_forward(x, w, b, 1, stride=2).shape == (2, 4, 3, 3)


@pytest.mark.parametrize("case", [(1, 2, 5, 7, 3, 3, 3, 1, 2), (2, 3, 6, 5, 2, 2, 3, 0, 2),
                                  (1, 2, 7, 8, 2, 3, 3, 2, 3), (2, 3, 4, 6, 2, 1, 1, 0, 2)], ids=ids)
def test_gradients_float64(backend, case):
    N, C, H, W, K, R, S, pad, stride = case
    rng = np.random.default_rng(43)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, S)), rng.standard_normal(K)
    dev = backend.to_device

    def forward(x, w, b):
        return backend.to_host(ops.conv2d_forward(dev(x), dev(w), dev(b), pad, stride=stride))

    def backward(x, w, b, dy):
        return tuple(backend.to_host(g) for g in ops.conv2d_backward(dev(x), dev(w), dev(dy), pad, stride=stride))

    # Finite differences with h = 1e-6 in float64 agree with exact gradients to ~1e-8 here.
    check_backward(forward, backward, [x, w, b], wrt=[0, 1, 2], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("relu", [False, True])
def test_preallocated_outputs(backend, dtype, relu):
    # A captured step writes into arrays it owns: the same bits as the returned ones.
    rng = np.random.default_rng(44)
    x, w, b = (backend.to_device(rand(rng, s, dtype)) for s in ((3, 5, 9, 8), (6, 5, 3, 3), (6,)))
    plain = backend.to_host(ops.conv2d_forward(x, w, b, 1, stride=2))
    expected = np.maximum(plain, 0) if relu else plain
    out = backend.to_device(np.full(plain.shape, np.nan, dtype))
    assert ops.conv2d_forward(x, w, b, 1, stride=2, relu=relu, out=out) is out
    np.testing.assert_array_equal(backend.to_host(out), expected)

    dy = backend.to_device(rand(rng, plain.shape, dtype))
    want = [backend.to_host(a) for a in ops.conv2d_backward(x, w, dy, 1, stride=2)]
    bufs = [backend.to_device(np.full(a.shape, np.nan, dtype)) for a in want]
    got = ops.conv2d_backward(x, w, dy, 1, stride=2, dx=bufs[0], dw=bufs[1], db=bufs[2])
    for g, buf, a, name in zip(got, bufs, want, ("dx", "dw", "db")):
        assert g is buf
        np.testing.assert_array_equal(backend.to_host(buf), a, err_msg=name)


def test_out_of_the_wrong_shape_for_the_stride(backend):
    rng = np.random.default_rng(45)
    x, w, b = (backend.to_device(rand(rng, s, np.float32)) for s in ((2, 3, 5, 6), (4, 3, 3, 3), (4,)))
    out = backend.to_device(np.zeros((2, 4, 5, 6), np.float32))  # the stride-1 shape
    with pytest.raises(ValueError, match=r"^conv2d_forward: out: expected shape \(2, 4, 3, 3\) but got \(2, 4, 5, 6\)"):
        ops.conv2d_forward(x, w, b, 1, stride=2, out=out)
    dx = backend.to_device(np.zeros((2, 3, 5, 5), np.float32))
    dy = backend.to_device(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"^conv2d_backward: dx: expected shape \(2, 3, 5, 6\)"):
        ops.conv2d_backward(x, w, dy, 1, stride=2, dx=dx)


# ------------------------------------------------------------------ reproducibility

def run_all(to_device, to_host, dtype):
    """A strided conv's forward and backward on fixed data, with several dw partials (N > 4 on
    the CPU) and split-K on the GPU; returns the results as host arrays."""
    rng = np.random.default_rng(46)
    x, w, b = (to_device(rand(rng, s, dtype)) for s in ((9, 5, 33, 31), (6, 5, 3, 3), (6,)))
    y = ops.conv2d_forward(x, w, b, 1, stride=2, relu=True)
    dy = to_device(rand(rng, y.shape, dtype))
    return [to_host(a) for a in (y, *ops.conv2d_backward(x, w, dy, 1, stride=2))]


def test_repeatable_bit_for_bit(backend, dtype):
    first = run_all(backend.to_device, backend.to_host, dtype)
    assert digest(run_all(backend.to_device, backend.to_host, dtype)) == digest(first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_bits_do_not_depend_on_the_thread_count(dtype):
    assert_thread_count_independent("test_conv2d_stride", dtype)


# ------------------------------------------------------------------ CUDA graph capture

def downsampling_step(s):
    """A downsampling conv's forward and backward into the preallocated arrays of s."""
    ops.conv2d_forward(s["x"], s["w"], s["b"], 1, stride=2, relu=True, out=s["y"])
    ops.relu_backward(s["y"], s["dy"], out=s["dz"])
    ops.conv2d_backward(s["x"], s["w"], s["dz"], 1, stride=2, dx=s["dx"], dw=s["dw"], db=s["db"])


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_captured_cuda_graph_gives_the_eager_bits(dtype):
    # The strided conv allocates nothing outside the stream and never synchronizes (split-K's
    # workspace included, which this shape uses for dw): a captured step replays to the eager bits.
    import cupy as cp
    rng = np.random.default_rng(47)
    host = dict(x=rand(rng, (32, 16, 32, 32), dtype), w=rand(rng, (32, 16, 3, 3), dtype), b=rand(rng, (32,), dtype),
                dy=rand(rng, (32, 32, 16, 16), dtype))
    outputs = dict(y=(32, 32, 16, 16), dz=(32, 32, 16, 16), dx=(32, 16, 32, 32), dw=(32, 16, 3, 3), db=(32,))

    def state():
        s = {k: cp.asarray(v) for k, v in host.items()}
        s.update({k: cp.full(shape, np.nan, dtype) for k, shape in outputs.items()})
        return s

    stream = cp.cuda.Stream(non_blocking=False)
    with stream:
        eager, captured = state(), state()
        downsampling_step(eager)
        downsampling_step(captured)  # the first step eagerly, as the engine does: it loads the kernels
        for k in outputs:
            captured[k].fill(np.nan)
        stream.begin_capture()
        try:
            downsampling_step(captured)
        finally:
            graph = stream.end_capture()
        graph.launch(stream=stream)
        stream.synchronize()
    for k in outputs:
        np.testing.assert_array_equal(cp.asnumpy(captured[k]), cp.asnumpy(eager[k]), err_msg=k)
        assert not np.isnan(cp.asnumpy(eager[k])).any(), k
