"""The record of a dev/gpu_suite/gpu_suite.py stage: one shared deadline, a log, and a summary JSON rewritten
after every step (so a deadline or a crash still leaves what was done); the pure helpers that read
the steps' outputs; and the pytest plugin (`-p suite_record`, this folder on PYTHONPATH) that appends each
test's outcome to a JSON-lines file as it finishes (--record), stops at a deadline (--stop-at) and
deselects what an earlier record holds (--skip-recorded). Imports neither pyregnet nor CuPy: it
runs before the build.
"""

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402  -- bench/common.py: imports nothing of pyregnet at module level

SUMMARY = {"first": "gpu-first-contact.json", "second": "gpu-second.json", "third": "gpu-third.json"}
# metrics.jsonl fields that may differ run to run: pyregnet.train.TIMING_KEYS (a test keeps the two equal;
# this module imports nothing of pyregnet, so that it records even a failed build)
TIMING_FIELDS = ("epoch_time_s", "eval_time_s", "images_per_s", "extra_eval_time_s")
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"Compiling entry function '([^']+)'")
RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}   # a test's worst phase is its outcome


class Stop(Exception):
    """The suite cannot go on (no CUDA build): later steps record null and this; `result`: what the
    step had found."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- pure helpers (tested on the CPU)

def spills(build_log):
    """[(kernel, store bytes, load bytes)] for every kernel ptxas -v reports with a spill."""
    found, kernel = [], None
    for line in build_log.splitlines():
        if m := ENTRY.search(line):
            kernel = m.group(1)
        m = SPILL.search(line)
        if m and (int(m.group(1)) or int(m.group(2))):
            found.append((kernel, int(m.group(1)), int(m.group(2))))
    return found


def read_records(path):
    """(collected counts, {nodeid: its worst record}) of a --record file; a missing file reads as empty."""
    collected, tests = [], {}
    if not Path(path).exists():
        return collected, tests
    with open(path) as f:
        for r in (json.loads(line) for line in f if line.strip()):
            if "collected" in r:
                collected.append(r["collected"])
            elif r["nodeid"] not in tests or RANK[r["outcome"]] > RANK[tests[r["nodeid"]]["outcome"]]:
                tests[r["nodeid"]] = r
    return collected, tests


def count_outcomes(record_path):
    """{passed, failed, errors, skipped, not_run (collected, never run), failed_tests, skip_reasons
    (the three commonest, counted)} of a --record file."""
    collected, tests = read_records(record_path)
    outcomes = Counter("errors" if r["outcome"] == "error" else r["outcome"] for r in tests.values())
    reasons = Counter(r["reason"] for r in tests.values() if r["outcome"] == "skipped")
    return {**{k: outcomes[k] for k in ("passed", "failed", "errors", "skipped")},
            "not_run": max(sum(collected) - len(tests), 0) if collected else None,
            "failed_tests": sorted(n for n, r in tests.items() if r["outcome"] in ("failed", "error"))[:20],
            "skip_reasons": dict(reasons.most_common(3))}


def compare_histories(a, b):
    """(identical, the first differing epoch's fields with both values) of two metrics histories,
    timing fields aside."""
    if len(a) != len(b):
        return False, f"{len(a)} epochs against {len(b)}"
    for ma, mb in zip(a, b):
        keys = sorted(k for k in set(ma) | set(mb) if k not in TIMING_FIELDS and ma.get(k) != mb.get(k))
        if keys:
            return False, f"epoch {ma.get('epoch')}: " + ", ".join(f"{k} {ma.get(k)!r} != {mb.get(k)!r}" for k in keys)
    return True, None


def epoch_seconds(epoch_json):
    """{contender (pyregnet_graph, ...): median epoch in s, or None} of bench/epoch_time.py's JSON."""
    contenders = (epoch_json.get("epoch") or {}).get("contenders", {})
    return {name.replace("-", "_"): rec["median_s"]["total_s"] if rec.get("ran") else None
            for name, rec in contenders.items()}


def first_contact(summary):
    """gpu-first-contact.json's headline from its steps' results (cuda_tests: the smoke and CUDA
    steps' counts together); None where a step did not get that far."""
    def result(name):
        return (summary["steps"].get(name) or {}).get("result") or {}

    smoke, tests = result("smoke"), result("cuda_tests")
    cuda_tests = None
    if smoke or tests:
        cuda_tests = {k: smoke.get(k, 0) + tests.get(k, 0) for k in ("passed", "failed", "errors", "skipped")}
        cuda_tests["not_run"] = tests.get("not_run") if tests else None
    smoke_passed = (smoke.get("passed", 0) > 0 and not any(smoke.get(k) for k in ("failed", "errors", "skipped",
                                                                               "not_run"))) if smoke else None
    return {"device": result("machine").get("device"), "build_s": result("build").get("build_s"),
            "smoke_passed": smoke_passed, "cuda_tests": cuda_tests,
            "graph_equals_eager": result("real_data").get("identical"), "epoch_s": result("epoch_time").get("epoch_s")}


def failures(summary):
    """Why a stage's run is not a success: failed steps, failed or skipped tests, spills, different
    bits, non-zero exits, and the steps that did not run."""
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


# ---------------------------------------------------------------- the suite

class Suite:
    """One stage's deadline, log and summary JSON."""

    def __init__(self, stage, out, deadline_s, headline=None):
        self.stage, self.out, self.headline, self.stopped = stage, Path(out), headline, None
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.summary = {"stage": stage, "device": None, "commit": common.git_commit(ROOT),
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "deadline_s": deadline_s, "steps": {}}
        self.save()

    def left(self):
        return self.deadline - time.monotonic()

    def say(self, text):
        line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        with open(self.out / f"{self.stage}.log", "a") as f:
            f.write(line + "\n")

    def save(self):
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        if self.headline:
            self.summary.update(self.headline(self.summary))
        common.write_json(self.out / SUMMARY[self.stage], self.summary, log=False)

    def step(self, name, fn, need_s=10):
        """fn() -> dict under steps[name] with its seconds; null and why when the suite stopped,
        less than need_s is left or fn raises."""
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
        budget = self.left() - reserve_s if limit_s is None else min(limit_s, self.left() - reserve_s)
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
        """pytest with this plugin: stops after the test that ends past min(limit_s from now, the
        deadline - reserve_s); counts from the record (so a killed run still counts what finished)."""
        stop_in = self.left() - reserve_s if limit_s is None else min(limit_s, self.left() - reserve_s)
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "suite_record",
               "-o", "addopts=", "--record", str(record), "--stop-at", f"{time.time() + stop_in:.0f}", *args]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        # the hard limit only for a test that hangs: the plugin stops between tests
        rc, seconds = self.run(cmd, log_name, env=env, reserve_s=max(reserve_s - 60, 0),
                               limit_s=None if limit_s is None else limit_s + 60)
        return {"exit": rc, "seconds": seconds, **count_outcomes(record)}


