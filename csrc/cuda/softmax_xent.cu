// Softmax cross-entropy over N rows of `classes` logits: xent_row of math/softmax_xent.h per
// row, then the batch totals by a deterministic reduction.
//
// Labels come from device memory, so unlike the CPU backend they cannot be checked before the
// launch: a row whose label is outside [0, classes) is not read, gets zeros in dlogits, and is
// counted in XentTotals::bad_labels for the caller to report.
#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/scratch.cuh"
#include "math/softmax_xent.h"

namespace pyregnet::cuda {
namespace {

enum RowOutcome : int { kWrong = 0, kCorrect = 1, kBadLabel = 2 };

// One thread per row (rows are short: the classifier has ~10 classes). Per-row results go to
// row_loss / row_outcome so that the totals can be summed in a fixed order afterwards.
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    xent_rows_kernel(const T* const logits, const IntArray labels, T* const dlogits, const int N,
                     const int classes, const T scale, double* const row_loss,
                     int* const row_outcome) {
  for (int64_t i = grid_start(); i < N; i += grid_stride()) {
    const int64_t label = int_at(labels, i);
    T* const dz = dlogits + i * classes;
    if (label < 0 || label >= classes) {
      for (int j = 0; j < classes; ++j) dz[j] = T(0);
      row_loss[i] = 0.0;
      row_outcome[i] = kBadLabel;
      continue;
    }
    const XentRow row = xent_row(logits + i * classes, int64_t(classes), label, dz, scale);
    row_loss[i] = row.loss;
    row_outcome[i] = row.correct ? kCorrect : kWrong;
  }
}

// A single block: each thread sums rows t, t + blockDim, ... in order, then block_sum's fixed
// tree combines the threads. The totals go to `totals`, or are added to into[0..2] (one
// thread, in stream order: reproducible accumulation over the steps of an epoch).
__global__ void __launch_bounds__(1024)
    xent_totals_kernel(const double* const row_loss, const int* const row_outcome, const int N,
                       XentTotals* const totals, double* const into) {
  double loss = 0.0;
  long long correct = 0, bad = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    loss += row_loss[i];
    correct += row_outcome[i] == kCorrect;
    bad += row_outcome[i] == kBadLabel;
  }
  loss = block_sum(loss);
  correct = block_sum(correct);
  bad = block_sum(bad);
  if (threadIdx.x != 0) return;
  if (into == nullptr) {
    *totals = XentTotals{loss, int64_t(correct), int64_t(bad)};
  } else {
    into[0] += loss;
    into[1] += double(correct);
    into[2] += double(bad);
  }
}

}  // namespace

template <class T>
XentTotals softmax_cross_entropy(const T* logits, IntArray labels, T* dlogits, int64_t N,
                                 int64_t classes, double* into, Stream st) {
  if (N == 0) return XentTotals{0.0, 0, 0};
  const cudaStream_t stream = as_cuda_stream(st);
  const char* const what = "softmax_cross_entropy";
  Scratch<double> row_loss(N, stream, what);
  Scratch<int> row_outcome(N, stream, what);

  xent_rows_kernel<T><<<grid_blocks(N), kBlockThreads, 0, stream>>>(
      logits, labels, dlogits, int(N), int(classes), T(1) / T(N), row_loss.get(), row_outcome.get());
  check_launch(what);
  if (into != nullptr) {
    xent_totals_kernel<<<1, 1024, 0, stream>>>(row_loss.get(), row_outcome.get(), int(N), nullptr, into);
    check_launch(what);
    return XentTotals{0.0, 0, 0};
  }
  Scratch<XentTotals> totals(1, stream, what);
  xent_totals_kernel<<<1, 1024, 0, stream>>>(row_loss.get(), row_outcome.get(), int(N), totals.get(), nullptr);
  check_launch(what);

  XentTotals host;
  PYREGNET_CUDA_CHECK(
      cudaMemcpyAsync(&host, totals.get(), sizeof(XentTotals), cudaMemcpyDeviceToHost, stream), what);
  PYREGNET_CUDA_CHECK(cudaStreamSynchronize(stream), what);
  return host;
}

template XentTotals softmax_cross_entropy<float>(const float*, IntArray, float*, int64_t, int64_t,
                                                 double*, Stream);
template XentTotals softmax_cross_entropy<double>(const double*, IntArray, double*, int64_t, int64_t,
                                                  double*, Stream);

}  // namespace pyregnet::cuda
