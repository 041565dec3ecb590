"""A pytest plugin for bench/gpu_suite.py (loaded with `-p suite_plugin`, bench/ on PYTHONPATH):
each test's outcome is appended to a JSON-lines file as it finishes, so that a run stopped by a
deadline or killed still leaves its counts, and a later run can take up the tests not yet run.

    --record PATH         append {"collected": n} once, then {"nodeid", "outcome", "reason"} per
                          test (outcome: passed, failed, error or skipped; reason: a skip's)
    --stop-at EPOCH_S     stop after the test that ends past this time.time() (exit code 2,
                          "interrupted"); the remaining tests are not run
    --skip-recorded PATH  deselect the tests that PATH already records (may be repeated; a missing
                          file records nothing)
"""

import json
import time

RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}   # a test's worst phase is its outcome


def pytest_addoption(parser):
    group = parser.getgroup("gpu suite")
    group.addoption("--record", default=None, help="append each test's outcome to this JSON-lines file")
    group.addoption("--stop-at", type=float, default=None, help="stop after the test that ends past this time")
    group.addoption("--skip-recorded", action="append", default=[],
                    help="deselect the tests this JSON-lines file records (may be repeated)")


def read_records(path):
    """(collected counts, {nodeid: record}) of a --record file; a missing file reads as empty."""
    collected, tests = [], {}
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return collected, tests
    for r in lines:
        if "collected" in r:
            collected.append(r["collected"])
        else:
            tests[r["nodeid"]] = r
    return collected, tests


def _append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def pytest_collection_modifyitems(config, items):
    done = set()
    for path in config.getoption("skip_recorded"):
        done.update(read_records(path)[1])
    if done:
        keep = [item for item in items if item.nodeid not in done]
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = keep


def pytest_collection_finish(session):
    path = session.config.getoption("record")
    if path:
        _append(path, {"collected": len(session.items)})


class _Outcomes:
    def __init__(self):
        self.by_test = {}

    def update(self, report):
        if report.passed:
            outcome, reason = ("passed", None) if report.when == "call" else (None, None)
        elif report.skipped:
            longrepr = report.longrepr
            outcome = "skipped"
            reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        else:
            outcome, reason = ("failed" if report.when == "call" else "error"), None
        if outcome is None:
            return
        old = self.by_test.get(report.nodeid)
        if old is None or RANK[outcome] > RANK[old[0]]:
            self.by_test[report.nodeid] = (outcome, reason)


def pytest_runtest_logreport(report):
    _CURRENT.update(report)


def pytest_runtest_logfinish(nodeid, location):
    outcome, reason = _CURRENT.by_test.pop(nodeid, ("error", "no report"))
    if _CONFIG["record"]:
        _append(_CONFIG["record"], {"nodeid": nodeid, "outcome": outcome, "reason": reason})
    if _CONFIG["stop_at"] is not None and time.time() > _CONFIG["stop_at"]:
        _CONFIG["session"].shouldstop = "the suite's deadline was reached"


def pytest_sessionstart(session):
    _CONFIG.update(record=session.config.getoption("record"), stop_at=session.config.getoption("stop_at"),
                   session=session)


# One pytest session per process: its options and the outcomes of the tests under way.
_CURRENT = _Outcomes()
_CONFIG = {"record": None, "stop_at": None, "session": None}
