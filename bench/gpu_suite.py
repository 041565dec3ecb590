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
