"""The GPU verification of pyregnet in three device-tool calls, each under one shared deadline.
Run through bench/gpu_suite.sh (which first checks, in one line, that there is a GPU at all):

    first   (420 s) the machine; the build (CUDA required, all cores, spill check); the smoke test
            (CUDA vs CPU forward and backward of the CNN at batch 64, graph replay vs eager
            launches); the CUDA test cases; real CIFAR-10, 2 epochs with the graph then
            --no-graph, bit for bit; the epoch time of pyregnet graph, pyregnet eager and PyTorch
            eager; the conv and dense dev/cuda harnesses if time remains
    second  (420 s, on the warm machine right after first) the CUDA cases first did not reach;
            every dev/cuda harness; compute-sanitizer memcheck on a short synthetic run, eager
            and graph; conv vs cuDNN (TF32 off), the update vs the copy bandwidth, the kernels
            vs their roofline (bench/epoch_time.py's sections 2-4)
    third   (570 s, a later lease) torch.compile beside pyregnet graph; 20-epoch real runs for
            seeds 0, 1, 2 and seed 0 again (determinism)

Each step appends its result to <stage summary>.json in --out as it finishes (a deadline or a
crash still leaves what was done); a step that cannot run records null and why. At most 8 files
land in --out: the summary, <stage>.log and the steps' own logs and JSON.
Without the editable install (done by the build step) this module imports neither pyregnet nor
CuPy at module level.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  -- git_commit; imports nothing of pyregnet at module level
from suite_plugin import read_records  # noqa: E402

DEADLINE_S = {"first": 420, "second": 420, "third": 570}
SUMMARY = {"first": "gpu-first-contact.json", "second": "gpu-second.json", "third": "gpu-third.json"}
STATE = Path(os.environ.get("PYREGNET_SUITE_STATE", "/tmp/pyregnet-gpu-suite"))   # kept while the machine is warm
TIMING_FIELDS = ("epoch_time_s", "eval_time_s", "images_per_s")   # metrics.jsonl fields that may differ run to run
DATA = ROOT / ".data" / "cifar10-jpeg.tar.gz"
SMOKE_TESTS = ("tests/test_backends_agree.py",
               "tests/test_engine.py::test_graph_replay_equals_eager_launches_and_repeats")
EPOCH_CONTENDERS = "pyregnet-graph,pyregnet-eager,torch-eager"
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"Compiling entry function '([^']+)'")


class Stop(Exception):
    """A step found the suite cannot go on (no CUDA build): the later steps record null with this
    reason; `result` is what the step had found by then."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- pure helpers (tested on the CPU)

def write_json(path, payload):
    """Indented JSON, atomically (a temporary file renamed into place). pyregnet.files is not
    importable before the build step, so this does not use it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def spills(build_log):
    """[(kernel, store bytes, load bytes)] for every kernel ptxas -v reports with a spill."""
    found, kernel = [], None
    for line in build_log.splitlines():
        m = ENTRY.search(line)
        if m:
            kernel = m.group(1)
        m = SPILL.search(line)
        if m and (int(m.group(1)) or int(m.group(2))):
            found.append((kernel, int(m.group(1)), int(m.group(2))))
    return found


def test_counts(record_path):
    """{passed, failed, errors, skipped, not_run, skip_reasons} from a suite_plugin --record file
    (not_run: collected but stopped before; skip_reasons: the three commonest with their counts)."""
    collected, tests = read_records(record_path)
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped")}
    reasons = {}
    for r in tests.values():
        counts["errors" if r["outcome"] == "error" else r["outcome"]] += 1
        if r["outcome"] == "skipped":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    counts["not_run"] = max(sum(collected) - len(tests), 0) if collected else None
    counts["failed_tests"] = sorted(n for n, r in tests.items() if r["outcome"] in ("failed", "error"))[:20]
    counts["skip_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return counts


def read_metrics(run_dir):
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def without_timing(history):
    return [{k: v for k, v in m.items() if k not in TIMING_FIELDS} for m in history]


def compare_histories(a, b):
    """(identical, first difference) of two metrics histories, timing fields aside; the
    difference names the epoch and the fields, with both values."""
    a, b = without_timing(a), without_timing(b)
    if len(a) != len(b):
        return False, f"{len(a)} epochs against {len(b)}"
    for ma, mb in zip(a, b):
        keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        if keys:
            return False, f"epoch {ma.get('epoch')}: " + ", ".join(f"{k} {ma.get(k)!r} != {mb.get(k)!r}" for k in keys)
    return True, None


def epoch_seconds(epoch_json):
    """{contender: its median epoch (train + evaluation, s), None where it did not run} from
    bench/epoch_time.py's JSON, names with underscores (pyregnet_graph, torch_eager, ...)."""
    contenders = (epoch_json.get("epoch") or {}).get("contenders", {})
    return {name.replace("-", "_"): rec["median_s"]["total_s"] if rec.get("ran") else None
            for name, rec in contenders.items()}


