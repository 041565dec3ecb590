"""The record of a bench/gpu_suite.py stage: one shared deadline, a log, and a summary JSON
rewritten after every step (so a deadline or a crash still leaves what was done); what each step
found or why it did not run; and the pure helpers that read the steps' outputs (test counts,
spills, metric histories, epoch times) and make gpu-first-contact.json's headline. Tested on the
CPU (tests/test_gpu_suite.py). Imports neither pyregnet nor CuPy: it runs before the build.
"""

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  -- imports nothing of pyregnet at module level
from suite_plugin import read_records  # noqa: E402

SUMMARY = {"first": "gpu-first-contact.json", "second": "gpu-second.json", "third": "gpu-third.json"}
# metrics.jsonl fields that may differ run to run: pyregnet.train.TIMING_KEYS (a test keeps the two equal;
# this module imports nothing of pyregnet, so that it records even a failed build)
TIMING_FIELDS = ("epoch_time_s", "eval_time_s", "images_per_s", "extra_eval_time_s")
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"Compiling entry function '([^']+)'")


class Stop(Exception):
    """A step found the suite cannot go on (no CUDA build): the later steps record null with this
    reason; `result` is what the step had found by then."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- pure helpers (tested on the CPU)

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


def count_outcomes(record_path):
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
        common.write_json(self.summary_path, self.summary, log=False)

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
        return {"exit": rc, "seconds": seconds, **count_outcomes(record)}


def failures(summary):
    """Why a stage's run is not a success: failed steps, failed or skipped tests, spills, runs that
    should have given the same bits and did not, programs that exited non-zero, and which steps did
    not run (their reasons are in the summary)."""
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
        if r.get("spills"):    # CI refuses them too
            why.append(f"{name}: register spills in {', '.join(k for k, _, _ in r['spills'])}")
        if r.get("identical") is False or r.get("same_seed_identical") is False:
            why.append(f"{name}: not the same bits: {r.get('first_difference')}")
        if "passed" not in r and r.get("exit") not in (None, 0):   # pytest's exit is in its counts
            why.append(f"{name}: exit {r['exit']}")
    return why
