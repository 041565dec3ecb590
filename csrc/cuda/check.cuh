// Error checking and elementwise launch geometry shared by the CUDA backend's .cu files.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyregnet::cuda {

// A failing runtime call also leaves its error as the thread's last error, which the next
// launch check (cudaGetLastError) would report again, against another op: a failed allocation
// would be blamed on whatever ran next. So the last error is read off (and so cleared) before
// throwing. An error that is still there after that read is sticky: the context is lost, every
// later call fails, and the message says so.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what) {
  cudaGetLastError();
  const bool sticky = cudaPeekAtLastError() != cudaSuccess;
  throw std::runtime_error(std::string("pyregnet: CUDA error in ") + what + ": " + cudaGetErrorString(err) +
                           " (" + cudaGetErrorName(err) + ")" +
                           (sticky ? "; the CUDA context is unusable from now on: restart the process" : ""));
}

}  // namespace pyregnet::cuda

// Evaluates a CUDA runtime call and throws std::runtime_error naming `what` (the op) when it
// fails. Never exits the process: the error reaches Python as an exception.
#define PYREGNET_CUDA_CHECK(call, what)                                        \
  do {                                                                         \
    const cudaError_t pyregnet_err_ = (call);                                  \
    if (pyregnet_err_ != cudaSuccess) {                                        \
      ::pyregnet::cuda::throw_cuda_error(pyregnet_err_, (what));               \
    }                                                                          \
  } while (0)

namespace pyregnet::cuda {

inline cudaStream_t as_cuda_stream(void* st) { return static_cast<cudaStream_t>(st); }

// Call after every <<<...>>>: a bad launch (configuration, no device, no kernel image for this
// GPU) is only reported by cudaGetLastError, which also clears it.
inline void check_launch(const char* what) { PYREGNET_CUDA_CHECK(cudaGetLastError(), what); }

// Elementwise kernels run 256-thread blocks over grid-stride loops. The grid is capped at a
// fixed 4096 blocks (about 4 waves at 8 resident 256-thread blocks on each of an H200's 132 SMs;
// more where registers allow fewer resident blocks), enough to saturate memory bandwidth, so the
// device is never queried per call.
constexpr int kBlockThreads = 256;
constexpr int64_t kMaxGridBlocks = 4096;

// Blocks for a grid-stride loop over n > 0 elements with `threads` per block.
inline unsigned grid_blocks(int64_t n, int threads = kBlockThreads) {
  return unsigned(std::min<int64_t>((n + threads - 1) / threads, kMaxGridBlocks));
}

// First index and stride of a grid-stride loop, in int64 so that i + stride cannot overflow
// even for n close to 2^31.
__device__ __forceinline__ int64_t grid_start() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

}  // namespace pyregnet::cuda