def step_result(summary, name):
    return (summary["steps"].get(name) or {}).get("result") or {}


def first_contact(summary):
    """The headline of gpu-first-contact.json from its steps' results: device, build_s,
    smoke_passed, cuda_tests (the smoke and CUDA steps' counts together), graph_equals_eager and
    epoch_s; None where the step did not run or did not get that far."""
    smoke, tests = step_result(summary, "smoke"), step_result(summary, "cuda_tests")
    cuda_tests = None
    if smoke or tests:
        cuda_tests = {k: smoke.get(k, 0) + tests.get(k, 0) for k in ("passed", "failed", "errors", "skipped")}
        cuda_tests["not_run"] = tests.get("not_run") if tests else None
    smoke_passed = (smoke.get("passed", 0) > 0 and not any(smoke.get(k) for k in ("failed", "errors", "skipped",
                                                                               "not_run"))) if smoke else None
    return {"device": step_result(summary, "machine").get("device"),
            "build_s": step_result(summary, "build").get("build_s"),
            "smoke_passed": smoke_passed, "cuda_tests": cuda_tests,
            "graph_equals_eager": step_result(summary, "real_data").get("identical"),
            "epoch_s": step_result(summary, "epoch_time").get("epoch_s")}


def tree_digest(root=ROOT):
    """A digest of what the compiled module is built from: a warm machine reuses its build only
    while these files are unchanged."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in files + [root / "CMakeLists.txt", root / "pyproject.toml"]:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the suite

class Suite:
    """One stage's deadline, log and summary JSON."""

    def __init__(self, stage, out, deadline_s, headline=None):
        self.stage, self.out = stage, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.log_path = self.out / f"{stage}.log"
        self.summary_path = self.out / SUMMARY[stage]
        self.summary = {"stage": stage, "device": None, "commit": common.git_commit(ROOT),
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "deadline_s": deadline_s, "steps": {}}
        self.stopped = None
        self.headline = headline
        self.save()

    def left(self):
        return self.deadline - time.monotonic()

    def say(self, text):
        line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save(self):
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        if self.headline:
            self.summary.update(self.headline(self.summary))
        write_json(self.summary_path, self.summary)

    def step(self, name, fn, need_s=10):
        """Runs fn() -> dict, recorded under steps[name] with its seconds; records null and why
        when the suite stopped, too little time is left (need_s) or fn raises."""
        why = (f"not run: {self.stopped}" if self.stopped else
               f"not run: {self.left():.0f} s left of the deadline, {need_s} s needed" if self.left() < need_s else None)
        if why:
            self.say(f"== {name}: {why}")
            self.summary["steps"][name] = {"result": None, "why": why}
            self.save()
            return None
        self.say(f"== {name} ({self.left():.0f} s left)")
        t = time.monotonic()
        try:
            result, why = fn(), None
        except Stop as e:
            result, why, self.stopped = e.result, str(e), f"{name} failed ({e})"
        except Exception as e:  # noqa: BLE001 -- a helper's bug must not cost the other steps
            result, why = None, f"{type(e).__name__}: {e}"
        self.summary["steps"][name] = {"result": result, "why": why, "seconds": round(time.monotonic() - t, 1)}
        self.save()
        self.say(f"   {name}: " + (json.dumps(result, default=str)[:600] if why is None else f"FAILED: {why}"))
        return result

    def run(self, cmd, log_name, limit_s=None, env=None, reserve_s=0):
        """Runs cmd (from the repository root), its output appended to log_name in --out, killed
        at min(limit_s, the deadline - reserve_s). Returns (exit status or 'timeout', seconds)."""
        budget = self.left() - reserve_s
        if limit_s is not None:
            budget = min(budget, limit_s)
        budget = max(budget, 1)
        t = time.monotonic()
        with open(self.out / log_name, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}  (limit {budget:.0f} s)\n")
            f.flush()
            # its own process group, so that a timeout also ends what it started (a harness, a
            # test's child interpreter), which would otherwise hold the GPU into the next step
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, preexec_fn=os.setpgrp)
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
            f.write(f"exit {rc} after {time.monotonic() - t:.1f} s\n")
        return rc, round(time.monotonic() - t, 1)

    def pytest(self, args, record, log_name, reserve_s=0, limit_s=None):
        """pytest with suite_plugin: stops after the test that ends past min(limit_s from now, the
        deadline - reserve_s); counts from the record (so a killed run still counts what finished)."""
        stop_in = self.left() - reserve_s if limit_s is None else min(limit_s, self.left() - reserve_s)
        stop_at = time.time() + stop_in
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "suite_plugin",
               "-o", "addopts=", "--record", str(record), "--stop-at", f"{stop_at:.0f}", *args]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        # the hard limit only for a test that hangs: the plugin stops between tests
        rc, seconds = self.run(cmd, log_name, env=env, reserve_s=max(reserve_s - 60, 0),
                               limit_s=None if limit_s is None else limit_s + 60)
        return {"exit": rc, "seconds": seconds, **test_counts(record)}


