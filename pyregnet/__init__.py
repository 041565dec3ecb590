"""pyregnet: what L1, L2 and L1L2 weight regularization buy and cost in CNN training.

Kernels are written from scratch (CPU backend in C++, CUDA backend in CUDA C++) and exposed by
the compiled module ``pyregnet._core``; :mod:`pyregnet.ops` is their functional API and
:mod:`pyregnet.reference` the NumPy float64 oracle they are tested against.
"""

try:
    from ._core import build_info as _build_info
    from ._core import workspace_info as _workspace_info
except ImportError as exc:  # the sources are importable but the extension was never built here
    raise ImportError("pyregnet's compiled module pyregnet._core is missing: install with "
                      "`pip install -e \".[test]\"` from the repository (README.md)") from exc

from . import ops

__all__ = ["build_info", "ops", "workspace_info"]
__version__ = _build_info()["version"]


def build_info() -> dict:
    """How this pyregnet was built and what it can use now.

    Keys: ``version``; ``cuda_compiled`` (the CUDA backend is in the module); ``cuda_available``
    (a usable GPU right now); ``cuda_device_count``; ``cuda_runtime_version`` (e.g. 13000, or
    None); ``cuda_archs`` (CMake architecture list the kernels were compiled for, e.g. ['90']);
    ``flush_denormals``; ``cpu_isa`` and ``cpu_vector_bytes`` (the instruction set and vector
    width the CPU backend was compiled for: same-seed runs give the same bits only on the same
    one); ``openmp`` and ``cpu_threads`` (the CPU backend's threads).
    """
    return _build_info()


def workspace_info(stream=None) -> dict:
    """The CUDA backend's scratch workspace, which a captured CUDA graph takes its scratch memory
    from without allocating (docs/design.md §2, "Scratch memory").

    Keys: ``arenas`` (one per device and stream used so far); ``allocations`` and ``bytes`` (the
    buffers allocated for them, kept until the process ends); ``captured_leases`` (scratch spans
    handed out while a stream was being captured); ``capacity`` (the bytes of the arena of
    ``stream`` on the current device: a CuPy stream or its pointer, None for the legacy default
    stream; 0 when it has none). All zeros in a CPU-only build.
    """
    return _workspace_info(0 if stream is None else int(getattr(stream, "ptr", stream)))
