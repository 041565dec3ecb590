// PYREGNET_HD marks element math that both backends call: __host__ __device__ under nvcc,
// nothing under a plain C++ compiler. Every formula in csrc/math is written once, here.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PYREGNET_HD __host__ __device__ __forceinline__
#else
#define PYREGNET_HD inline
#endif

namespace pyregnet {

// Overloads that resolve to the right precision on host and device alike.
PYREGNET_HD float hd_sqrt(float x) { return sqrtf(x); }
PYREGNET_HD double hd_sqrt(double x) { return sqrt(x); }
PYREGNET_HD float hd_exp(float x) { return expf(x); }
PYREGNET_HD double hd_exp(double x) { return exp(x); }
PYREGNET_HD float hd_log(float x) { return logf(x); }
PYREGNET_HD double hd_log(double x) { return log(x); }
PYREGNET_HD float hd_abs(float x) { return fabsf(x); }
PYREGNET_HD double hd_abs(double x) { return fabs(x); }
template <class T>
PYREGNET_HD bool hd_isnan(T x) { return x != x; }

}  // namespace pyregnet