# ---------------------------------------------------------------- steps

def find_tool(name):
    """name on PATH, else in /usr/local/cuda/bin (where the CUDA image may keep it off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin") / name
    return str(candidate) if candidate.exists() else None


def parse_gpus(csv_text):
    """nvidia-smi --query-gpu=name,driver_version,memory.total,mig.mode.current, one dict per GPU."""
    keys = ("name", "driver", "memory", "mig")
    return [dict(zip(keys, (s.strip() for s in line.split(",")))) for line in csv_text.strip().splitlines() if line.strip()]


def machine(suite):
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,mig.mode.current",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    gpus = parse_gpus(smi.stdout)
    info = {"gpus": gpus, "gpu_count": len(gpus), "cpu": common.cpu_description(),
            "python": sys.version.split()[0],
            "versions": {d: common._version(d) for d in ("numpy", "cupy-cuda13x", "torch", "scikit-build-core",
                                                          "pybind11", "pytest")}}
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


def build_info():
    out = subprocess.run([sys.executable, "-c", "import json, pyregnet; print(json.dumps(pyregnet.build_info()))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise Stop(f"pyregnet does not import after the build: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


# What the build without isolation (nothing can be downloaded there) and the steps after it import.
NEEDED_MODULES = ("scikit_build_core", "pybind11", "numpy", "PIL", "matplotlib", "pytest", "cupy")


def missing_requirements():
    """The modules and tools the build and the tests need that this machine lacks."""
    import importlib.util
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if find_tool("nvcc") is None:
        missing.append("nvcc")
    if find_tool("cmake") is None and importlib.util.find_spec("cmake") is None:   # scikit-build-core takes either
        missing.append("cmake")
    return missing


def build(suite):
    """The editable install with the CUDA backend required, on all cores; reused on a warm machine
    while csrc/, CMakeLists.txt and pyproject.toml are unchanged."""
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
    info = build_info()
    result["build_info"] = info
    if not (info["cuda_compiled"] and info["cuda_available"]):
        raise Stop(f"the CUDA backend is not usable (cuda_compiled {info['cuda_compiled']}, cuda_available "
                   f"{info['cuda_available']})", result)
    STATE.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return result


def smoke(suite):
    return suite.pytest(list(SMOKE_TESTS), STATE / "first-smoke.jsonl", "pytest.log", limit_s=60)


def cuda_tests(suite, record, skip=(), reserve_s=0):
    """The CUDA cases (pytest -m cuda) not in `skip`'s records, stopping reserve_s before the deadline."""
    args = ["-m", "cuda", "tests"]
    for path in skip:
        args += ["--skip-recorded", str(path)]
    return suite.pytest(args, record, "pytest.log", reserve_s=reserve_s)


