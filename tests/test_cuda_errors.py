"""A CUDA error becomes a RuntimeError naming the op, never a crash or exit().

Provoking a real CUDA error needs a GPU; the test runs in a child interpreter because the error
(a launch on a stream handle that was destroyed) may leave that process's CUDA context unusable.
Without a GPU, the same path is covered where it can be: a CUDA array on a machine with no
usable GPU raises RuntimeError (tests/test_bad_input.py).
"""

import subprocess
import sys
import textwrap

import pytest

from conftest import CUDA_SKIP

pytestmark = pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))

SCRIPT = textwrap.dedent("""
    import cupy, numpy as np
    from pyregnet import ops
    x = cupy.asarray(np.ones(1000, np.float32))
    cupy.cuda.Device().synchronize()
    handle = cupy.cuda.runtime.streamCreate()
    cupy.cuda.runtime.streamDestroy(handle)
    try:
        with cupy.cuda.ExternalStream(handle):
            ops.{op}
    except RuntimeError as e:
        print("RuntimeError:", e)
    else:
        print("no error")
""")


@pytest.mark.parametrize("op", ["relu_forward(x)", "penalty(x, 0.1, 0.2)", "sparsity_count(x, 0.5)"])
def test_cuda_error_is_a_runtime_error_naming_the_op(op):
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("{op}", op)], capture_output=True,
                         text=True, timeout=120)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, f"the child crashed (exit {out.returncode})"
    name = op.split("(")[0]
    assert f"RuntimeError: pyregnet: CUDA error in {name}" in out.stdout
