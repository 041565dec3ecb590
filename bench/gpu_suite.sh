#!/usr/bin/env bash
# The GPU verification of pyregnet, in one call of the device tool (an NVIDIA machine with nvcc,
# CuPy, PyTorch, pytest, scikit-build-core and pybind11 installed, no internet):
#   build with the CUDA backend required, run the whole test suite, run the benchmarks, and
#   leave everything under $OUT (default bench/results/gpu-<date>) for copying into bench/results/.
# Usage (from the repository root, the commit passed in because the copy has no .git):
#   PYREGNET_COMMIT=$(git rev-parse HEAD) bash bench/gpu_suite.sh
set -uo pipefail
OUT=${OUT:-bench/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$OUT"
export PYREGNET_COMMIT=${PYREGNET_COMMIT:-unknown} PYTHONUNBUFFERED=1
# At most 8 files come back from the device tool's $OUT: scratch goes to $TMP.
TMP=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$TMP/gpu.txt" 2>&1
cat "$TMP/gpu.txt"

# Build: no build isolation (nothing can be downloaded there), CUDA required.
PYREGNET_CUDA=ON python3 -m pip install -v --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "build failed"; exit 1; }
grep -E "[1-9][0-9]* bytes spill" "$OUT/build.log" && echo "WARNING: register spills (above)"
(cd / && python3 -c "import pyregnet, json; print(json.dumps(pyregnet.build_info()))") | tee "$TMP/build_info.json"

# The whole suite, from the repository root with plain pytest (the installed package is imported).
python3 -m pytest -q -rs -p no:cacheprovider --rootdir=. -o addopts="" --junitxml="$OUT/junit.xml" tests \
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
cuda_cases = sum(1 for case in suite.iter("testcase") if "cuda" in case.get("name", "")
                 and case.find("skipped") is None)
record = {"device": open(f"{tmp}/gpu.txt").read().strip(), "commit": os.environ["PYREGNET_COMMIT"],
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "pytest_exit": status, **counts, "cuda_cases_run": cuda_cases,
          "build_info": json.load(open(f"{tmp}/build_info.json"))}
json.dump(record, open(f"{out}/tests_gpu.json", "w"), indent=2)
print(json.dumps(record))
PY

# Benchmarks (each optional: a failure is recorded, not fatal). Epochs of 8,192 images keep the
# whole call inside the device tool's 10 minutes.
python3 bench/step_time.py --device cuda --json "$OUT/step_time_cuda.json" > "$OUT/bench.log" 2>&1 \
  || echo "step_time failed (see bench.log)"
python3 bench/penalty_cost.py --device cuda --epoch-images 8192 --json "$OUT/penalty_cost_cuda.json" \
  >> "$OUT/bench.log" 2>&1 || echo "penalty_cost failed (see bench.log)"
tail -30 "$OUT/bench.log"
exit $status
