"""CUDA errors, on a GPU: a CUDA error becomes a RuntimeError naming the op that met it, never a
crash or exit(), and the next op is not blamed for it. The error is provoked in a defined way:
every byte of free device memory is taken with plain allocations, so the op's first scratch
allocation (its stream's workspace, at least 1 MiB: csrc/cuda/workspace.cu) fails with
cudaErrorMemoryAllocation; once the memory is given back, the next op must run and be right.

Each case runs in a child interpreter: holding the whole device must not leak into the other
tests. Without a GPU, the error path is covered where it can be: a CUDA array on a machine with
no usable GPU raises RuntimeError (tests/test_bad_input.py).
"""

import subprocess
import sys
import textwrap

import pytest

from conftest import CUDA_MARKS

pytestmark = CUDA_MARKS

OUT_OF_MEMORY = textwrap.dedent("""
    import cupy, numpy as np
    from pyregnet import ops, reference
    rt = cupy.cuda.runtime
    x = cupy.asarray(np.linspace(-1, 1, 1000, dtype=np.float32))
    ops.relu_forward(x)             # pyregnet's CUDA runtime starts while there is memory for it
    cupy.cuda.Device().synchronize()
    held, size = [], rt.memGetInfo()[0]
    while size >= 1 << 16:          # take the free memory, halving the request when refused
        try:
            held.append(rt.malloc(size))
        except rt.CUDARuntimeError:
            size //= 2
    print("held:", len(held), "allocations; free now:", rt.memGetInfo()[0], "bytes")
    try:
        ops.{op}
    except RuntimeError as e:
        print("RuntimeError:", e)
    else:
        print("no error")
    for p in held:
        rt.free(p)
    y = ops.relu_forward(x)
    cupy.cuda.Device().synchronize()
    print("next op right:", bool((y == cupy.maximum(x, 0)).all()))
    print("same op again right:", np.isclose(ops.{op}, reference.{ref}, rtol=1e-6))
""")


def run_child(script):
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, f"the child crashed (exit {out.returncode})"
    return out.stdout


@pytest.mark.parametrize("op, ref", [("penalty(x, 0.1, 0.2)", "penalty(x.get(), 0.1, 0.2)"),
                                     ("sparsity_count(x, 0.5)", "sparsity_count(x.get(), 0.5)")])
def test_failed_allocation_is_the_ops_error_and_not_the_next_ones(op, ref):
    stdout = run_child(OUT_OF_MEMORY.replace("{op}", op).replace("{ref}", ref))
    name = op.split("(")[0]
    assert f"RuntimeError: pyregnet: CUDA error in {name}: " in stdout
    assert "(cudaErrorMemoryAllocation)" in stdout
    assert "next op right: True" in stdout
    assert "same op again right: True" in stdout
