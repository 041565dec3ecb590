"""build_info() says how pyregnet was built and what it can use, truthfully."""

import os
import platform

import pytest

import pyregnet
from conftest import CUDA_SKIP


def test_build_info_keys_and_types():
    info = pyregnet.build_info()
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_available"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert isinstance(info["flush_denormals"], bool)
    assert info["version"] == pyregnet.__version__
    assert info["cpu_isa"] in ("avx512f", "avx2+fma", "avx", "sse2", "neon", "generic")
    assert info["cpu_vector_bytes"] == {"avx512f": 64, "avx2+fma": 32, "avx": 32}.get(info["cpu_isa"], 16)


def test_cpu_isa_is_this_machines_with_a_native_build():
    # -march=native (PYREGNET_NATIVE, on by default) compiles for the building machine, this one
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get("PYREGNET_NATIVE") == "OFF":
        pytest.skip("not a native x86-64 build")
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(open("/proc/cpuinfo").read().split())
    want = "avx512f" if "avx512f" in flags else "avx2+fma" if {"avx2", "fma"} <= flags else \
        "avx" if "avx" in flags else "sse2"
    assert pyregnet.build_info()["cpu_isa"] == want


def test_cuda_fields_agree():
    info = pyregnet.build_info()
    if info["cuda_compiled"]:
        # Compiled for at least one architecture, listed as CMake names ("90", "90-real", ...).
        assert info["cuda_archs"] and all(isinstance(a, str) and a[:2].isdigit() for a in info["cuda_archs"])
        assert info["cuda_runtime_version"] >= 11000
        assert info["cuda_available"] == (info["cuda_device_count"] > 0)
    else:
        assert info["cuda_archs"] == [] and not info["cuda_available"]


def test_cuda_expected_by_the_build():
    # .ci/run builds with PYREGNET_CUDA=ON: then the backend must be in the module.
    if os.environ.get("PYREGNET_CUDA") == "ON":
        assert pyregnet.build_info()["cuda_compiled"]


def test_flush_denormals_follows_the_build_option():
    # Set at install time (pyproject.toml); x86 is the only CPU with the control, so ON
    # elsewhere builds IEEE.
    option = os.environ.get("PYREGNET_FLUSH_DENORMALS")
    if option in ("ON", "OFF") and platform.machine() in ("x86_64", "AMD64"):
        assert pyregnet.build_info()["flush_denormals"] == (option == "ON")


def test_cpu_backend_works_without_a_gpu():
    import numpy as np
    from pyregnet import ops
    y = ops.relu_forward(np.array([-1.0, 2.0], dtype=np.float32))
    assert y.tolist() == [0.0, 2.0]
    if CUDA_SKIP is None:
        assert pyregnet.build_info()["cuda_available"]
