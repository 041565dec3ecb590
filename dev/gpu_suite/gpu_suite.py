"""The GPU verification of pyregnet, one device-tool call per stage (README, "On a GPU"), each under
one shared deadline, run through bench/gpu_suite.sh. It is a verification runner (the tests, the
dev/cuda harnesses, compute-sanitizer, the benchmarks, real runs), not a benchmark: it lives in dev/
beside the CUDA harnesses it drives, and calls bench/'s benchmarks as programs. A step takes the stage's Suite and returns a
dict for the summary JSON in --out (at most 8 files land there), or raises (Stop: the suite cannot
go on). The steps that run programs take the device (and data) as arguments, so that
tests/test_gpu_suite.py runs them on the CPU. Imports neither pyregnet nor CuPy at module level.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_record import (ROOT, Stop, Suite, common, compare_histories, epoch_seconds, failures, first_contact,  # noqa: E402
                          spills)

STATE = Path(os.environ.get("PYREGNET_SUITE_STATE", "/tmp/pyregnet-gpu-suite"))   # kept while the machine is warm
DATA = ROOT / ".data" / "cifar10-jpeg.tar.gz"
DEADLINE_S = {"first": 420, "second": 420, "third": 570}
SMOKE_TESTS = ("tests/test_backends_agree.py",
               "tests/test_engine.py::test_graph_replay_equals_eager_launches_and_repeats")
EPOCH_CONTENDERS = "pyregnet-graph,pyregnet-eager,torch-eager"
KERNEL_TABLES = {"step_time": ["--repeats", "3"], "penalty_cost": ["--no-epochs", "--sizes", "315722,16M,64M"]}
# What the build without isolation (nothing can be downloaded there) and the steps after it import.
NEEDED_MODULES = ("scikit_build_core", "pybind11", "numpy", "PIL", "matplotlib", "pytest", "cupy")
VERSIONS = ("numpy", "cupy-cuda13x", "torch", "scikit-build-core", "pybind11", "pytest")


# ---------------------------------------------------------------- the machine and the build

def tree_digest(root=ROOT):
    """A digest of what the compiled module is built from (a warm machine reuses its build)."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in files + [root / "CMakeLists.txt", root / "pyproject.toml"]:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def find_tool(name):
    """name on PATH, else in /usr/local/cuda/bin (where the CUDA image may keep it off PATH)."""
    candidate = Path("/usr/local/cuda/bin") / name
    return shutil.which(name) or (str(candidate) if candidate.exists() else None)


def parse_gpus(csv_text):
    """nvidia-smi --query-gpu=name,driver_version,memory.total,mig.mode.current, one dict per GPU."""
    keys = ("name", "driver", "memory", "mig")
    return [dict(zip(keys, (s.strip() for s in line.split(",")))) for line in csv_text.strip().splitlines() if line.strip()]


def machine(suite):
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,mig.mode.current",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    gpus = parse_gpus(smi.stdout)
    info = {"gpus": gpus, "gpu_count": len(gpus), "cpu": common.cpu_description(), "python": sys.version.split()[0],
            "versions": {d: common.version(d) for d in VERSIONS}}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info.update(sms=props["multiProcessorCount"], l2_bytes=props["l2CacheSize"],
                    compute_capability=f"{props['major']}.{props['minor']}")
    except Exception as e:  # noqa: BLE001 -- recorded; the build step decides whether to go on
        info["cupy_error"] = f"{type(e).__name__}: {e}"
    nvcc = find_tool("nvcc")
    info["nvcc"] = nvcc and subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                                           timeout=30).stdout.strip().splitlines()[-1]
    name = gpus[0]["name"] if gpus else "no GPU"
    info["device"] = (f"{name} x{len(gpus)}" + (f", {info['sms']} SMs, {info['l2_bytes'] / 2**20:.0f} MiB L2"
                                                 if "sms" in info else "") +
                      (f", driver {gpus[0]['driver']}, MIG {gpus[0]['mig']}" if gpus else ""))
    return info


def missing_requirements():
    """The modules and tools the build and the tests need that this machine lacks."""
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if find_tool("nvcc") is None:
        missing.append("nvcc")
    if find_tool("cmake") is None and importlib.util.find_spec("cmake") is None:   # scikit-build-core takes either
        missing.append("cmake")
    return missing


