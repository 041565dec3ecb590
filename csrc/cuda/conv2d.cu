// conv2d, stride `st`, zero padding `pad` on every side, cross-correlation (no filter flip), as
// implicit GEMMs on the tiled kernel of gemm.cuh: the operand functors below read x, w and dy
// in place, with the im2col gather (and the zeros of the padding) done per element.
//
// Shape letters: N, C, H, W input (NCHW); K output channels; R, S filter (w is K x C x R x S);
// P, Q output height and width (y and dy are N x K x P x Q).
//
//   forward  y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*st+r-pad, q*st+s-pad]
//            GEMM M = K, N = N*P*Q, Kdim = C*R*S
//   dx       dx[n,c,h,w] = sum_{k,r,s} w[k,c,r,s] * dy[n, k, (h+pad-r)/st, (w+pad-s)/st]
//            GEMM M = C, N = N*H*W, Kdim = K*R*S; a term is 0 unless st divides both
//            h+pad-r and w+pad-s (a gather: each dx element is one GEMM output, summed in a
//            fixed order, no atomics; at stride 2 three in four of its terms are such zeros)
//   dw       dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*st+r-pad, q*st+s-pad]
//            GEMM M = K, N = C*R*S, Kdim = N*P*Q (long k over few tiles: split-K)
//   db       db[k] = sum_{n,p,q} dy[n,k,p,q]
//
// x and dy indices outside the image read as 0. dx, dw and db are overwritten; dx may be nullptr
// (not wanted).
#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/divmod.cuh"
#include "cuda/gemm.cuh"

namespace pyregnet::cuda {
namespace {

// ConvShape as int extents (the bindings keep every tensor under 2^31 elements), with the
// divisors of the index maps precomputed.
struct ConvGeometry {
  int C, H, W, K, pad, stride, P, Q;
  int RS, CRS, HW, PQ;
  DivMod by_S, by_RS, by_W, by_HW, by_Q, by_PQ, by_stride;