def first_cuda_tests(suite):
    """The CUDA cases but the smoke test's, leaving time for the real-data and epoch steps
    (second runs the rest)."""
    return cuda_tests(suite, STATE / "first-cuda.jsonl", [STATE / "first-smoke.jsonl"],
                      reserve_s=max(0, min(170, suite.left() - 60)))


def train_runs(suite, runs, epochs, reg, log_name, data_args=None, reserve_s=0, limit_s=None):
    """python -m pyregnet.train --reg reg for each {name: (seed, extra arguments)}, on the carried
    real CIFAR-10 unless data_args names other data; returns {name: metrics history}.
    Each run ends after limit_s or reserve_s before the deadline at the latest; one that fails raises."""
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
        histories[name] = read_metrics(out)
        suite.say(f"   {name}: val_acc {histories[name][-1]['val_acc']:.4f} after {seconds} s")
    return histories


def real_data(suite, epochs=2, device="cuda", data_args=None):
    """epochs of real CIFAR-10 with the captured graph, then --no-graph: the metrics must be the
    same bits, timing fields aside. L1L2, so that the penalty's passes are compared too. (device
    and data_args: the CPU test's.)"""
    runs = {"graph": (0, ["--device", device]), "eager": (0, ["--device", device, "--no-graph"])}
    histories = train_runs(suite, runs, epochs, "l1l2", f"{suite.stage}.log", data_args, reserve_s=30, limit_s=150)
    same, difference = compare_histories(histories["graph"], histories["eager"])
    return {"identical": same, "first_difference": difference, "runs": histories}


def determinism(suite, epochs=20, seeds=(0, 1, 2), device="cuda", data_args=None):
    """epochs-long real runs without a penalty (the CPU baseline of docs/results.md) for each
    seed, then the first seed again: the repeat must give the same bits. (device and data_args:
    the CPU test's.)"""
    runs = {f"seed{seed}": (seed, ["--device", device]) for seed in seeds}
    runs[f"seed{seeds[0]}-again"] = (seeds[0], ["--device", device])
    histories = train_runs(suite, runs, epochs, "none", "train.log", data_args)
    same, difference = compare_histories(histories[f"seed{seeds[0]}"], histories[f"seed{seeds[0]}-again"])
    return {"same_seed_identical": same, "first_difference": difference,
            "final": {n: {k: h[-1][k] for k in ("train_acc", "val_acc", "train_loss", "val_loss", "sparsity")}
                      for n, h in histories.items()},
            "epoch_time_s": {n: [m["epoch_time_s"] for m in h] for n, h in histories.items()}}


def epoch_time(suite, contenders=EPOCH_CONTENDERS, extra=("--no-compile",), device="cuda"):
    """bench/epoch_time.py's epoch section: 50,000 training images, batch 64, augmentation on, plus
    10,000 evaluated; 1 warm-up and 3 timed epochs per contender, bounded by the deadline.
    (extra: more epoch_time arguments, later ones winning, by default no torch.compile; device:
    the CPU test's.)"""
    out = suite.out / f"epoch_time_{device}.json"
    cmd = [sys.executable, "bench/epoch_time.py", "--device", device, "--contenders", contenders, "--epochs", "3",
           "--warmup", "1", "--no-conv", "--no-update", "--no-kernels", "--out", str(out), *extra]
    rc, seconds = suite.run(cmd, "epoch_time.log", reserve_s=5)
    if not out.exists():
        raise RuntimeError(f"epoch_time exited {rc} after {seconds} s without its JSON (see epoch_time.log)")
    return {"exit": rc, "epoch_s": epoch_seconds(json.loads(out.read_text()))}


