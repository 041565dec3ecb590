// Gathering a batch on the GPU:
//   augment_batch  one thread per output element, batch[b, c, h, w] =
//                  images[index[offset + b], source_row, source_col, c] / 255 with the transform
//                  of math/augment.h. Consecutive threads write consecutive w (coalesced stores);
//                  the reads gather from a 3 KB image that stays in L1/L2;
//   take           out[b] = values[index[offset + b]] (the batch's labels), one thread each.
// The step and the offset are Counters: read by the kernel when it runs, so that a captured CUDA
// graph gathers a new batch with new draws on every replay.
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
                   const AugmentShape s, double* const bad_indices) {
  const int64_t total = s.B * s.C * s.H * s.W;
  const uint64_t step = uint64_t(read_counter(s.step));
  const int64_t offset = read_counter(s.offset);
  for (int64_t e = grid_start(); e < total; e += grid_stride()) {
    const int64_t w = e % s.W, h = (e / s.W) % s.H, c = (e / (s.W * s.H)) % s.C, b = e / (s.W * s.H * s.C);
    const int64_t n = sample_at(index, s.n_index, offset + b, s.N);
    if (n < 0) {
      batch[e] = T(0);
      // Adding 1.0s in double is exact below 2^53, so the count does not depend on the order.
      if (c == 0 && h == 0 && w == 0) atomicAdd(bad_indices, 1.0);
      continue;
    }
    const AugmentDraw d = augment_draw(s.seed, step, uint64_t(b), s.max_shift, s.flip);
    batch[e] = pixel_to_unit<T>(images[((n * s.H + source_row(d, h, s.H)) * s.W + source_col(d, w, s.W)) * s.C + c]);
  }
}

__global__ void __launch_bounds__(kBlockThreads)
    take_kernel(const IntArray values, const int64_t n_values, const IntArray index, const int64_t n_index,
                const Counter offset, int32_t* const out, const int64_t B) {
  const int64_t start = read_counter(offset);
  for (int64_t b = grid_start(); b < B; b += grid_stride())
    out[b] = take_at(values, n_values, index, n_index, start + b);
}

}  // namespace

template <class T>
int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s, double* into,
                      Stream st) {
  const int64_t total = s.B * s.C * s.H * s.W;
  if (total == 0) return 0;
  const cudaStream_t stream = as_cuda_stream(st);
  const char* const what = "augment_batch";
  if (into != nullptr) {
    augment_kernel<T><<<grid_blocks(total), kBlockThreads, 0, stream>>>(images, index, batch, s, into);
    check_launch(what);
    return 0;
  }
  Scratch<double> bad(1, stream, what);
  PYREGNET_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0, sizeof(double), stream), what);
  augment_kernel<T><<<grid_blocks(total), kBlockThreads, 0, stream>>>(images, index, batch, s, bad.get());
  check_launch(what);
  double host = 0;
  PYREGNET_CUDA_CHECK(cudaMemcpyAsync(&host, bad.get(), sizeof(host), cudaMemcpyDeviceToHost, stream), what);
  PYREGNET_CUDA_CHECK(cudaStreamSynchronize(stream), what);
  return int64_t(host);
}

void take(IntArray values, int64_t n_values, IntArray index, int64_t n_index, Counter offset, int32_t* out,
          int64_t B, Stream st) {
  if (B == 0) return;
  take_kernel<<<grid_blocks(B), kBlockThreads, 0, as_cuda_stream(st)>>>(values, n_values, index, n_index, offset,
                                                                         out, B);
  check_launch("take");
}

template int64_t augment_batch<float>(const uint8_t*, IntArray, float*, const AugmentShape&, double*, Stream);
template int64_t augment_batch<double>(const uint8_t*, IntArray, double*, const AugmentShape&, double*, Stream);

}  // namespace pyregnet::cuda
