"""README.md's commands work as written: each block is run by CI (.ci/run) or here, shortened
(one epoch, a few hundred images), and the package imports from any directory."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyregnet
from readme_commands import README, RUNNERS, blocks, commands

ROOT = README.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
TRAIN_SHORT = ["--epochs", "1", "--train-size", "256", "--val-size", "256"]
SWEEP_SHORT = ["--epochs", "1", "--train-size", "128", "--val-size", "128"]
# The arguments appended to each README command here, by its first words, and a file it must write.
SHORTER = {
    "python -m pyregnet.train": (TRAIN_SHORT, "runs/l1-seed0/metrics.jsonl"),
    "python -m pyregnet.sweep grid": (SWEEP_SHORT, "runs/grid/grid.md"),
    "python -m pyregnet.sweep compare": (SWEEP_SHORT, "runs/compare/compare.md"),
    "python -m pyregnet.sweep report": ([], "runs/compare/compare.md"),
    "python -m pyregnet.sweep run": (SWEEP_SHORT, "docs/results/E1/none_s4/metrics.jsonl"),
    "python -m pyregnet.sweep report --root": ([], "docs/results/report.md"),
    "python -m pyregnet.prune": (["--levels", "0.5"], "runs/l1-seed0/prune.json"),
    "python bench/step_time.py": (["--device", "cpu", "--quick", "--batch-size", "8", "--steps", "1", "--repeats", "1",
                                   "--warmup", "0", "--no-ops", "--json", "step.json"], "step.json"),
    "python bench/penalty_cost.py": (["--device", "cpu", "--epoch-images", "64", "--batch-size", "32", "--epochs", "1",
                                      "--warmup-epochs", "0", "--optimizers", "adam", "--sizes", "4096", "--repeats",
                                      "1", "--peers", "", "--json", "penalty.json"], "penalty.json"),
    "make -C dev/cuda": (["BUILD={scratch}/devcuda", "-j2"], "devcuda/adam_update"),
    "python bench/epoch_time.py": (["--device", "cpu", "--quick", "--train-size", "256", "--val-size", "128",
                                    "--epochs", "1", "--warmup", "0", "--out", "epoch.json"], "epoch.json"),
}


def rule(command):
    prefix = max((p for p in SHORTER if command.startswith(p)), key=len, default=None)
    assert prefix, f"README command {command!r} has no shortened form in tests/test_readme.py: add one"
    return SHORTER[prefix]


def argv(command, extra):
    """The command as a process argument list: this interpreter, repository files made absolute
    (the command runs in a scratch directory), then the shortening arguments."""
    words = shlex.split(command)
    assert words[0] in ("python", "make"), command
    if words[0] == "python":
        words[0] = sys.executable
    words = [str(ROOT / w) if not w.startswith("-") and ((ROOT / w).is_file() or (i and words[i - 1] == "-C"))
             else w for i, w in enumerate(words)]
    return words + extra


def test_every_block_says_who_runs_it():
    found = blocks()
    assert found, "README.md has no code blocks"
    for runner, lang, body in found:
        if lang in ("sh", "python"):
            assert runner in RUNNERS, f"README block without a <!-- run: ci|test --> marker: {body}"
    assert [c.split()[:3] for c in commands("ci")] == [
        ["pip", "install", "-e"], ["python", "-m", "pyregnet.train"], ["python", "-m", "pytest"]]


def test_markers_are_read_as_written():
    text = "<!-- run: ci -->\n```sh\npip install x\n# a comment\n\npytest\n```\n```sh\nls\n```\n"
    assert commands("ci", text) == ["pip install x", "pytest"]
    assert blocks(text)[1][0] is None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One directory for all the commands (the sweep's report reads what compare wrote), with
    its own decoded-data cache."""
    d = tmp_path_factory.mktemp("readme")
    return d, {**os.environ, "PYREGNET_DATA": str(d / "cache"), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("command", commands("test"))
def test_command_runs(command, scratch):
    cwd, env = scratch
    if str(DATA.relative_to(ROOT.parent).as_posix()) in command and not DATA.is_file():
        if os.environ.get("PYREGNET_REQUIRE_SHARED_DATA"):
            pytest.fail(f"{DATA} is missing, and PYREGNET_REQUIRE_SHARED_DATA is set")
        pytest.skip(f"{DATA} is not on this machine")
    if command.startswith("make") and not shutil.which("nvcc"):
        pytest.skip("no nvcc on this machine to build dev/cuda with")
    extra, writes = rule(command)
    extra = [e.format(scratch=cwd) for e in extra]  # make -C reads paths relative to its own directory
    proc = subprocess.run(argv(command, extra), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])
    assert (cwd / writes).is_file(), (command, writes, proc.stdout[-2000:])


def test_python_blocks_run():
    for runner, lang, body in blocks():
        if lang == "python" and runner == "test":
            exec(compile("\n".join(body), "README.md", "exec"), {})


def test_runs_from_any_directory(tmp_path):
    """The editable install imports this checkout's pyregnet, compiled module included, from
    outside the repository and from its root, with `python -m pytest` and plain `pytest`."""
    here = str(Path(pyregnet.__file__).resolve().parent)
    probe = "import pyregnet, pathlib; pyregnet.build_info(); print(pathlib.Path(pyregnet.__file__).resolve().parent)"
    for cwd in (tmp_path, ROOT):
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == here, (cwd, out.stderr[-2000:])
    out = subprocess.run([sys.executable, "-m", "pyregnet.sweep", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "grid" in out.stdout, out.stderr[-2000:]
    pytest_exe = Path(sys.executable).with_name("pytest")
    for cmd in ([sys.executable, "-m", "pytest"], [str(pytest_exe)]):
        out = subprocess.run(cmd + ["-q", "-p", "no:cacheprovider", "tests/test_model.py"], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0 and " passed" in out.stdout, (cmd, out.stdout[-2000:], out.stderr[-2000:])


def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from pyregnet.extras import EXTRAS, missing
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (name, extra) in EXTRAS.items():
        dists = " ".join(optional[extra])
        assert module in dists, (module, extra, dists)
        assert missing(module).startswith(f"{name} is not installed") and f'".[{extra}]"' in missing(module)
