// conv2d on the CPU: stride 1, zero padding, PyTorch layouts, through im2col + packed GEMM.
// Shape letters: N, C, H, W (input), K (output channels), R, S (filter), P, Q (output H, W).
//   forward:   y[n] (K x PQ)   = w (K x CRS) . col(x[n]) (CRS x PQ) + b
//   backward:  dw   (K x CRS)  = sum_n dy[n] (K x PQ) . col(x[n])^T
//              dx[n]           = col2im( w^T (CRS x K) . dy[n] (K x PQ) )
//              db[k]           = sum_n sum_pq dy[n, k]
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "cpu/gemm.h"

namespace pyregnet::cpu {
namespace {

// Valid output columns q with 0 <= q + s - pad < W: [q_begin, q_end).
inline void valid_range(int64_t s, const ConvShape& sh, int64_t limit_in, int64_t limit_out,
                        int64_t* begin, int64_t* end) {
  *begin = std::clamp<int64_t>(sh.pad - s, 0, limit_out);
  *end = std::clamp<int64_t>(limit_in + sh.pad - s, 0, limit_out);
}

// col (CRS x PQ): row (c, r, s), column (p, q) holds x[c, p + r - pad, q + s - pad] or 0.
template <class T>
void im2col(const T* x, const ConvShape& sh, T* col) {
  const int64_t PQ = sh.P * sh.Q;
  for (int64_t c = 0; c < sh.C; ++c)
    for (int64_t r = 0; r < sh.R; ++r)
      for (int64_t s = 0; s < sh.S; ++s) {
        T* row = col + ((c * sh.R + r) * sh.S + s) * PQ;
        int64_t q0, q1;
        valid_range(s, sh, sh.W, sh.Q, &q0, &q1);
        for (int64_t p = 0; p < sh.P; ++p) {
          T* out = row + p * sh.Q;
          const int64_t h = p + r - sh.pad;
          if (h < 0 || h >= sh.H || q0 >= q1) {
            std::fill(out, out + sh.Q, T(0));
            continue;
          }
          const T* in = x + (c * sh.H + h) * sh.W + (q0 + s - sh.pad);
          std::fill(out, out + q0, T(0));
          std::memcpy(out + q0, in, sizeof(T) * (q1 - q0));
          std::fill(out + q1, out + sh.Q, T(0));
        }
      }
}

// The adjoint of im2col: dx[c, p + r - pad, q + s - pad] += col[(c, r, s), (p, q)].
template <class T>
void col2im_add(const T* col, const ConvShape& sh, T* dx) {
  const int64_t PQ = sh.P * sh.Q;
  for (int64_t c = 0; c < sh.C; ++c)
    for (int64_t r = 0; r < sh.R; ++r)
      for (int64_t s = 0; s < sh.S; ++s) {
        const T* row = col + ((c * sh.R + r) * sh.S + s) * PQ;
        int64_t q0, q1;
        valid_range(s, sh, sh.W, sh.Q, &q0, &q1);
        for (int64_t p = 0; p < sh.P; ++p) {
          const int64_t h = p + r - sh.pad;
          if (h < 0 || h >= sh.H) continue;
          T* out = dx + (c * sh.H + h) * sh.W;
          const T* in = row + p * sh.Q;
          for (int64_t q = q0; q < q1; ++q) out[q + s - sh.pad] += in[q];
        }
      }
}

// Images per weight-gradient partial. Fixed (not per thread) so that dw is summed in the same
// order whatever the number of threads: bitwise reproducible training on the CPU.
constexpr int64_t kImagesPerPartial = 4;

}  // namespace

template <class T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& sh, bool relu_out) {
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q;
  parallel([&] {
    std::vector<T> col(CRS * PQ);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < sh.N; ++n) {
      im2col(x + n * sh.C * sh.H * sh.W, sh, col.data());
      T* yn = y + n * sh.K * PQ;
      gemm<T>(sh.K, PQ, CRS, {w, CRS, false}, {col.data(), PQ, false}, yn, PQ, false, false);
      for (int64_t k = 0; k < sh.K; ++k)
        for (int64_t i = 0; i < PQ; ++i) {
          const T z = yn[k * PQ + i] + b[k];
          yn[k * PQ + i] = relu_out ? relu(z) : z;
        }
    }
  });
}

template <class T>
void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const ConvShape& sh) {
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q, CHW = sh.C * sh.H * sh.W;
  const int64_t n_partials = (sh.N + kImagesPerPartial - 1) / kImagesPerPartial;
  std::vector<T> dw_partial(n_partials * sh.K * CRS);
  parallel([&] {
    std::vector<T> col(CRS * PQ);
#pragma omp for schedule(static)
    for (int64_t part = 0; part < n_partials; ++part) {
      T* dw_part = dw_partial.data() + part * sh.K * CRS;
      const int64_t n_end = std::min(sh.N, (part + 1) * kImagesPerPartial);
      for (int64_t n = part * kImagesPerPartial; n < n_end; ++n) {
        const T* dyn = dy + n * sh.K * PQ;
        im2col(x + n * CHW, sh, col.data());
        gemm<T>(sh.K, CRS, PQ, {dyn, PQ, false}, {col.data(), PQ, true}, dw_part, CRS,
                n > part * kImagesPerPartial, false);
        if (dx == nullptr) continue;  // the first layer needs no input gradient
        // col now becomes dcol = w^T . dy[n], scattered back into dx[n].
        gemm<T>(CRS, PQ, sh.K, {w, CRS, true}, {dyn, PQ, false}, col.data(), PQ, false, false);
        std::fill(dx + n * CHW, dx + (n + 1) * CHW, T(0));
        col2im_add(col.data(), sh, dx + n * CHW);
      }
    }
  });
  std::fill(dw, dw + sh.K * CRS, T(0));
  for (int64_t part = 0; part < n_partials; ++part)
    for (int64_t i = 0; i < sh.K * CRS; ++i) dw[i] += dw_partial[part * sh.K * CRS + i];
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < sh.K; ++k) {
      T sum = T(0);
      for (int64_t n = 0; n < sh.N; ++n) {
        const T* plane = dy + (n * sh.K + k) * PQ;
        for (int64_t i = 0; i < PQ; ++i) sum += plane[i];
      }
      db[k] = sum;
    }
  });
}

template void conv2d_forward<float>(const float*, const float*, const float*, float*, const ConvShape&, bool);
template void conv2d_forward<double>(const double*, const double*, const double*, double*, const ConvShape&, bool);
template void conv2d_backward<float>(const float*, const float*, const float*, float*, float*, float*, const ConvShape&);
template void conv2d_backward<double>(const double*, const double*, const double*, double*, double*, double*, const ConvShape&);

}  // namespace pyregnet::cpu
