// Gather + augment of a training batch on the GPU: one thread per output element,
// batch[b, c, h, w] = images[index[b], source_row, source_col, c] / 255 with the transform of
// math/augment.h. Consecutive threads write consecutive w (coalesced stores); the reads gather
// from a 3 KB image that stays in L1/L2.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/scratch.cuh"
#include "math/augment.h"
#include "math/int_array.h"

namespace pyregnet::cuda {
namespace {

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    augment_kernel(const uint8_t* const images, const IntArray index, T* const batch,
                   const AugmentShape s, unsigned long long* const bad_indices) {
  const int64_t total = s.B * s.C * s.H * s.W;
  for (int64_t e = grid_start(); e < total; e += grid_stride()) {
    const int64_t w = e % s.W, h = (e / s.W) % s.H, c = (e / (s.W * s.H)) % s.C, b = e / (s.W * s.H * s.C);
    const int64_t n = int_at(index, b);
    if (n < 0 || n >= s.N) {
      batch[e] = T(0);
      if (c == 0 && h == 0 && w == 0) atomicAdd(bad_indices, 1ull);  // integer count: order-free
      continue;
    }
    const AugmentDraw d = augment_draw(s.seed, s.step, uint64_t(b), s.max_shift, s.flip);
    batch[e] = pixel_to_unit<T>(images[((n * s.H + source_row(d, h, s.H)) * s.W + source_col(d, w, s.W)) * s.C + c]);
  }
}

}  // namespace

template <class T>
int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s, Stream st) {
  const int64_t total = s.B * s.C * s.H * s.W;
  if (total == 0) return 0;
  const cudaStream_t stream = as_cuda_stream(st);
  const char* const what = "augment_batch";
  Scratch<unsigned long long> bad(1, stream, what);
  PYREGNET_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0, sizeof(unsigned long long), stream), what);
  augment_kernel<T><<<grid_blocks(total), kBlockThreads, 0, stream>>>(images, index, batch, s, bad.get());
  check_launch(what);
  unsigned long long host = 0;
  PYREGNET_CUDA_CHECK(cudaMemcpyAsync(&host, bad.get(), sizeof(host), cudaMemcpyDeviceToHost, stream), what);
  PYREGNET_CUDA_CHECK(cudaStreamSynchronize(stream), what);
  return int64_t(host);
}

template int64_t augment_batch<float>(const uint8_t*, IntArray, float*, const AugmentShape&, Stream);
template int64_t augment_batch<double>(const uint8_t*, IntArray, double*, const AugmentShape&, Stream);

}  // namespace pyregnet::cuda