# ---------------------------------------------------------------- the pytest plugin

_PLUGIN = {"record": None, "stop_at": None, "session": None}   # one pytest session per process


def _append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def pytest_addoption(parser):
    group = parser.getgroup("gpu suite")
    group.addoption("--record", default=None, help="append each test's outcome to this JSON-lines file")
    group.addoption("--stop-at", type=float, default=None, help="stop after the test that ends past this time")
    group.addoption("--skip-recorded", action="append", default=[],
                    help="deselect the tests this JSON-lines file records (may be repeated)")


def pytest_sessionstart(session):
    _PLUGIN.update(record=session.config.getoption("record"), stop_at=session.config.getoption("stop_at"),
                   session=session)


def pytest_collection_modifyitems(config, items):
    done = set().union(*(read_records(path)[1] for path in config.getoption("skip_recorded")))
    if done:
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = [item for item in items if item.nodeid not in done]


def pytest_collection_finish(session):
    if _PLUGIN["record"]:
        _append(_PLUGIN["record"], {"collected": len(session.items)})


def pytest_runtest_logreport(report):
    """Records the phases that decide a test's outcome: the call that passed, a skip, a failure
    (an error outside the call); read_records keeps the worst."""
    if not _PLUGIN["record"] or (report.passed and report.when != "call"):
        return
    if report.skipped:
        r = report.longrepr   # (path, line, reason) for a skip
        outcome, reason = "skipped", str(r[2] if isinstance(r, tuple) and len(r) == 3 else r)
    else:
        outcome, reason = "passed" if report.passed else "failed" if report.when == "call" else "error", None
    _append(_PLUGIN["record"], {"nodeid": report.nodeid, "outcome": outcome, "reason": reason})


def pytest_runtest_logfinish(nodeid, location):
    if _PLUGIN["stop_at"] is not None and time.time() > _PLUGIN["stop_at"]:
        _PLUGIN["session"].shouldstop = "the suite's deadline was reached"
