"""The CUDA backend's scratch workspace (csrc/cuda/scratch.cuh), on a GPU:

- ops take their scratch from one arena per stream, allocated once and reused by every later op;
- an op captured into a CUDA graph never grows the arena: when it would have to, it raises a
  RuntimeError naming the op and saying to run the launches eagerly first; after one eager run
  the same capture allocates nothing and replays to the eager bits;
- threads that run ops on the same stream at once get the results each would get alone.

The whole-step captures (the CNN's and ResNet-20's training and evaluation programs) are in
tests/test_engine.py. Without a GPU only the empty introspection is checked here.
"""

import threading

import numpy as np
import pytest

import pyregnet
from pyregnet import ops

from conftest import CUDA_SKIP


@pytest.mark.skipif(CUDA_SKIP is None, reason="a GPU is usable: the workspace may already be in use")
def test_no_workspace_without_a_gpu():
    assert pyregnet.workspace_info() == dict(arenas=0, allocations=0, bytes=0, captured_leases=0, capacity=0)


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_the_arena_is_allocated_once_and_reused():
    import cupy
    x = cupy.asarray(np.linspace(-1, 1, 1 << 20, dtype=np.float32))
    stream = cupy.cuda.Stream(non_blocking=False)
    with stream:
        first = (ops.penalty(x, 0.1, 0.2), ops.sparsity_count(x, 0.5))  # sizes this stream's arena
        before = pyregnet.workspace_info(stream)
        values = [(ops.penalty(x, 0.1, 0.2), ops.sparsity_count(x, 0.5)) for _ in range(3)]
        after = pyregnet.workspace_info(stream)
    print("before", before, "after", after)
    assert before["capacity"] >= 1 << 20 and after == before
    assert values == [first] * 3


def cross_entropy_step(rows, seed):
    """A launch list as the engine captures: the loss of `rows` two-class rows into device sums.
    Its scratch is a double and an int per row (the per-row loss and outcome)."""
    import cupy
    rng = np.random.default_rng(seed)
    logits = cupy.asarray(rng.standard_normal((rows, 2)).astype(np.float32))
    labels = cupy.asarray(rng.integers(0, 2, rows).astype(np.int32))
    dlogits, sums = cupy.full((rows, 2), np.nan, np.float32), cupy.zeros(3, np.float64)

    def step():
        sums.fill(0)
        ops.softmax_cross_entropy(logits, labels, dlogits=dlogits, into=sums)
    return step, dlogits, sums


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_a_capture_never_grows_the_arena():
    import cupy
    stream = cupy.cuda.Stream(non_blocking=False)
    # More rows than the stream's arena has room for (a stream created earlier with the same
    # handle may have grown it), so that the captured op would have to grow it.
    have = pyregnet.workspace_info(stream)["capacity"]
    rows = have // 12 + 4096
    step, dlogits, sums = cross_entropy_step(rows, seed=6)
    with stream:
        sums.fill(0)  # loads the fill kernel outside the capture
        start = pyregnet.workspace_info(stream)
        stream.begin_capture()
        try:
            with pytest.raises(RuntimeError, match=r"pyregnet: softmax_cross_entropy: needs \d+ bytes of workspace "
                                                   r"while its stream is being captured.* once eagerly"):
                step()
        finally:
            stream.end_capture()
        refused = pyregnet.workspace_info(stream)
        step()  # eagerly: grows the arena once
        stream.synchronize()
        eager = (cupy.asnumpy(dlogits), cupy.asnumpy(sums))
        grown = pyregnet.workspace_info(stream)
        dlogits.fill(np.nan)
        stream.begin_capture()
        try:
            step()
        finally:
            graph = stream.end_capture()
        for _ in range(2):
            graph.launch(stream=stream)
        stream.synchronize()
        replayed = pyregnet.workspace_info(stream)
    print("start", start, "refused", refused, "grown", grown, "replayed", replayed)
    assert (refused["allocations"], refused["capacity"]) == (start["allocations"], have)
    assert grown["allocations"] == start["allocations"] + 1 and grown["capacity"] >= rows * 12
    # The capture took the per-row loss and outcome from the arena and allocated nothing.
    assert replayed["captured_leases"] == grown["captured_leases"] + 2
    assert (replayed["allocations"], replayed["bytes"], replayed["capacity"]) == \
        (grown["allocations"], grown["bytes"], grown["capacity"])
    np.testing.assert_array_equal(cupy.asnumpy(dlogits), eager[0])
    np.testing.assert_array_equal(cupy.asnumpy(sums), eager[1])  # sums.fill(0) is in the graph
    assert not np.isnan(eager[0]).any() and eager[1][0] > 0


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_threads_sharing_a_stream_get_their_own_results():
    # Four threads on the legacy default stream at once (the ops release the GIL), each summing
    # its own array through the workspace: each must see the sums it sees alone.
    import cupy
    arrays = [cupy.asarray(np.random.default_rng(t).standard_normal(300_001).astype(np.float32)) for t in range(4)]
    alone = [(ops.penalty(a, 0.1, 0.2), ops.sparsity_count(a, 0.5)) for a in arrays]
    seen, errors = [[] for _ in arrays], []

    def work(t):
        try:
            for _ in range(50):
                seen[t].append((ops.penalty(arrays[t], 0.1, 0.2), ops.sparsity_count(arrays[t], 0.5)))
        except Exception as e:  # noqa: BLE001 -- reported below, with the thread
            errors.append((t, e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for t in range(4):
        assert seen[t] == [alone[t]] * 50, t
