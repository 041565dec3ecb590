// The entry points of the two backends. The bindings check every argument and then call one
// of these; the backends trust their inputs (contiguous, shapes consistent, labels in range
// on the CPU). One op family per file: csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu.
#pragma once
#include <cstdint>

#include "math/elementwise.h"
#include "math/shapes.h"

namespace pyregnet {

// Reductions of softmax cross-entropy over the batch.
struct XentTotals {
  double loss_sum;      // sum over the rows of logsumexp(z) - z[label]
  int64_t correct;      // rows whose argmax is the label
  int64_t bad_labels;   // rows whose label is outside [0, classes) (checked by the CUDA backend)
};

// conv2d_backward: dx may be nullptr when the input gradient is not needed (the first layer).
namespace cpu {
template <class T> void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& s);
template <class T> void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const ConvShape& s);
template <class T> void maxpool2d_forward(const T* x, T* y, const PoolShape& s);
template <class T> void maxpool2d_backward(const T* x, const T* dy, T* dx, const PoolShape& s);
template <class T> void relu_forward(const T* x, T* y, int64_t n);
template <class T> void relu_backward(const T* y, const T* dy, T* dx, int64_t n);
template <class T> void dense_forward(const T* x, const T* w, const T* b, T* y, const DenseShape& s);
template <class T> void dense_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const DenseShape& s);
template <class T> XentTotals softmax_cross_entropy(const T* logits, IntArray labels, T* dlogits, int64_t N, int64_t classes);
template <class T> double penalty(const T* w, int64_t n, double l1, double l2);
// The fused penalty + Adam step; with_penalty: also returns the penalty value of w[:n_penalized]
// before the step, summed in the same pass (else 0).
template <class T> double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s, bool with_penalty);
// g[:n_penalized] += the penalty gradient at w, as its own pass; with_penalty: returns the value.
template <class T> double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty);
template <class T> int64_t sparsity_count(const T* w, int64_t n, double threshold);
// Indices outside [0, N) give zero images and are counted (returned); the caller reports them.
template <class T> int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s);
}  // namespace cpu

#ifdef PYREGNET_WITH_CUDA
// Same operations on device pointers, enqueued on `stream` (a cudaStream_t; 0 = legacy default).
// Ops that return host scalars (softmax_cross_entropy, penalty, sparsity_count) synchronize
// the stream to read them. Every CUDA call is checked and throws std::runtime_error naming the op.
namespace cuda {
using Stream = void*;
template <class T> void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& s, Stream st);
template <class T> void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const ConvShape& s, Stream st);
template <class T> void maxpool2d_forward(const T* x, T* y, const PoolShape& s, Stream st);
template <class T> void maxpool2d_backward(const T* x, const T* dy, T* dx, const PoolShape& s, Stream st);
template <class T> void relu_forward(const T* x, T* y, int64_t n, Stream st);
template <class T> void relu_backward(const T* y, const T* dy, T* dx, int64_t n, Stream st);
template <class T> void dense_forward(const T* x, const T* w, const T* b, T* y, const DenseShape& s, Stream st);
template <class T> void dense_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const DenseShape& s, Stream st);
template <class T> XentTotals softmax_cross_entropy(const T* logits, IntArray labels, T* dlogits, int64_t N, int64_t classes, Stream st);
template <class T> double penalty(const T* w, int64_t n, double l1, double l2, Stream st);
template <class T> double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s, bool with_penalty, Stream st);
template <class T> double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty, Stream st);
template <class T> int64_t sparsity_count(const T* w, int64_t n, double threshold, Stream st);
template <class T> int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s, Stream st);

// Runtime queries; none of them throws when no driver or GPU is present.
int device_count();                 // 0 when no usable GPU or driver
int current_device();               // device of the calling thread, -1 on error
int pointer_device(const void* p);  // device that owns p, -1 for host or unknown memory
int runtime_version();              // cudaRuntimeGetVersion, e.g. 13000
}  // namespace cuda
#endif

}  // namespace pyregnet
