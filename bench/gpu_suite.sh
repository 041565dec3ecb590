#!/usr/bin/env bash
# The GPU verification of pyregnet, in device-tool calls of at most 10 minutes each (an NVIDIA
# machine with nvcc, CuPy, PyTorch, pytest, scikit-build-core and pybind11, no internet):
#
#   test     build with the CUDA backend required, the whole test suite
#   epoch    epoch_time: epochs vs PyTorch eager and torch.compile, conv vs cuDNN, update vs copy
#            bandwidth, every kernel vs its roofline
#   train    20-epoch CIFAR-10 runs: three seeds, one repeated (identical?), one without graphs
#   harness  the dev/cuda harnesses: every kernel version validated, timed, against its roofline
#   kernels  step_time and penalty_cost
#   sanitize compute-sanitizer memcheck and racecheck over a short training run and the CUDA
#            kernel tests (the kernels' first runs on a GPU deserve it)
#   all      the six in order (when one call may take longer)
# In that order of priority: correctness first, then the issue's targets.
#
# Each stage builds first unless this machine already installed this commit. Results go to
# $OUT (default bench/results/gpu-<date>), at most 8 files per stage (the device tool returns 8).
# Usage, from the repository root (the copy there has no .git, so the commit is passed in):
#   PYREGNET_COMMIT=$(git rev-parse HEAD) bash bench/gpu_suite.sh test|epoch|train|harness|kernels|sanitize|all
# The train stage reads CIFAR-10 from .data/cifar10-jpeg.tar.gz (ignored by git; carry it):
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
# `python3 -P`: the current directory (the source tree, whose pyregnet has no built extension)
# stays off sys.path, so the installed package is the one imported.
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-bench/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$OUT"
export PYREGNET_COMMIT=${PYREGNET_COMMIT:-unknown} PYTHONUNBUFFERED=1
TMP=$(mktemp -d)   # scratch: only $OUT comes back
status=0

build() {
  local marker=/tmp/pyregnet-installed-$PYREGNET_COMMIT
  if [ -f "$marker" ] && [ "$PYREGNET_COMMIT" != unknown ]; then echo "pyregnet $PYREGNET_COMMIT already installed"; return; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # No build isolation (nothing can be downloaded there); CUDA required.
  PYREGNET_CUDA=ON python3 -m pip install -v --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; echo "build failed"; exit 1; }
  grep -E "[1-9][0-9]* bytes spill" "$OUT/build.log" && echo "WARNING: register spills (above)"
  (cd / && python3 -c "import pyregnet, json; print(json.dumps(pyregnet.build_info()))")
  touch "$marker"
}

stage_test() {
  (cd / && python3 -c "import pyregnet, json; print(json.dumps(pyregnet.build_info()))") > "$TMP/build_info.json"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$TMP/gpu.txt" 2>&1
  # The whole suite, from the repository root with plain pytest (the installed package is imported).
  python3 -P -m pytest -q -rs -p no:cacheprovider --rootdir=. -o addopts="" --junitxml="$OUT/junit.xml" tests \
    > "$OUT/pytest.log" 2>&1
  status=$?
  tail -25 "$OUT/pytest.log"
  python3 - "$OUT" "$status" "$TMP" <<'PY'
import json, os, sys, datetime, xml.etree.ElementTree as ET
out, status, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
suite = ET.parse(f"{out}/junit.xml").getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
# Cases skipped for want of a GPU, the CUDA backend or CuPy: 0 when the GPU suite really ran.
gpu_words = ("CUDA", "GPU", "CuPy")
gpu_skipped = sum(1 for case in suite.iter("testcase") if case.find("skipped") is not None
                  and any(w in (case.find("skipped").get("message") or "") for w in gpu_words))
record = {"device": open(f"{tmp}/gpu.txt").read().strip(), "commit": os.environ["PYREGNET_COMMIT"],
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "pytest_exit": status, **counts, "skipped_for_want_of_a_gpu": gpu_skipped,
          "build_info": json.load(open(f"{tmp}/build_info.json"))}
json.dump(record, open(f"{out}/tests_gpu.json", "w"), indent=2)
print(json.dumps(record))
PY
}

