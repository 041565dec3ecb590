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

// Conventions of both backends:
//   conv2d_backward: dx may be nullptr when the input gradient is not needed (the first layer).
//   relu (conv2d_forward, dense_forward): the ReLU applied in the GEMM epilogue, saving a pass.
//   into: nullptr: the op returns its sums (on the GPU it synchronizes the stream to read them);
//         else the op adds them to into[...] where that lives (device memory on the GPU),
//         returns 0 and does not synchronize: a captured CUDA graph accumulates its metrics on
//         the device and the host reads them once per epoch.
//   take: out[b] = values[index[offset + b]] for b < B; any position or value out of range
//         gives -1 (which softmax_cross_entropy then counts as a bad label).
#define PYREGNET_BACKEND_OPS(STREAM)                                                                               \
  template <class T> void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& s,          \
                                         bool relu STREAM);                                                     \
  template <class T> void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db,             \
                                          const ConvShape& s STREAM);                                           \
  /* argmax (may be nullptr): each window's maximum as 0..3 (math/maxpool.h), written by the */                \
  /* forward pass and read by the backward pass instead of recomputing it from x. */                            \
  template <class T> void maxpool2d_forward(const T* x, T* y, uint8_t* argmax, const PoolShape& s STREAM);      \
  template <class T> void maxpool2d_backward(const T* x, const uint8_t* argmax, const T* dy, T* dx,             \
                                             const PoolShape& s STREAM);                                        \
  template <class T> void relu_forward(const T* x, T* y, int64_t n STREAM);                                     \
  template <class T> void relu_backward(const T* y, const T* dy, T* dx, int64_t n STREAM);                      \
  template <class T> void dense_forward(const T* x, const T* w, const T* b, T* y, const DenseShape& s,          \
                                        bool relu STREAM);                                                      \
  template <class T> void dense_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db,              \
                                         const DenseShape& s STREAM);                                           \
  /* Training mode: the batch statistics go to mean and invstd (C,) and update running_mean and */             \
  /* running_var in place; evaluation mode: mean and invstd are those of the running statistics. */              \
  template <class T> void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean,          \
                                            T* running_var, T* y, T* mean, T* invstd, const ChannelShape& s,    \
                                            const BatchNormParams& p STREAM);                                   \
  template <class T> void batchnorm_backward(const T* x, const T* gamma, const T* dy, const T* mean,             \
                                             const T* invstd, T* dx, T* dgamma, T* dbeta, const ChannelShape& s, \
                                             bool training STREAM);                                             \
  template <class T> void global_avgpool_forward(const T* x, T* y, const ChannelShape& s STREAM);              \
  template <class T> void global_avgpool_backward(const T* dy, T* dx, const ChannelShape& s STREAM);           \
  /* y = main + shortcut(x) (math/residual.h), ReLU'd when relu; y may be main itself. */                      \
  template <class T> void residual_add_forward(const T* main, const T* x, T* y, const ShortcutShape& s,          \
                                               bool relu STREAM);                                               \
  /* out = grad + the shortcut's gradient from dy; out may be grad itself. */                                  \
  template <class T> void residual_add_backward(const T* dy, const T* grad, T* out, const ShortcutShape& s STREAM); \
  /* into: [loss_sum, correct, bad_labels] */                                                                \
  template <class T> XentTotals softmax_cross_entropy(const T* logits, IntArray labels, T* dlogits, int64_t N,  \
                                                      int64_t classes, double* into STREAM);                  \
  template <class T> double penalty(const T* w, int64_t n, double l1, double l2, double* into STREAM);        \
  /* The fused penalty + optimizer steps; with_penalty: also the penalty value of w[:n_penalized] */        \
  /* before the step, summed in the same pass (else 0). */                                                      \
  template <class T> double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized,           \
                                        const AdamStep& s, bool with_penalty, double* into STREAM);           \
  template <class T> double sgd_update(T* w, const T* g, T* buf, int64_t n, int64_t n_penalized,               \
                                       const SgdStep& s, bool with_penalty, double* into STREAM);             \
  /* g[:n_penalized] += the penalty gradient at w, as its own pass; with_penalty: the value too. */             \
  template <class T> double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2,       \
                                             bool with_penalty, double* into STREAM);                        \
  template <class T> int64_t sparsity_count(const T* w, int64_t n, double threshold STREAM);                    \
  /* Positions or indices out of range give zero images and are counted (into: [bad]). */                    \
  template <class T> int64_t augment_batch(const uint8_t* images, IntArray index, T* batch,                     \
                                           const AugmentShape& s, double* into STREAM);                       \
  void take(IntArray values, int64_t n_values, IntArray index, int64_t n_index, Counter offset, int32_t* out,   \
            int64_t B STREAM);

namespace cpu {
#define PYREGNET_NO_STREAM
PYREGNET_BACKEND_OPS(PYREGNET_NO_STREAM)
}  // namespace cpu

#ifdef PYREGNET_WITH_CUDA
// Same operations on device pointers, enqueued on `stream` (a cudaStream_t; 0 = legacy default).
// Every CUDA call is checked and throws std::runtime_error naming the op.
namespace cuda {
using Stream = void*;
#define PYREGNET_WITH_STREAM , Stream st
PYREGNET_BACKEND_OPS(PYREGNET_WITH_STREAM)

// Runtime queries; none of them throws when no driver or GPU is present.
int device_count();                 // 0 when no usable GPU or driver
int current_device();               // device of the calling thread, -1 on error
int pointer_device(const void* p);  // device that owns p, -1 for host or unknown memory
int runtime_version();              // cudaRuntimeGetVersion, e.g. 13000
}  // namespace cuda
#endif

}  // namespace pyregnet