def build(suite):
    """The editable install with the CUDA backend required, on all cores (reused: tree_digest)."""
    marker = STATE / f"installed-{tree_digest()}"
    result = {"reused": marker.exists()}
    if not marker.exists():
        missing = missing_requirements()
        if missing:
            raise Stop(f"missing here: {', '.join(missing)} (carry Python packages as wheels, see the device "
                       f"tool's README)")
        nvcc = find_tool("nvcc")
        env = {"PYREGNET_CUDA": "ON", "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count()), "CUDACXX": nvcc,
               "PATH": os.pathsep.join([str(Path(nvcc).parent), os.environ.get("PATH", "")])}
        rc, seconds = suite.run([sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps",
                                 "-e", "."], "build.log", env=env)
        found = spills((suite.out / "build.log").read_text(errors="replace"))
        result.update(build_s=seconds, exit=rc, spills=found)
        if rc != 0:
            raise Stop(f"the build exited {rc} (see build.log)", result)
    out = subprocess.run([sys.executable, "-c", "import json, pyregnet; print(json.dumps(pyregnet.build_info()))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise Stop(f"pyregnet does not import after the build: {out.stderr.strip().splitlines()[-1:]}", result)
    info = result["build_info"] = json.loads(out.stdout)
    if not (info["cuda_compiled"] and info["cuda_available"]):
        raise Stop(f"the CUDA backend is not usable (cuda_compiled {info['cuda_compiled']}, cuda_available "
                   f"{info['cuda_available']})", result)
    STATE.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return result


# ---------------------------------------------------------------- tests and runs

def smoke(suite):
    return suite.pytest(list(SMOKE_TESTS), STATE / "first-smoke.jsonl", "pytest.log", limit_s=60)


def cuda_tests(suite, record, skip=(), reserve_s=0):
    """The CUDA cases (pytest -m cuda) not in `skip`'s records, stopping reserve_s before the deadline."""
    args = ["-m", "cuda", "tests"]
    for path in skip:
        args += ["--skip-recorded", str(path)]
    return suite.pytest(args, record, "pytest.log", reserve_s=reserve_s)


def train_runs(suite, runs, epochs, reg, log_name, data_args=None, reserve_s=0, limit_s=None):
    """{name: metrics history} of python -m pyregnet.train --reg reg for each {name: (seed, extra
    arguments)}, on the carried CIFAR-10 unless data_args says otherwise; each bounded by limit_s and
    reserve_s before the deadline; one that fails raises."""
    if data_args is None:
        if not DATA.exists():
            raise FileNotFoundError(f"{DATA.relative_to(ROOT)} is missing: copy /work/shared/data/cifar10-jpeg.tar.gz "
                                    f"into .data/ and carry .data")
        data_args = ["--data", str(DATA)]
    env = {"PYREGNET_DATA": str(STATE / "data-cache")}   # the decoded images, cached by the first run
    histories = {}
    for name, (seed, extra) in runs.items():
        out = STATE / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "pyregnet.train", "--reg", reg, "--epochs", str(epochs), "--seed", str(seed),
               *data_args, "--out", str(out), *extra]
        rc, seconds = suite.run(cmd, log_name, env=env, reserve_s=reserve_s, limit_s=limit_s)
        if rc != 0:
            raise RuntimeError(f"{name} exited {rc} after {seconds} s (see {log_name})")
        lines = (out / "metrics.jsonl").read_text().splitlines()
        histories[name] = [json.loads(line) for line in lines if line.strip()]
        suite.say(f"   {name}: val_acc {histories[name][-1]['val_acc']:.4f} after {seconds} s")
    return histories


def real_data(suite, epochs=2, device="cuda", data_args=None):
    """epochs of real CIFAR-10 with the captured graph, then --no-graph: the same bits, timing fields
    aside. L1L2, so that the penalty's passes are compared too. (device, data_args: the CPU test's.)"""
    runs = {"graph": (0, ["--device", device]), "eager": (0, ["--device", device, "--no-graph"])}
    histories = train_runs(suite, runs, epochs, "l1l2", f"{suite.stage}.log", data_args, reserve_s=30, limit_s=150)
    same, difference = compare_histories(histories["graph"], histories["eager"])
    return {"identical": same, "first_difference": difference, "runs": histories}


def determinism(suite, epochs=20, seeds=(0, 1, 2), device="cuda", data_args=None):
    """Real runs without a penalty (docs/results.md's CPU baseline) for each seed, then the first
    seed again, which must give the same bits. (device, data_args: the CPU test's.)"""
    runs = {f"seed{seed}": (seed, ["--device", device]) for seed in seeds}
    runs[f"seed{seeds[0]}-again"] = (seeds[0], ["--device", device])
    histories = train_runs(suite, runs, epochs, "none", "train.log", data_args)
    same, difference = compare_histories(histories[f"seed{seeds[0]}"], histories[f"seed{seeds[0]}-again"])
    return {"same_seed_identical": same, "first_difference": difference,
            "final": {n: {k: h[-1][k] for k in ("train_acc", "val_acc", "train_loss", "val_loss", "sparsity")}
                      for n, h in histories.items()},
            "epoch_time_s": {n: [m["epoch_time_s"] for m in h] for n, h in histories.items()}}


# ---------------------------------------------------------------- benchmarks and tools

def _benchmark(suite, name, device, args, log_name):
    """(exit status, JSON) of bench/<name>.py --device device, its JSON in --out."""
    out = suite.out / f"{name}_{device}.json"
    flag = "--out" if name == "epoch_time" else "--json"
    rc, seconds = suite.run([sys.executable, f"bench/{name}.py", "--device", device, flag, str(out), *args],
                            log_name, reserve_s=5)
    if not out.exists():
        raise RuntimeError(f"{name} exited {rc} after {seconds} s without its JSON (see {log_name})")
    return rc, json.loads(out.read_text())


def epoch_time(suite, contenders=EPOCH_CONTENDERS, extra=("--no-compile",), device="cuda"):
    """bench/epoch_time.py at its full sizes, 1 warm-up and 3 timed epochs per contender. (extra:
    more arguments, later ones winning, by default no torch.compile; device: the CPU test's.)"""
    rc, result = _benchmark(suite, "epoch_time", device, ["--contenders", contenders, "--epochs", "3", "--warmup", "1",
                                                          *extra], "epoch_time.log")
    return {"exit": rc, "epoch_s": epoch_seconds(result)}


def kernel_tables(suite, extra=None, device="cuda"):
    """The targets of bench/step_time.py and bench/penalty_cost.py --no-epochs. (extra: {benchmark:
    arguments} replacing KERNEL_TABLES'; device: the CPU test's.)"""
    result = {}
    for name, args in {**KERNEL_TABLES, **(extra or {})}.items():
        rc, out = _benchmark(suite, name, device, args, "kernel_tables.log")
        result[name] = {"exit": rc, "targets": [f"{t['verdict']}: {t['target']}: {t['value']}" for t in out["targets"]]}
    result["exit"] = next((r["exit"] for r in result.values() if r["exit"] != 0), 0)
    return result


def harnesses(suite, names=None, limit_s=None):
    """dev/cuda/run_all.sh for `names` (default: all), its three logs appended to dev_cuda.log."""
    logs = STATE / "dev_cuda"
    shutil.rmtree(logs, ignore_errors=True)
    env = {"JOBS": str(os.cpu_count()), "NVCC": find_tool("nvcc") or "nvcc", "BUILD": str(STATE / "dev_cuda_build"),
           **({"HARNESSES": " ".join(names)} if names else {})}
    rc, seconds = suite.run(["bash", "dev/cuda/run_all.sh", str(logs)], "dev_cuda.log", limit_s=limit_s, env=env)
    with open(suite.out / "dev_cuda.log", "a") as f:
        for part in ("summary.txt", "harnesses.log", "build.log"):
            if (logs / part).exists():
                f.write(f"\n######## {part}\n" + (logs / part).read_text(errors="replace"))
    summary = (logs / "summary.txt").read_text(errors="replace") if (logs / "summary.txt").exists() else ""
    return {"exit": rc, "seconds": seconds, "verdicts": [line for line in summary.splitlines() if ": exit " in line
                                                         or "FAILED" in line]}


def sanitize(suite, limit_s=100, device="cuda"):
    """compute-sanitizer memcheck over a short synthetic run (5 steps: the graph captured at the
    second), eager and then the graph. (device: the CPU test's.)"""
    tool = find_tool("compute-sanitizer")
    if tool is None:
        raise FileNotFoundError("compute-sanitizer is not on PATH or in /usr/local/cuda/bin")
    result = {}
    for name, flag in (("eager", ["--no-graph"]), ("graph", [])):
        out = STATE / "sanitize" / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", "9", sys.executable, "-m", "pyregnet.train",
               "--reg", "l1l2", "--epochs", "1", "--dataset", "synthetic", "--train-size", "320", "--val-size", "100",
               "--device", device, "--out", str(out), *flag]
        rc, seconds = suite.run(cmd, "sanitize.log", limit_s=limit_s)
        result[name] = {"exit": rc, "seconds": seconds}
    result["error_summaries"] = re.findall(r"ERROR SUMMARY: .*", (suite.out / "sanitize.log").read_text(errors="replace"))
    if any(r["exit"] != 0 for r in (result["eager"], result["graph"])):
        raise RuntimeError(f"memcheck: {result} (see sanitize.log)")
    return result


