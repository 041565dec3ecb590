// Stream-ordered scratch memory for split-K workspaces and reduction partials.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/check.cuh"

namespace pyregnet::cuda {

// `count` elements of T allocated with cudaMallocAsync on `st` and released with cudaFreeAsync
// on the same stream when the owner goes out of scope (an exception unwinding included).
// Both are stream-ordered: the kernels enqueued in between finish with the memory before it
// can be reused, and the host never waits.
template <class T>
class Scratch {
 public:
  Scratch(int64_t count, cudaStream_t st, const char* what) : st_(st) {
    PYREGNET_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p_), size_t(count) * sizeof(T), st),
                        what);
  }
  ~Scratch() {
    // A destructor must not throw; clear the error so that the next check does not report it
    // against an unrelated call.
    if (cudaFreeAsync(p_, st_) != cudaSuccess) cudaGetLastError();
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t st_;
};

}  // namespace pyregnet::cuda
