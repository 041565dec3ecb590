"""The GPU verification of pyregnet in three device-tool calls, each under one shared deadline, run
through bench/gpu_suite.sh (which first checks, in one line, that there is a GPU at all). The
stages (README, "On a GPU"): first (420 s: the machine, the build, the smoke and CUDA tests, real
CIFAR-10 graph == eager, the epoch time); second (420 s, warm: the remaining CUDA tests, every
dev/cuda harness, memcheck, bench/step_time.py and penalty_cost.py --no-epochs); third (570 s:
20-epoch determinism runs, torch.compile). Each step appends its result to the stage's summary
JSON in --out as it finishes; a step that cannot run records null and why. At most 8 files land
in --out. Imports neither pyregnet nor CuPy at module level (the build step installs them).
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_steps as steps  # noqa: E402
from suite_record import Suite, failures, first_contact  # noqa: E402

DEADLINE_S = {"first": 420, "second": 420, "third": 570}


def first(suite):
    for path in steps.STATE.glob("*.jsonl"):      # a new first starts the record of tests afresh
        path.unlink()
    suite.step("machine", lambda: steps.machine(suite))
    suite.step("build", lambda: steps.build(suite))
    suite.step("smoke", lambda: steps.smoke(suite), need_s=30)
    suite.step("cuda_tests", lambda: steps.first_cuda_tests(suite), need_s=30)
    suite.step("real_data", lambda: steps.real_data(suite), need_s=60)
    suite.step("epoch_time", lambda: steps.epoch_time(suite), need_s=40)
    suite.step("harnesses", lambda: steps.harnesses(suite, ["conv2d", "dense"]), need_s=60)


def second(suite):
    suite.step("machine", lambda: steps.machine(suite))
    suite.step("build", lambda: steps.build(suite))
    done = [steps.STATE / "first-smoke.jsonl", steps.STATE / "first-cuda.jsonl"]
    suite.step("cuda_tests", lambda: steps.cuda_tests(suite, steps.STATE / "second-cuda.jsonl", done, reserve_s=300),
               need_s=30)
    suite.step("harnesses", lambda: steps.harnesses(suite, limit_s=suite.left() - 200), need_s=60)
    suite.step("sanitize", lambda: steps.sanitize(suite, limit_s=min(100, (suite.left() - 60) / 2)), need_s=60)
    suite.step("kernel_tables", lambda: steps.kernel_tables(suite), need_s=45)


def third(suite):
    suite.step("machine", lambda: steps.machine(suite))
    suite.step("build", lambda: steps.build(suite))
    suite.step("determinism", lambda: steps.determinism(suite), need_s=120)
    suite.step("torch_compile", lambda: steps.epoch_time(suite, "pyregnet-graph,torch-compile", ["--compile"]),
               need_s=120)


STAGES = {"first": first, "second": second, "third": third}


def main(argv=None):
    p = argparse.ArgumentParser(prog="bash bench/gpu_suite.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--out", default=os.environ.get("OUT") or f"bench/results/gpu-{time.strftime('%Y%m%d')}",
                   help="where the results go (default $OUT, else bench/results/gpu-<date>)")
    p.add_argument("--deadline-s", type=float, default=None, help="the stage's shared deadline (default 420/420/570)")
    args = p.parse_args(argv)
    steps.STATE.mkdir(parents=True, exist_ok=True)
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
