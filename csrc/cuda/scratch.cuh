// Scratch memory for split-K workspaces and reduction partials, taken from a workspace that is
// allocated outside any CUDA graph capture and reused (docs/design.md §2, "Scratch memory"):
//
// - One arena per (device, stream): a buffer from a plain cudaMalloc, handed out as a stack.
//   The Scratch objects alive at once are those of one op (nested scopes), so they are released
//   in reverse order. The bytes one op used are reused by the next op on the same stream, which
//   the stream orders after it. A graph captured from the stream is one chain of nodes and must
//   be replayed on that same stream (engine.Program does), so the same holds between replays
//   and eager ops. Each stream has its own arena, so concurrent streams never share bytes.
// - Growth, by at least doubling, happens only while the stream is not being captured. A
//   captured op that needs more than its stream's arena holds throws an error saying to run the
//   launches once eagerly first (Program's first call does), so a graph holds no allocation node.
// - A buffer is never freed: kernels enqueued earlier, live Scratch objects of the op that grew
//   the arena and graphs captured earlier may all still use it. The buffers left behind by
//   doubling add up to less than the current one. No static destructor frees anything either:
//   at exit the CUDA runtime may already be gone, and the driver reclaims the memory.
// - An arena is locked from a thread's first live Scratch to its last, so another thread's op
//   on the same stream waits instead of breaking the stack (its kernels would queue behind on
//   the stream anyway).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pyregnet::cuda {

// A span of a stream's arena, held from workspace_acquire to workspace_release.
struct WorkspaceLease {
  void* arena;
  size_t offset;  // where the span starts: the arena's top again once it is released
  void* ptr;
};

// `bytes` of the current device's arena for `st`, aligned for any element type. Throws
// std::runtime_error naming `what` when the arena must grow during a capture or cannot grow.
WorkspaceLease workspace_acquire(size_t bytes, cudaStream_t st, const char* what);
void workspace_release(const WorkspaceLease& lease) noexcept;

// `count` elements of T from the calling op's stream arena, given back when the owner goes out
// of scope (an exception unwinding included). Only growth allocates; the rest is bookkeeping.
template <class T>
class Scratch {
 public:
  Scratch(int64_t count, cudaStream_t st, const char* what)
      : lease_(workspace_acquire(size_t(count) * sizeof(T), st, what)) {}
  ~Scratch() { workspace_release(lease_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* get() const { return static_cast<T*>(lease_.ptr); }

 private:
  WorkspaceLease lease_;
};

}  // namespace pyregnet::cuda
