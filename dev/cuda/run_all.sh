#!/usr/bin/env bash
# Builds every dev/cuda harness and runs it on the GPU, writing logs to the directory $1
# (default /tmp/pyregnet-dev-cuda/logs):
#   build.log           the compiler output (-Xptxas -v: registers, stack, spills per kernel)
#   harnesses.log       every harness's validation and timings, one section per harness
#   summary.txt         the device, how each harness was built, its exit status and verdict,
#                       and a table of registers and spills per kernel
# Three files, one folder, however many harnesses: within the five files a device call brings
# back from $OUT.
#
# Each harness is built with the package's .cu (one or more) it compares against; if they do not
# compile (the package being mid-edit), it is built without (its own versions only) and
# summary.txt says so. Exit status: 0 when every harness built with the package and passed
# validation, else 1.
#
# Environment: BUILD (default /tmp/pyregnet-dev-cuda), NVCC (default nvcc), JOBS (parallel
# compiles, default 4), RUN_TIMEOUT (seconds per harness, default 300), HARNESSES (which ones,
# default all).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${1:-/tmp/pyregnet-dev-cuda/logs}"
export BUILD="${BUILD:-/tmp/pyregnet-dev-cuda}"
export NVCC="${NVCC:-nvcc}"
jobs="${JOBS:-4}"
run_timeout="${RUN_TIMEOUT:-300}"
read -r -a harnesses <<<"${HARNESSES:-adam_update augment conv2d dense maxpool2d reduce relu softmax_xent}"

mkdir -p "$logs" "$BUILD"
build_log="$logs/build.log"
harness_log="$logs/harnesses.log"
summary="$logs/summary.txt"
: >"$build_log"
: >"$harness_log"
: >"$summary"
# Each run's output goes here first (outside the log folder), then into harnesses.log.
run_out="$BUILD/run_all.current.log"
status=0

say() { echo "$*" | tee -a "$summary"; }

commit="unknown (no git)"
if head="$(git -C "$here" rev-parse --short HEAD 2>/dev/null)"; then
  commit="$head"
  [[ -z "$(git -C "$here" status --porcelain -- "$here/../../csrc" "$here")" ]] ||
    commit="$commit + uncommitted changes in csrc or dev/cuda"
fi
say "dev/cuda run_all.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total --format=csv \
    >>"$summary" 2>&1
fi
"$NVCC" --version | tail -n 2 >>"$summary" 2>&1

# The Makefile's flags, for machines without make. Keep in step with Makefile.
flags=(-O3 -std=c++17 -arch=sm_90 -Xptxas -v -lineinfo -I"$here/../../csrc" -DPYREGNET_WITH_CUDA=1)
# The csrc/cuda/<source>.cu files of each harness, space-separated (the Makefile's
# PACKAGE_SOURCE_<harness>, then workspace: the ops' scratch memory).
package_sources() {
  case "$1" in
    adam_update) echo update workspace ;;
    relu) echo activation workspace ;;
    reduce) echo reduce update workspace ;;  # penalty, sparsity_count; penalty_gradient
    *) echo "$1" workspace ;;  # augment, conv2d, dense, maxpool2d, softmax_xent
  esac
}
build_with_package() {  # $1 = harness; without make
  local src objects=()
  for src in $(package_sources "$1"); do
    "$NVCC" "${flags[@]}" -c "$here/../../csrc/cuda/$src.cu" -o "$BUILD/pkg_$src.o" || return 1
    objects+=("$BUILD/pkg_$src.o")
  done
  "$NVCC" "${flags[@]}" -DWITH_PACKAGE "$here/$1.cu" "${objects[@]}" -o "$BUILD/$1"
}
build_standalone() {  # $1 = harness
  if [[ $have_make -eq 1 ]]; then
    make -C "$here" "$1_standalone"
  else
    "$NVCC" "${flags[@]}" "$here/$1.cu" -o "$BUILD/$1_standalone"
  fi
}

# Stale binaries from an earlier build must not stand in for one that fails now.
for h in "${harnesses[@]}"; do rm -f "$BUILD/$h" "$BUILD/${h}_standalone"; done

# With make: everything at once, in parallel, keeping going past a failure (-k), each compile's
# output kept together (--output-sync, GNU make >= 4: the register table below pairs each
# "Compiling entry function" line with the lines after it, which interleaved parallel output
# would mismatch); without make, harness by harness below.
have_make=0
if command -v make >/dev/null 2>&1; then
  have_make=1
  sync_output=()
  make --help 2>/dev/null | grep -q -- '--output-sync' && sync_output=(--output-sync=target)
  make -C "$here" -k -j"$jobs" ${sync_output[@]+"${sync_output[@]}"} "${harnesses[@]}" >>"$build_log" 2>&1
fi

for h in "${harnesses[@]}"; do
  if [[ $have_make -eq 0 ]]; then build_with_package "$h" >>"$build_log" 2>&1; fi
  if [[ -x "$BUILD/$h" ]]; then
    bin="$BUILD/$h"
    how="with the package"
  else
    status=1
    say "$h: build with the package FAILED (see build.log); building its own versions alone"
    if build_standalone "$h" >>"$build_log" 2>&1; then
      bin="$BUILD/${h}_standalone"
      how="WITHOUT the package"
    else
      say "$h: build FAILED"
      continue
    fi
  fi
  echo "== $h ($how) ==" >&2
  timeout "$run_timeout" "$bin" >"$run_out" 2>&1
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  {
    echo "######## $h ($how): exit $rc ########"
    cat "$run_out"
    echo
  } >>"$harness_log"
  verdict="$(grep -E '^(ALL OK|FAILED)' "$run_out" | tail -n 1)"
  [[ -z "$verdict" ]] && verdict="no verdict; last line: $(tail -n 1 "$run_out")"
  say "$h ($how): exit $rc; $verdict"
  if [[ $rc -eq 124 ]]; then say "  (timed out after ${run_timeout}s)"; fi
done
rm -f "$run_out"

# Registers, stack and spills per kernel, from ptxas -v (names demangled when c++filt exists).
{
  echo
  echo "registers | stack | spills | kernel (from build.log)"
  demangle=cat
  command -v c++filt >/dev/null 2>&1 && demangle=c++filt
  $demangle <"$build_log" | awk '
    /Compiling entry function/ { match($0, /\047[^\047]*\047/); name = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { split($0, a, ","); stack = a[1]; sub(/^[ \t]*/, "", stack); spills = a[2] "," a[3] }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
                              if (!seen[name]++) printf "%4s | %s |%s | %s\n", regs, stack, spills, name }'
} >>"$summary"

say "run_all.sh: exit $status"
exit "$status"
