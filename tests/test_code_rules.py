"""The package's size and boundary rules (docs/design.md §3), checked on its source: no file over
600 lines, no function over 80, and no module that reaches into another's private names; the
benchmarks (bench/*.py) at most 1,800 lines in all and none over 550, so that they stay measurements
over the engine rather than a second copy of it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyregnet"
FILES = sorted(PACKAGE.glob("*.py"))
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
BENCH = sorted((PACKAGE.parent / "bench").glob("*.py"))
MAX_BENCH_LINES, MAX_BENCH_FILE_LINES = 1800, 550
# The compiled extension: private to the package, wrapped by pyregnet.ops (and build_info).
EXTENSION = "_core"


def private(name):
    return name.startswith("_") and not name.startswith("__") and name != EXTENSION


def tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def package_modules(module):
    """{local name: module name} of the package modules that `module` imports."""
    found = {}
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pyregnet")):
            if node.module in (None, "pyregnet"):  # from . import x [as y]
                found.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.Import):
            found.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("pyregnet.")
                          and a.asname})
    return found


def private_uses(module):
    """'line: what' for each private name of another package module that `module` imports or reads."""
    uses = []
    modules = package_modules(module)
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pyregnet")):
            uses += [f"{node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}"
                     for a in node.names if private(a.name)]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
              and private(node.attr)):
            uses.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return uses


def test_the_rules_see_what_they_check():
    """The checks find what they look for, so that an empty result means something."""
    source = ast.parse("from . import sweep\nfrom .train import _lr, Config\nimport pyregnet.data as d\n"
                       "from . import _core\nx = sweep._num(1) + d._CHUNK + sweep.main + _core.f\n")
    assert sorted(private_uses(source)) == ["2: from .train import _lr", "5: d._CHUNK", "5: sweep._num"]
    lines = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert [n.name for n in ast.walk(ast.parse(lines)) if isinstance(n, ast.FunctionDef)
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES] == ["f"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_file_over_the_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.name} has {lines} lines, over {MAX_FILE_LINES}: split it by job"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_function_over_the_limit(path):
    long = [f"{n.name} (line {n.lineno}): {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree(path))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {'; '.join(long)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_private_names_across_modules(path):
    uses = private_uses(tree(path))
    assert not uses, (f"{path.name} uses other modules' private names (make them public where they are "
                      f"shared, or move the code): {'; '.join(uses)}")


def test_benchmarks_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in BENCH}
    assert {"step_time.py", "penalty_cost.py", "epoch_time.py", "common.py"} <= set(sizes)
    over = {name: n for name, n in sizes.items() if n > MAX_BENCH_FILE_LINES}
    assert not over, f"benchmarks over {MAX_BENCH_FILE_LINES} lines: {over}"
    assert sum(sizes.values()) <= MAX_BENCH_LINES, f"bench/*.py: {sum(sizes.values())} lines, over {MAX_BENCH_LINES}"
