"""No input to pyregnet.ops kills the interpreter: the CPU conv's scratch memory is bounded
(im2col in tiles), an allocation that fails is a MemoryError (also inside an OpenMP region),
output sizes are checked before anything is allocated, and the tiled conv gives the same bits
whatever the number of threads. The memory cases run in child processes (address-space limits,
peak memory) so that a failure cannot take the test run down with it."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pyregnet import ops


def run_child(code, threads=None, timeout=120):
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, timeout=timeout)
    print(result.stdout, result.stderr)
    return result


def test_conv_scratch_is_bounded():
    # im2col of this input is C*R*S x P*Q = 256 x 469,225 floats, 480 MB per thread if built
    # whole; in tiles the peak grows by little more than x, y and the gradients (about 10 MB).
    result = run_child("""
        import resource, numpy as np
        from pyregnet import ops
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 1, 700, 700)).astype(np.float32)
        w = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
        b = np.zeros(1, np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = ops.conv2d_forward(x, w, b, 0)
        dx, dw, db = ops.conv2d_backward(x, w, y, 0)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        for p, q in ((0, 0), (684, 684), (500, 3), (7, 600)):
            want = float((x[0, 0, p:p + 16, q:q + 16].astype(np.float64) * w[0, 0]).sum())
            assert abs(y[0, 0, p, q] - want) <= 1e-4 * (1 + abs(want)), (p, q, y[0, 0, p, q], want)
        print(f"peak memory grew by {grew:.0f} MiB")
        assert grew < 150, grew
    """)
    assert result.returncode == 0, result.stderr


def test_failed_allocation_inside_the_parallel_region_is_memory_error():
    # K = 2^22 output channels of one pixel: the GEMM grows its per-thread packing buffer for w to
    # 16 MB inside the conv's OpenMP region. x, w, b and y (out=) are allocated first, then the
    # address space is limited to 4 MB more than is mapped, so that growth fails: a MemoryError,
    # and the interpreter goes on (it used to abort in std::terminate).
    result = run_child("""
        import resource, numpy as np
        from pyregnet import ops
        f = np.float32
        ops.conv2d_forward(np.ones((2, 1, 4, 4), f), np.ones((1, 1, 3, 3), f), np.zeros(1, f), 0)  # threads up
        k = 1 << 22
        x, w, b = np.ones((1, 1, 1, 1), f), np.ones((k, 1, 1, 1), f), np.zeros(k, f)
        y = np.full((1, k, 1, 1), -1, f)
        size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 20), resource.RLIM_INFINITY))
        try:
            ops.conv2d_forward(x, w, b, 0, out=y)
        except MemoryError as e:
            print("MemoryError", e)
        else:
            raise SystemExit("no MemoryError")
        y = ops.conv2d_forward(np.ones((1, 1, 3, 3), f), np.ones((1, 1, 3, 3), f), np.zeros(1, f), 0)
        assert y[0, 0, 0, 0] == 9, y
        print("still alive")
    """)
    assert result.returncode == 0 and "still alive" in result.stdout, result.stderr


def test_failed_scratch_allocation_outside_the_region_is_memory_error(tmp_path):
    # The backward pass keeps one dw partial per 4 images, allocated before its region: 1024
    # images of 1024 x 1024 and 16 filters as large need 256 partials of 2^24 floats (16 GiB).
    # x is a sparse file mapped read-only (4 GiB of address space, no memory).
    result = run_child(f"""
        import resource, numpy as np
        from pyregnet import ops
        f = np.float32
        path = {str(tmp_path / "x.bin")!r}
        with open(path, "wb") as fh:
            fh.truncate(1024 * 1024 * 1024 * 4)
        x = np.memmap(path, dtype=f, mode="r", shape=(1024, 1, 1024, 1024))
        w, dy = np.ones((16, 1, 1024, 1024), f), np.ones((1024, 16, 1, 1), f)
        size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
        try:
            ops.conv2d_backward(x, w, dy, 0, input_grad=False)
        except MemoryError as e:
            print("MemoryError", e)
        else:
            raise SystemExit("no MemoryError")
        print("still alive")
    """)
    assert result.returncode == 0 and "still alive" in result.stdout, result.stderr


def test_tiled_conv_is_the_same_bits_for_any_thread_count():
    # Shapes that need every kind of tile (see test_ops.CONV_CASES and test_conv2d_stride.CASES),
    # at stride 1 and 2; both dtypes.
    code = """
        import hashlib, numpy as np
        from pyregnet import ops
        h = hashlib.sha256()
        for case in [(2, 300, 12, 12, 5, 5, 5, 2, 1), (1, 2, 400, 400, 2, 3, 3, 1, 1), (1, 1, 520, 520, 1, 3, 3, 1, 1),
                     (9, 3, 40, 40, 33, 3, 3, 1, 1), (2, 300, 12, 12, 5, 5, 5, 2, 2), (1, 2, 801, 800, 2, 3, 3, 1, 2),
                     (1, 1, 1041, 1040, 1, 3, 3, 1, 2), (9, 3, 41, 40, 33, 3, 3, 1, 2)]:
            N, C, H, W, K, R, S, pad, stride = case
            for dtype in (np.float32, np.float64):
                rng = np.random.default_rng(1)
                x, w = rng.standard_normal((N, C, H, W)).astype(dtype), rng.standard_normal((K, C, R, S)).astype(dtype)
                y = ops.conv2d_forward(x, w, rng.standard_normal(K).astype(dtype), pad, stride=stride, relu=True)
                dy = rng.standard_normal(y.shape).astype(dtype)
                for a in (y, *ops.conv2d_backward(x, w, dy, pad, stride=stride)):
                    h.update(a.tobytes())
        print(h.hexdigest())
    """
    digests = set()
    for threads in (1, 2, 3):
        result = run_child(code, threads=threads)
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.split()[-1])
    assert len(digests) == 1, digests


def test_dense_output_beyond_32_bit_indexing_is_refused_before_allocating():
    f = np.float32
    x, w, b = np.ones((1 << 16, 1), f), np.ones((1 << 16, 1), f), np.zeros(1 << 16, f)
    with pytest.raises(ValueError, match=r"dense_forward: w: expected an output \(N, out\) = \(65536, 65536\) of "
                                         r"fewer than 2\^31 elements"):
        ops.dense_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dense_backward: w: expected an output \(N, out\)"):
        ops.dense_backward(x, w, x)  # refused on x and w alone, before dy (which could not be made) is read


def _sparse(tmp_path, dtype, shape):
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate(int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize)
    try:
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)
    except (OSError, ValueError) as e:
        pytest.skip(f"cannot map a sparse file of {shape}: {e}")


def test_pool_input_beyond_32_bit_indexing_is_refused(tmp_path):
    x = _sparse(tmp_path, np.float32, (1, 1, 1 << 16, (1 << 15) + 2))   # 2^31 + 2^17 elements, no memory
    for op in (ops.maxpool2d_forward, lambda x: ops.maxpool2d_backward(x, x)):
        with pytest.raises(ValueError, match=r"maxpool2d_\w+: x: expected fewer than 2\^31 elements"):
            op(x)


def test_augment_output_beyond_any_memory_is_refused_before_allocating(tmp_path):
    images = _sparse(tmp_path, np.uint8, (1, 1 << 20, 1 << 20, 3))     # 3 TiB of address space, no memory
    index = np.zeros(1 << 20, np.int64)
    with pytest.raises(ValueError, match=r"augment_batch: out: expected a result that fits in memory but its "
                                         r"shape \(1048576, 3, 1048576, 1048576\) of float32 needs more than 2\^63"):
        ops.augment_batch(images, index, seed=0, step=0)
