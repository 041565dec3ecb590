"""Bitwise reproducibility checks shared by the op tests: a digest of result arrays, and the same
digest computed again in fresh processes with other OpenMP thread counts (the CPU backend's
results must not depend on how many threads run it)."""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


def digest(arrays):
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def assert_thread_count_independent(module, dtype, threads=("1", "3")):
    """`module` (a test module next to this file) defines run_all(to_device, to_host, dtype): its
    CPU results in this process must have the same digest as in processes with `threads` threads."""
    here = digest(__import__(module).run_all(np.ascontiguousarray, np.asarray, dtype))
    script = textwrap.dedent(f"""
        import numpy as np
        import bits
        import {module} as t
        print(bits.digest(t.run_all(np.ascontiguousarray, np.asarray, np.{np.dtype(dtype).name})))
    """)
    for n in threads:
        env = dict(os.environ, OMP_NUM_THREADS=n)
        run = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == here, f"{n} thread(s) gave other bits"