def kernel_tables(suite, extra=(), device="cuda"):
    """bench/epoch_time.py's sections 2-4: conv vs cuDNN (TF32 off), the update vs the copy
    bandwidth, every kernel of a step vs its roofline."""
    out = suite.out / f"epoch_time_{device}.json"
    rc, seconds = suite.run([sys.executable, "bench/epoch_time.py", "--device", device, "--no-epochs", "--out",
                             str(out), *extra], "epoch_time.log", reserve_s=5)
    if not out.exists():
        raise RuntimeError(f"epoch_time exited {rc} after {seconds} s without its JSON (see epoch_time.log)")
    payload = json.loads(out.read_text())
    return {"exit": rc, "targets": [f"{t['verdict']}: {t['target']}: {t['value']}" for t in payload["targets"]],
            "errors": payload["errors"]}


def harnesses(suite, names=None, limit_s=None):
    """dev/cuda/run_all.sh for `names` (default: all): each kernel version validated, then timed;
    its three logs appended to dev_cuda.log."""
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
    """compute-sanitizer memcheck over a short synthetic run (5 steps: the graph is captured at the
    second and replayed), eager launches and then the graph. (device: the CPU test's.)"""
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
    text = (suite.out / "sanitize.log").read_text(errors="replace")
    result["error_summaries"] = re.findall(r"ERROR SUMMARY: .*", text)
    if any(r["exit"] != 0 for r in (result["eager"], result["graph"])):
        raise RuntimeError(f"memcheck: {result} (see sanitize.log)")
    return result


# ---------------------------------------------------------------- stages

def first(suite):
    for path in STATE.glob("*.jsonl"):      # a new first starts the record of tests afresh
        path.unlink()
    suite.step("machine", lambda: machine(suite))
    suite.step("build", lambda: build(suite))
    suite.step("smoke", lambda: smoke(suite), need_s=30)
    suite.step("cuda_tests", lambda: first_cuda_tests(suite), need_s=30)
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
    suite.step("torch_compile", lambda: epoch_time(suite, "pyregnet-graph,torch-compile",
                                                   ["--compile", "--compile-variants", "step,forward"]), need_s=120)


STAGES = {"first": first, "second": second, "third": third}


def failures(summary):
    """Why a stage's run is not a success: failed steps, failed tests, graph != eager, and how many
    steps did not run (their reasons are in the summary)."""
    steps = summary["steps"]
    why = [f"{name}: {s['why']}" for name, s in steps.items() if s.get("why") and not s["why"].startswith("not run")]
    skipped = [name for name, s in steps.items() if (s.get("why") or "").startswith("not run")]
    if skipped:
        why.append(f"not run: {', '.join(skipped)}")
    for name, s in steps.items():
        r = s.get("result") or {}
        if r.get("failed") or r.get("errors"):
            why.append(f"{name}: {r.get('failed', 0)} failed, {r.get('errors', 0)} errors")
        if r.get("skipped"):   # a CUDA case skipped on the GPU machine: CuPy or the backend is missing
            why.append(f"{name}: {r['skipped']} skipped ({'; '.join(r.get('skip_reasons', {}))})")
    if summary.get("graph_equals_eager") is False:
        why.append("graph replay and eager launches gave different metrics")
    return why


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
    why = failures(suite.summary)
    suite.summary["failures"] = why
    suite.save()
    suite.say(f"{args.stage}: {'all steps passed' if not why else 'FAILED: ' + '; '.join(why)} "
              f"({time.monotonic() - suite.t0:.0f} s); results in {suite.out}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