stage_harness() {
  # Every version validated against its CPU reference, then timed; 3 logs, concatenated.
  JOBS=8 bash dev/cuda/run_all.sh "$TMP/dev_cuda" > "$OUT/dev_cuda.log" 2>&1 || { echo "dev/cuda: a harness failed"; status=1; }
  cat "$TMP"/dev_cuda/*.log >> "$OUT/dev_cuda.log" 2>/dev/null
  tail -40 "$OUT/dev_cuda.log"
}

stage_epoch() {
  # torch.compile: the usual form first (dynamo splits the step at backward()); max-autotune's
  # tuning of three shapes takes minutes, so the whole run is bounded to stay inside one call.
  timeout 570 python3 bench/epoch_time.py --device cuda --compile-variants step,forward \
    --out "$OUT/epoch_time_cuda.json" > "$OUT/epoch_time.log" 2>&1 \
    || { echo "epoch_time failed (see epoch_time.log)"; status=1; }
  tail -60 "$OUT/epoch_time.log"
}

stage_kernels() {
  # Each benchmark is optional: a failure is recorded in kernels.log, not fatal to the other.
  python3 bench/step_time.py --device cuda --json "$OUT/step_time_cuda.json" > "$OUT/kernels.log" 2>&1 \
    || { echo "step_time failed (see kernels.log)"; status=1; }
  python3 bench/penalty_cost.py --device cuda --json "$OUT/penalty_cost_cuda.json" >> "$OUT/kernels.log" 2>&1 \
    || { echo "penalty_cost failed (see kernels.log)"; status=1; }
  tail -60 "$OUT/kernels.log"
}

stage_train() {
  local data=.data/cifar10-jpeg.tar.gz
  [ -f "$data" ] || { echo "train: $data is missing (carry .data)"; status=1; return; }
  export PYREGNET_DATA=$TMP/cache
  local runs=$TMP/runs
  mkdir -p "$runs"
  for args in "0" "1" "2" "0 again" "0 --no-graph"; do
    set -- $args
    local seed=$1 name="none-seed$1${2:+-${2#--}}"
    local extra=""; [ "${2:-}" = "--no-graph" ] && extra="--no-graph"
    echo "== $name"
    python3 -P -m pyregnet.train --reg none --epochs 20 --seed "$seed" --data "$data" --device cuda $extra \
      --out "$runs/$name" 2>&1 | tail -3 | tee -a "$OUT/train.log"
  done
  python3 - "$runs" "$OUT/train_gpu.json" <<'PY'
import datetime, json, os, sys
runs, out = sys.argv[1:]
timing = {"epoch_time_s", "eval_time_s", "images_per_s"}
def history(name):
    with open(f"{runs}/{name}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]
def strip(h):
    return [{k: v for k, v in m.items() if k not in timing} for m in h]
names = sorted(os.listdir(runs))
record = {"commit": os.environ["PYREGNET_COMMIT"], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "runs": {n: {"final": {k: history(n)[-1][k] for k in ("train_acc", "val_acc", "train_loss", "val_loss")},
                       "epoch_time_s": [m["epoch_time_s"] for m in history(n)],
                       "eval_time_s": [m["eval_time_s"] for m in history(n)]} for n in names}}
record["same_seed_identical"] = strip(history("none-seed0")) == strip(history("none-seed0-again"))
record["graph_equals_eager"] = strip(history("none-seed0")) == strip(history("none-seed0-no-graph"))
json.dump(record, open(out, "w"), indent=2)
print(json.dumps({k: v for k, v in record.items() if k != "runs"}), {n: r["final"]["val_acc"] for n, r in record["runs"].items()})
PY
  tar -czf "$OUT/train_runs.tar.gz" -C "$runs" . 2>/dev/null
}

stage_sanitize() {
  local log="$OUT/sanitize.log"
  : > "$log"
  for tool in memcheck racecheck; do
    echo "== $tool: 1 epoch, synthetic, eager launches, then the graph" | tee -a "$log"
    for graph in --no-graph ""; do
      timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -P -m pyregnet.train --dataset synthetic \
        --train-size 200 --val-size 100 --epochs 2 --device cuda $graph --out "$TMP/san-$tool$graph" >> "$log" 2>&1
      local rc=$?
      echo "$tool ${graph:-graph}: exit $rc" | tee -a "$log"
      [ $rc -eq 0 ] || status=1
    done
  done
  echo "== memcheck over the CUDA kernel tests" | tee -a "$log"
  timeout 280 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -P -m pytest -q -x -p no:cacheprovider \
    --rootdir=. -o addopts="" -k cuda tests/test_ops.py tests/test_graph_ops.py tests/test_augment.py >> "$log" 2>&1
  local rc=$?
  echo "memcheck tests: exit $rc" | tee -a "$log"
  [ $rc -eq 0 ] || status=1
  grep -E "ERROR SUMMARY|Invalid|Race" "$log" | sort | uniq -c | head -20
}

build
case "$STAGE" in
  test) stage_test ;;
  epoch) stage_epoch ;;
  train) stage_train ;;
  harness) stage_harness ;;
  kernels) stage_kernels ;;
  sanitize) stage_sanitize ;;
  all) stage_test; stage_epoch; stage_train; stage_harness; stage_kernels; stage_sanitize ;;
  *) echo "usage: bash bench/gpu_suite.sh test|epoch|train|harness|kernels|sanitize|all"; exit 2 ;;
esac
exit $status
