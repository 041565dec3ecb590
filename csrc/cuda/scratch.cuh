// Stream-ordered scratch memory for split-K workspaces and reduction partials.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "cuda/check.cuh"

namespace pyregnet::cuda {

// `count` elements of T allocated with cudaMallocAsync on `st` and released with cudaFreeAsync
// on the same stream when the owner goes out of scope (an exception unwinding included).
// Both are stream-ordered: the kernels enqueued in between finish with the memory before it
// can be reused, and the host never waits.
// The default memory pool hands its free memory back to the system at every synchronization
// unless its release threshold says otherwise (it is 0 by default), and the reductions that
// return a host value free their scratch and synchronize on every call: each call would map and
// unmap memory again. The threshold of the current device's pool (the one cudaMallocAsync takes
// from: the ops run on the current device) is raised to "never" once per device and process.
inline void keep_pool_memory(const char* what) {
  constexpr int kDevices = 64;  // more devices than any one machine has; beyond, set every time
  static std::atomic<bool> done[kDevices] = {};
  int device = 0;
  PYREGNET_CUDA_CHECK(cudaGetDevice(&device), what);
  if (device < kDevices && done[device].load(std::memory_order_relaxed)) return;
  cudaMemPool_t pool;
  PYREGNET_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device), what);
  uint64_t keep = UINT64_MAX;
  PYREGNET_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), what);
  if (device < kDevices) done[device].store(true, std::memory_order_relaxed);
}

template <class T>
class Scratch {
 public:
  Scratch(int64_t count, cudaStream_t st, const char* what) : st_(st) {
    keep_pool_memory(what);
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
