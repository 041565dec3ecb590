#!/usr/bin/env bash
# The GPU verification of pyregnet, one device-tool call per stage (dev/gpu_suite/gpu_suite.py
# says what each runs):
#   first   (<= 420 s) machine, build, smoke test, CUDA tests, real CIFAR-10 graph == eager,
#           epoch time beside PyTorch eager, the conv and dense harnesses if time remains;
#           writes gpu-first-contact.json
#   second  (<= 420 s, right after first on the warm machine) the CUDA tests first did not reach,
#           every dev/cuda harness, compute-sanitizer memcheck, the step and its launches vs
#           PyTorch and the roofline, the update vs the copy bandwidth; writes gpu-second.json
#   third   (<= 570 s, a later lease) 20-epoch runs for 3 seeds and a same-seed repeat, then
#           torch.compile; writes gpu-third.json
# Results go to $OUT (at most 8 files). From the repository root, with the device tool:
#   PYREGNET_COMMIT=<commit> bash bench/gpu_suite.sh first
# (the copy there has no .git, so the caller names the commit). Real data: .data/cifar10-jpeg.tar.gz,
# carried (`carry: [".data"]`). Without a GPU it says so in one line and exits 3.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
case "${1:-}" in
  first | second | third) ;;
  *) echo "usage: bash bench/gpu_suite.sh first|second|third" >&2; exit 2 ;;
esac
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu_suite $1: no NVIDIA GPU on this machine (nvidia-smi lists none): run it through the device tool" >&2
  exit 3
fi
export PYTHONUNBUFFERED=1
exec python3 dev/gpu_suite/gpu_suite.py "$@"