  explicit ConvGeometry(const ConvShape& s)
      : C(int(s.C)), H(int(s.H)), W(int(s.W)), K(int(s.K)), pad(int(s.pad)), stride(int(s.stride)),
        P(int(s.P)), Q(int(s.Q)), RS(int(s.R * s.S)), CRS(int(s.C * s.R * s.S)), HW(int(s.H * s.W)),
        PQ(int(s.P * s.Q)), by_S(int(s.S)), by_RS(RS), by_W(int(s.W)), by_HW(HW), by_Q(int(s.Q)),
        by_PQ(PQ), by_stride(int(s.stride)) {}
};

// Element (crs, npq) of the implicit im2col matrix of x: crs = (c, r, s) a filter tap,
// npq = (n, p, q) an output pixel; x[n, c, p*stride+r-pad, q*stride+s-pad], 0 in the padding.
template <class T>
__device__ __forceinline__ T im2col(const T* x, const ConvGeometry& g, int crs, int npq) {
  int c, rs, r, s, n, pq, p, q;
  g.by_RS.divmod(crs, c, rs);
  g.by_S.divmod(rs, r, s);
  g.by_PQ.divmod(npq, n, pq);
  g.by_Q.divmod(pq, p, q);
  const int h = p * g.stride + r - g.pad, w = q * g.stride + s - g.pad;
  return (h >= 0 && h < g.H && w >= 0 && w < g.W) ? x[((n * g.C + c) * g.H + h) * g.W + w] : T(0);
}

// ---- forward: y = w (K x CRS) . im2col(x) (CRS x NPQ) + b ------------------------------------

// A(k, crs) = w[k, crs]
template <class T>
struct FilterRows {
  static constexpr bool k_contiguous = true;
  const T* w;
  int CRS;
  __device__ T operator()(int k, int crs) const { return w[k * CRS + crs]; }
};

// B(crs, npq) = im2col(x)
template <class T>
struct ImageWindows {
  static constexpr bool k_contiguous = false;  // consecutive output pixels read consecutive q
  const T* x;
  ConvGeometry g;
  __device__ T operator()(int crs, int npq) const { return im2col(x, g, crs, npq); }
};

// y[n, k, p, q] = acc + b[k], then the ReLU when fused (one pass over y saved)
template <class T>
struct BiasedOutput {
  T* y;
  const T* b;
  ConvGeometry g;
  bool relu_out;
  __device__ void operator()(int k, int npq, T acc) const {
    int n, pq;
    g.by_PQ.divmod(npq, n, pq);
    const T z = acc + b[k];
    y[(n * g.K + k) * g.PQ + pq] = relu_out ? relu(z) : z;
  }
};

// ---- dx = w^T (C x KRS) . gathered dy (KRS x NHW) --------------------------------------------

// A(c, krs) = w[k, c, r, s] with krs = (k, r, s)
template <class T>
struct FilterColumns {
  static constexpr bool k_contiguous = true;  // consecutive taps (r, s) of one k are adjacent
  const T* w;
  ConvGeometry g;
  __device__ T operator()(int c, int krs) const {
    int k, rs;
    g.by_RS.divmod(krs, k, rs);
    return w[(k * g.C + c) * g.RS + rs];
  }
};

// B(krs, nhw) = dy[n, k, (h+pad-r)/stride, (w+pad-s)/stride], 0 where stride does not divide
// both or the pixel is outside [0, P) x [0, Q): the output pixel whose window put input pixel
// (h, w) under filter tap (r, s), if any.
template <class T>
struct OutputGradWindows {
  static constexpr bool k_contiguous = false;  // consecutive input pixels read consecutive q
  const T* dy;
  ConvGeometry g;
  __device__ T operator()(int krs, int nhw) const {
    int k, rs, r, s, n, hw, h, w;
    g.by_RS.divmod(krs, k, rs);
    g.by_S.divmod(rs, r, s);
    g.by_HW.divmod(nhw, n, hw);
    g.by_W.divmod(hw, h, w);
    const int hp = h + g.pad - r, wq = w + g.pad - s;
    if (hp < 0 || wq < 0) return T(0);  // DivMod takes non-negative numerators only
    int p, p_rest, q, q_rest;
    g.by_stride.divmod(hp, p, p_rest);
    g.by_stride.divmod(wq, q, q_rest);
    return (p_rest == 0 && q_rest == 0 && p < g.P && q < g.Q) ? dy[((n * g.K + k) * g.P + p) * g.Q + q] : T(0);
  }
};

// dx[n, c, h, w] = acc
template <class T>
struct InputGrad {
  T* dx;
  ConvGeometry g;
  __device__ void operator()(int c, int nhw, T acc) const {
    int n, hw;
    g.by_HW.divmod(nhw, n, hw);
    dx[(n * g.C + c) * g.HW + hw] = acc;
  }
};

// ---- dw = dy (K x NPQ) . im2col(x)^T (NPQ x CRS) ---------------------------------------------

// A(k, npq) = dy[n, k, p, q]
template <class T>
struct OutputGradRows {
  static constexpr bool k_contiguous = true;  // consecutive (p, q) of one image are adjacent
  const T* dy;
  ConvGeometry g;
  __device__ T operator()(int k, int npq) const {
    int n, pq;
    g.by_PQ.divmod(npq, n, pq);
    return dy[(n * g.K + k) * g.PQ + pq];
  }
};

// B(npq, crs) = im2col(x) transposed
template <class T>
struct ImageWindowsTransposed {
  static constexpr bool k_contiguous = true;  // consecutive output pixels read consecutive q
  const T* x;
  ConvGeometry g;
  __device__ T operator()(int npq, int crs) const { return im2col(x, g, crs, npq); }
};

// dw[k, crs] = acc
template <class T>
struct FilterGrad {
  T* dw;
  int CRS;
  __device__ void operator()(int k, int crs, T acc) const { dw[k * CRS + crs] = acc; }
};

}  // namespace

template <class T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& s, bool relu_out, Stream st) {
  const ConvGeometry g(s);
  gemm<T>(FilterRows<T>{w, g.CRS}, ImageWindows<T>{x, g}, BiasedOutput<T>{y, b, g, relu_out}, s.K,
          s.N * s.P * s.Q, s.C * s.R * s.S, as_cuda_stream(st), "conv2d_forward");
}

template <class T>
void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const ConvShape& s,
                     Stream st) {
  const ConvGeometry g(s);
  const cudaStream_t stream = as_cuda_stream(st);
  if (dx != nullptr)  // the first layer needs no input gradient
    gemm<T>(FilterColumns<T>{w, g}, OutputGradWindows<T>{dy, g}, InputGrad<T>{dx, g}, s.C,
            s.N * s.H * s.W, s.K * s.R * s.S, stream, "conv2d_backward (dx)");
  gemm<T>(OutputGradRows<T>{dy, g}, ImageWindowsTransposed<T>{x, g}, FilterGrad<T>{dw, g.CRS}, s.K,
          s.C * s.R * s.S, s.N * s.P * s.Q, stream, "conv2d_backward (dw)");
  channel_sum(dy, db, s.N, s.K, s.P * s.Q, stream, "conv2d_backward (db)");
}

template void conv2d_forward<float>(const float*, const float*, const float*, float*,
                                    const ConvShape&, bool, Stream);
template void conv2d_forward<double>(const double*, const double*, const double*, double*,
                                     const ConvShape&, bool, Stream);
template void conv2d_backward<float>(const float*, const float*, const float*, float*, float*,
                                     float*, const ConvShape&, Stream);
template void conv2d_backward<double>(const double*, const double*, const double*, double*,
                                      double*, double*, const ConvShape&, Stream);

}  // namespace pyregnet::cuda
