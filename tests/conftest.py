"""Backends and tolerances shared by the tests.

Every kernel test runs once per backend: "cpu" always, "cuda" when this pyregnet has the CUDA
backend, a GPU is usable and CuPy is installed; otherwise the cuda cases are skipped and the
skip says why.
"""

import numpy as np
import pytest

import pyregnet
from pyregnet.extras import missing


def cuda_skip_reason():
    info = pyregnet.build_info()
    if not info["cuda_compiled"]:
        return "pyregnet was built without the CUDA backend (no CUDA compiler at build time)"
    if not info["cuda_available"]:
        return "no usable CUDA GPU or driver on this machine"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return missing("cupy")
    return None


CUDA_SKIP = cuda_skip_reason()

# A CUDA case: marked `cuda` (the GPU suite runs `pytest -m cuda`), skipped where CUDA is unusable.
CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a case that runs on the CUDA backend (skipped without one)")


class Backend:
    """Moves NumPy test data to the backend's device and results back."""

    def __init__(self, name):
        self.name = name
        if name == "cuda":
            import cupy
            self._cp = cupy

    def to_device(self, a):
        return self._cp.asarray(a) if self.name == "cuda" else np.ascontiguousarray(a)

    def to_host(self, a):
        if self.name == "cuda" and isinstance(a, self._cp.ndarray):
            return self._cp.asnumpy(a)
        return np.asarray(a)

    def __repr__(self):
        return self.name


BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=CUDA_MARKS),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


# Kernel vs float64 reference, per dtype: |got - ref| <= atol + rtol * |ref| with
# atol = scale * max|ref|. The absolute part is relative to the array's magnitude because the
# outputs are long sums of products of N(0, 1) values (up to 14,400 terms here) whose rounding
# error grows with the size of the terms, not of the (possibly cancelled) result; measured
# float32 errors stay below ~5e-7 * max|ref|, float64 below ~1e-15 * max|ref|.
TOLERANCES = {
    np.float32: dict(rtol=1e-5, scale=4e-6),
    np.float64: dict(rtol=1e-12, scale=1e-13),
}


def assert_close(got, ref, dtype, what=""):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    tol = TOLERANCES[dtype]
    magnitude = float(np.max(np.abs(ref), initial=0.0))
    err = float(np.max(np.abs(got - ref), initial=0.0))
    print(f"{what}: max abs error {err:.3e} = {err / max(magnitude, 1e-300):.2e} * max|ref| "
          f"({np.dtype(dtype).name})")
    np.testing.assert_allclose(got, ref, rtol=tol["rtol"], atol=tol["scale"] * magnitude, err_msg=what)
