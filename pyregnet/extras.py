"""Optional packages and the extra of pyproject.toml that installs each.

The package's own commands need only its dependencies; these drive the CUDA backend from Python
(CuPy) or serve the benchmarks (PyTorch, their baseline; Numba, the CPU's FMA peak). A missing one
is reported in one line that names the command installing it, never as a traceback.
"""

# import name: (what users call it, the extra that installs it)
EXTRAS = {"cupy": ("CuPy", "cuda"), "torch": ("PyTorch", "bench"), "numba": ("Numba", "bench")}


def missing(module: str) -> str:
    """One line: `module` is not installed, and the install command that adds it."""
    name, extra = EXTRAS[module.split(".")[0]]
    return f"{name} is not installed (pip install -e \".[{extra}]\" from the repository adds it)"