# ---------------------------------------------------------------- the stages

def first(suite):
    for path in STATE.glob("*.jsonl"):      # a new first starts the record of tests afresh
        path.unlink()
    suite.step("machine", lambda: machine(suite))
    suite.step("build", lambda: build(suite))
    suite.step("smoke", lambda: smoke(suite), need_s=30)
    # the CUDA cases but the smoke test's, leaving time for the steps after them (second runs the rest)
    suite.step("cuda_tests", lambda: cuda_tests(suite, STATE / "first-cuda.jsonl", [STATE / "first-smoke.jsonl"],
                                                reserve_s=max(0, min(170, suite.left() - 60))), need_s=30)
    suite.step("real_data", lambda: real_data(suite), need_s=60)
    suite.step("epoch_time", lambda: epoch_time(suite), need_s=40)
    suite.step("harnesses", lambda: harnesses(suite, ["conv2d", "dense"]), need_s=60)


def second(suite):
    suite.step("machine", lambda: machine(suite))
    suite.step("build", lambda: build(suite))
    done = [STATE / "first-smoke.jsonl", STATE / "first-cuda.jsonl"]
    suite.step("cuda_tests", lambda: cuda_tests(suite, STATE / "second-cuda.jsonl", done, reserve_s=300), need_s=30)
    suite.step("harnesses", lambda: harnesses(suite, limit_s=suite.left() - 200), need_s=60)
    suite.step("sanitize", lambda: sanitize(suite, limit_s=min(100, (suite.left() - 60) / 2)), need_s=60)
    suite.step("kernel_tables", lambda: kernel_tables(suite), need_s=45)


