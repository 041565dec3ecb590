// The per-stream arenas behind Scratch; cuda/scratch.cuh gives the design and why it is safe.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>

#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/scratch.cuh"

namespace pyregnet::cuda {
namespace {

// cudaMalloc's own alignment, so that every lease suits any element type and vector loads.
constexpr size_t kAlign = 256;
// The smallest buffer of an arena, so that small requests (a reduction's partial sums are at
// most 8 KB) do not grow it in many small steps.
constexpr size_t kMinBytes = size_t(1) << 20;

struct Arena {
  // Recursive: the leases of one op nest. Held from a thread's first live lease to its last.
  std::recursive_mutex lock;
  char* base = nullptr;
  size_t top = 0;  // the first byte after the live leases
  std::atomic<size_t> capacity{0};  // also read, without the lock, by workspace_info
};

// (device, stream, thread): cudaStreamPerThread names another stream in every thread, so only
// for it is the thread part of the key; for any other stream it is the empty id. A destroyed
// stream's handle may come back for a new stream and find its arena: CUDA releases a destroyed
// stream only once its work is done, so the new stream's ops cannot overlap the old one's.
using Key = std::tuple<int, uintptr_t, std::thread::id>;

struct Registry {
  std::mutex lock;  // guards the map only; never held while waiting for an arena's lock
  std::map<Key, std::unique_ptr<Arena>> arenas;
  std::atomic<int64_t> allocations{0}, bytes{0}, captured_leases{0};
};

// Never destroyed (see scratch.cuh): the arenas outlive every graph captured with them.
Registry& registry() {
  static Registry* const r = new Registry;
  return *r;
}

Key key_of(cudaStream_t st, const char* what) {
  int device = 0;
  PYREGNET_CUDA_CHECK(cudaGetDevice(&device), what);
  const std::thread::id thread = st == cudaStreamPerThread ? std::this_thread::get_id() : std::thread::id();
  return Key(device, reinterpret_cast<uintptr_t>(st), thread);
}

Arena& arena_for(cudaStream_t st, const char* what) {
  const Key key = key_of(st, what);
  Registry& r = registry();
  const std::lock_guard<std::mutex> hold(r.lock);
  std::unique_ptr<Arena>& a = r.arenas[key];
  if (!a) a = std::make_unique<Arena>();
  return *a;  // stable: arenas are never erased
}

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Replaces the arena's buffer by one of at least `need` bytes. The old one stays allocated for
// good: live leases of the calling op, kernels enqueued earlier and graphs captured earlier may
// use it. Doubling keeps what is left behind below the size of the current buffer.
void grow(Arena& a, size_t need, const char* what) {
  const size_t size = round_up(std::max({need, 2 * a.capacity.load(), kMinBytes}));
  void* p = nullptr;
  PYREGNET_CUDA_CHECK(cudaMalloc(&p, size), what);
  a.base = static_cast<char*>(p);
  a.capacity.store(size);
  Registry& r = registry();
  r.allocations.fetch_add(1);
  r.bytes.fetch_add(int64_t(size));
}

[[noreturn]] void refuse_growth_in_capture(size_t need, size_t capacity, const char* what) {
  throw std::runtime_error(std::string("pyregnet: ") + what + ": needs " + std::to_string(need) +
                           " bytes of workspace while its stream is being captured as a CUDA graph, but the "
                           "stream's workspace holds " + std::to_string(capacity) +
                           " (a graph must not allocate): run the same launches once eagerly on this stream "
                           "before capturing them, as pyregnet.engine.Program does");
}

}  // namespace

WorkspaceLease workspace_acquire(size_t bytes, cudaStream_t st, const char* what) {
  Arena& a = arena_for(st, what);
  std::unique_lock<std::recursive_mutex> hold(a.lock);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PYREGNET_CUDA_CHECK(cudaStreamIsCapturing(st, &capture), what);
  const bool capturing = capture != cudaStreamCaptureStatusNone;  // active or invalidated
  const size_t offset = a.top, end = offset + round_up(bytes);
  if (end > a.capacity.load()) {
    if (capturing) refuse_growth_in_capture(end, a.capacity.load(), what);
    grow(a, end, what);
  }
  if (capturing) registry().captured_leases.fetch_add(1);
  a.top = end;
  static_cast<void>(hold.release());  // stays locked until workspace_release, in this thread
  return WorkspaceLease{&a, offset, a.base + offset};
}

void workspace_release(const WorkspaceLease& lease) noexcept {
  Arena& a = *static_cast<Arena*>(lease.arena);
  a.top = lease.offset;
  a.lock.unlock();
}

WorkspaceInfo workspace_info(Stream st) {
  Registry& r = registry();
  WorkspaceInfo info{};
  {
    const std::lock_guard<std::mutex> hold(r.lock);
    info.arenas = int64_t(r.arenas.size());
    // An arena is made only after cudaGetDevice worked: without one, no CUDA call (no error on a
    // machine without a GPU).
    if (!r.arenas.empty()) {
      const auto found = r.arenas.find(key_of(as_cuda_stream(st), "workspace_info"));
      if (found != r.arenas.end()) info.capacity = int64_t(found->second->capacity.load());
    }
  }
  info.allocations = r.allocations.load();
  info.bytes = r.bytes.load();
  info.captured_leases = r.captured_leases.load();
  return info;
}

}  // namespace pyregnet::cuda