def third(suite):
    suite.step("machine", lambda: machine(suite))
    suite.step("build", lambda: build(suite))
    suite.step("determinism", lambda: determinism(suite), need_s=120)
    suite.step("torch_compile", lambda: epoch_time(suite, "pyregnet-graph,torch-compile", ["--compile"]), need_s=120)


STAGES = {"first": first, "second": second, "third": third}


def main(argv=None):
    p = argparse.ArgumentParser(prog="bash bench/gpu_suite.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--out", default=os.environ.get("OUT") or f"bench/results/gpu-{time.strftime('%Y%m%d')}",
                   help="where the results go (default $OUT, else bench/results/gpu-<date>)")
    p.add_argument("--deadline-s", type=float, default=None, help="the stage's shared deadline (default 420/420/570)")
    args = p.parse_args(argv)
    STATE.mkdir(parents=True, exist_ok=True)
    suite = Suite(args.stage, args.out, args.deadline_s or DEADLINE_S[args.stage],
                  first_contact if args.stage == "first" else None)
    STAGES[args.stage](suite)
    why = suite.summary["failures"] = failures(suite.summary)
    suite.save()
    suite.say(f"{args.stage}: {'all steps passed' if not why else 'FAILED: ' + '; '.join(why)} "
              f"({time.monotonic() - suite.t0:.0f} s); results in {suite.out}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
