// pybind11 module pyregnet._core: argument checks, then dispatch on the arrays' device and
// dtype; nothing else. NumPy arrays run on the CPU backend, CUDA arrays on the CUDA backend on
// CuPy's current stream. Every check names the op and the argument (core/arrays.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/arrays.h"
#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "cpu/gemm.h"
#include "math/int_array.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace pyregnet;

namespace {

// Runs fn<T>(args...) on the call's backend for its dtype, without the GIL; on the CPU in the
// op's floating-point mode (cpu/fp_mode.h: float32 flushes subnormals in a flushing build).
#define PYREGNET_RUN_CPU(call, fn, ...)                     \
  [&] {                                                     \
    const cpu::OpMode mode((call).dtype() == DType::f32);   \
    return cpu::fn(__VA_ARGS__);                            \
  }()
#ifdef PYREGNET_WITH_CUDA
#define PYREGNET_RUN(call, fn, ...)                                                     \
  [&] {                                                                                 \
    py::gil_scoped_release nogil;                                                       \
    return (call).on_cuda() ? cuda::fn(__VA_ARGS__, (call).stream())                    \
                            : PYREGNET_RUN_CPU(call, fn, __VA_ARGS__);                  \
  }()
#else
#define PYREGNET_RUN(call, fn, ...)                  \
  [&] {                                              \
    py::gil_scoped_release nogil;                    \
    return PYREGNET_RUN_CPU(call, fn, __VA_ARGS__);  \
  }()
#endif

// Calls body(T{}) with T = float or double, the call's dtype.
template <class Body>
auto by_dtype(const Call& call, Body&& body) {
  return call.dtype() == DType::f32 ? body(float{}) : body(double{});
}

bool flag(Call& call, py::handle value, const char* name) {
  if (!PyBool_Check(value.ptr())) call.type_error(std::string(name) + ": expected True or False but got " + std::string(py::repr(value)));
  return value.cast<bool>();
}

// A result array shares no memory with the arguments the op reads.
void separate(Call& call, const Array& out, std::initializer_list<const Array*> inputs) {
  for (const Array* in : inputs) call.disjoint(*in, out);
}

// Elementwise ops may write in place: `out` is the input itself, or separate from it.
void same_or_separate(Call& call, const Array& out, const Array& in) {
  if (out.data != in.data) call.disjoint(in, out);
}

double* accumulator_ptr(const Array& a) { return static_cast<double*>(a.data); }

// The output extent of a filter `filter` sliding over `extent` + 2*pad in steps of `stride`:
// floor((extent + 2*pad - filter) / stride) + 1, < 1 when the filter does not fit.
int64_t conv_output_size(int64_t extent, int64_t filter, int64_t pad, int64_t stride) {
  const int64_t room = extent + 2 * pad - filter;
  return (room >= 0 ? room / stride : -((-room + stride - 1) / stride)) + 1;
}

// The op's stride: an integer in [1, 2^31).
int64_t conv_stride(Call& call, py::handle stride_) {
  const int64_t stride = call.integer(stride_, "stride", 1, ">= 1");
  if (stride > INT32_MAX) call.value_error("stride: expected an integer in [1, 2^31) but got " + std::to_string(stride));
  return stride;
}

ConvShape conv_shape(Call& call, const Array& x, const Array& w, int64_t padding, int64_t stride) {
  call.ndim(x, 4, "(N, C, H, W)");
  call.ndim(w, 4, "(K, C, R, S)");
  call.positive_dims(x, "(N, C, H, W)");
  call.positive_dims(w, "(K, C, R, S)");
  call.dim_equals(w, 1, x.dim(1), "C, the input channels of x");
  if (padding > INT32_MAX) call.value_error("padding: expected an integer in [0, 2^31) but got " + std::to_string(padding));
  // The CUDA kernels form input coordinates p*stride + r - pad and h + pad - r in 32 bits, which
  // stay below the padded extent.
  const int64_t padded_h = x.dim(2) + 2 * padding, padded_w = x.dim(3) + 2 * padding;
  if (padded_h > INT32_MAX || padded_w > INT32_MAX)
    call.value_error("padding: expected a padded input (H + 2*padding, W + 2*padding) under 2^31 but got (" +
                     std::to_string(padded_h) + ", " + std::to_string(padded_w) + ")");
  ConvShape s{x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(2), w.dim(3), padding, stride, 0, 0};
  s.P = conv_output_size(s.H, s.R, padding, stride);
  s.Q = conv_output_size(s.W, s.S, padding, stride);
  if (s.P < 1 || s.Q < 1)
    call.value_error("w: expected a filter no larger than the padded input (" + std::to_string(s.H + 2 * padding) +
                     ", " + std::to_string(s.W + 2 * padding) + ") but got R, S = " + std::to_string(s.R) + ", " +
                     std::to_string(s.S) + ": the output size would be " + std::to_string(s.P) + " x " + std::to_string(s.Q));
  call.fits_int32(x);
  call.fits_int32(w);
  call.output_fits_int32({s.N, s.K, s.P, s.Q}, "(N, K, P, Q)", "padding");
  return s;
}

PoolShape pool_shape(Call& call, const Array& x) {
  call.ndim(x, 4, "(N, C, H, W)");
  call.positive_dims(x, "(N, C, H, W)");
  if (x.dim(2) < 2 || x.dim(3) < 2)
    call.value_error(x.name + ": expected H and W >= 2 for a 2x2 window but got shape " + shape_str(x.shape) +
                     ": the output size would be 0");
  call.fits_int32(x);  // the backward pass indexes x's elements; the output is smaller
  return PoolShape{x.dim(0), x.dim(1), x.dim(2), x.dim(3), x.dim(2) / 2, x.dim(3) / 2};
}

DenseShape dense_shape(Call& call, const Array& x, const Array& w) {
  call.ndim(x, 2, "(N, in)");
  call.ndim(w, 2, "(out, in)");
  call.positive_dims(x, "(N, in)");
  call.positive_dims(w, "(out, in)");
  call.dim_equals(w, 1, x.dim(1), "in, the features of x");
  call.fits_int32(x);
  call.fits_int32(w);
  call.output_fits_int32({x.dim(0), w.dim(0)}, "(N, out)", w.name);
  return DenseShape{x.dim(0), x.dim(1), w.dim(0)};
}

py::object conv2d_forward(py::handle x_, py::handle w_, py::handle b_, py::handle padding_, py::handle stride_,
                          py::handle relu_, py::handle out_) {
  Call call("conv2d_forward");
  Array x = call.array(x_, "x"), w = call.array(w_, "w"), b = call.array(b_, "b");
  call.floats({&x, &w, &b});
  const int64_t padding = call.integer(padding_, "padding", 0, ">= 0");
  const ConvShape s = conv_shape(call, x, w, padding, conv_stride(call, stride_));
  call.ndim(b, 1, "(K,)");
  call.dim_equals(b, 0, s.K, "K, the output channels of w");
  const bool relu = flag(call, relu_, "relu");
  Array y = call.output(out_, {s.N, s.K, s.P, s.Q}, "out");
  separate(call, y, {&x, &w, &b});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, conv2d_forward<T>, x.ptr<T>(), w.ptr<T>(), b.ptr<T>(), y.ptr<T>(), s, relu);
  });
  return y.owner;
}

py::tuple conv2d_backward(py::handle x_, py::handle w_, py::handle dy_, py::handle padding_, py::handle stride_,
                          py::handle input_grad_, py::handle dx_, py::handle dw_, py::handle db_) {
  Call call("conv2d_backward");
  Array x = call.array(x_, "x"), w = call.array(w_, "w"), dy = call.array(dy_, "dy");
  call.floats({&x, &w, &dy});
  const int64_t padding = call.integer(padding_, "padding", 0, ">= 0");
  const ConvShape s = conv_shape(call, x, w, padding, conv_stride(call, stride_));
  call.ndim(dy, 4, "(N, K, P, Q)");
  if (dy.shape != std::vector<int64_t>{s.N, s.K, s.P, s.Q})
    call.value_error("dy: expected the output shape (N, K, P, Q) = " + shape_str({s.N, s.K, s.P, s.Q}) + " but got " +
                     shape_str(dy.shape));
  const bool input_grad = flag(call, input_grad_, "input_grad");
  if (!input_grad && !dx_.is_none()) call.value_error("dx: expected None when input_grad is False");
  Array dw = call.output(dw_, w.shape, "dw"), db = call.output(db_, {s.K}, "db");
  Array dx = input_grad ? call.output(dx_, x.shape, "dx") : Array{};
  separate(call, dw, {&x, &w, &dy});
  separate(call, db, {&x, &w, &dy, &dw});
  if (input_grad) separate(call, dx, {&x, &w, &dy, &dw, &db});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, conv2d_backward<T>, x.ptr<T>(), w.ptr<T>(), dy.ptr<T>(), dx.ptr<T>(), dw.ptr<T>(),
                 db.ptr<T>(), s);
  });
  return py::make_tuple(input_grad ? dx.owner : py::object(py::none()), dw.owner, db.owner);
}

// The window argmax of max-pooling, uint8 (N, C, P, Q): an array the forward pass writes
// (`written`) or the backward pass reads; None gives an Array without data.
Array pool_argmax(Call& call, py::handle argmax, const PoolShape& s, bool written) {
  if (argmax.is_none()) return Array{};
  const std::vector<int64_t> shape{s.N, s.C, s.P, s.Q};
  if (written) return call.output(argmax, shape, "argmax", "uint8");
  Array a = call.array(argmax, "argmax");
  call.bytes(a);
  if (a.shape != shape) call.value_error("argmax: expected shape " + shape_str(shape) + " but got " + shape_str(a.shape));
  return a;
}

py::object maxpool2d_forward(py::handle x_, py::handle out_, py::handle argmax_) {
  Call call("maxpool2d_forward");
  Array x = call.array(x_, "x");
  call.floats({&x});
  const PoolShape s = pool_shape(call, x);
  Array y = call.output(out_, {s.N, s.C, s.P, s.Q}, "out");
  separate(call, y, {&x});
  Array argmax = pool_argmax(call, argmax_, s, true);
  if (argmax.data != nullptr) separate(call, argmax, {&x, &y});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, maxpool2d_forward<T>, x.ptr<T>(), y.ptr<T>(), argmax.ptr<uint8_t>(), s);
  });
  return y.owner;
}

py::object maxpool2d_backward(py::handle x_, py::handle dy_, py::handle out_, py::handle argmax_,
                              py::handle relu_y_) {
  Call call("maxpool2d_backward");
  Array x = call.array(x_, "x"), dy = call.array(dy_, "dy");
  Array relu_y = relu_y_.is_none() ? Array{} : call.array(relu_y_, "relu_y");
  if (relu_y.data != nullptr) call.floats({&x, &dy, &relu_y});
  else call.floats({&x, &dy});
  const PoolShape s = pool_shape(call, x);
  if (dy.shape != std::vector<int64_t>{s.N, s.C, s.P, s.Q})
    call.value_error("dy: expected the output shape (N, C, H//2, W//2) = " + shape_str({s.N, s.C, s.P, s.Q}) +
                     " but got " + shape_str(dy.shape));
  if (relu_y.data != nullptr && relu_y.shape != dy.shape)
    call.value_error("relu_y: expected dy's shape " + shape_str(dy.shape) + " but got " + shape_str(relu_y.shape));
  const Array argmax = pool_argmax(call, argmax_, s, false);
  Array dx = call.output(out_, x.shape, "out");
  // With the argmax given x only gives the shape, so dx may be x itself (the CNN's backward pass
  // writes conv1's input gradient over conv1's output).
  if (argmax.data == nullptr) separate(call, dx, {&x});
  else same_or_separate(call, dx, x);
  separate(call, dx, {&dy});
  if (argmax.data != nullptr) separate(call, dx, {&argmax});
  if (relu_y.data != nullptr) separate(call, dx, {&relu_y});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, maxpool2d_backward<T>, x.ptr<T>(), argmax.ptr<const uint8_t>(), dy.ptr<T>(),
                 relu_y.ptr<const T>(), dx.ptr<T>(), s);
  });
  return dx.owner;
}

py::object relu_forward(py::handle x_, py::handle out_) {
  Call call("relu_forward");
  Array x = call.array(x_, "x");
  call.floats({&x});
  Array y = call.output(out_, x.shape, "out");
  same_or_separate(call, y, x);
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    if (x.numel() > 0) PYREGNET_RUN(call, relu_forward<T>, x.ptr<T>(), y.ptr<T>(), x.numel());
  });
  return y.owner;
}

py::object relu_backward(py::handle y_, py::handle dy_, py::handle out_) {
  Call call("relu_backward");
  Array y = call.array(y_, "y"), dy = call.array(dy_, "dy");
  call.floats({&y, &dy});
  call.same_shape(y, dy);
  Array dx = call.output(out_, y.shape, "out");
  separate(call, dx, {&y});
  same_or_separate(call, dx, dy);
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    if (y.numel() > 0) PYREGNET_RUN(call, relu_backward<T>, y.ptr<T>(), dy.ptr<T>(), dx.ptr<T>(), y.numel());
  });
  return dx.owner;
}

py::object dense_forward(py::handle x_, py::handle w_, py::handle b_, py::handle relu_, py::handle out_) {
  Call call("dense_forward");
  Array x = call.array(x_, "x"), w = call.array(w_, "w"), b = call.array(b_, "b");
  call.floats({&x, &w, &b});
  const DenseShape s = dense_shape(call, x, w);
  call.ndim(b, 1, "(out,)");
  call.dim_equals(b, 0, s.out, "out, the rows of w");
  const bool relu = flag(call, relu_, "relu");
  Array y = call.output(out_, {s.N, s.out}, "out");
  separate(call, y, {&x, &w, &b});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, dense_forward<T>, x.ptr<T>(), w.ptr<T>(), b.ptr<T>(), y.ptr<T>(), s, relu);
  });
  return y.owner;
}

py::tuple dense_backward(py::handle x_, py::handle w_, py::handle dy_, py::handle dx_, py::handle dw_,
                         py::handle db_) {
  Call call("dense_backward");
  Array x = call.array(x_, "x"), w = call.array(w_, "w"), dy = call.array(dy_, "dy");
  call.floats({&x, &w, &dy});
  const DenseShape s = dense_shape(call, x, w);
  if (dy.shape != std::vector<int64_t>{s.N, s.out})
    call.value_error("dy: expected the output shape (N, out) = " + shape_str({s.N, s.out}) + " but got " +
                     shape_str(dy.shape));
  Array dx = call.output(dx_, x.shape, "dx"), dw = call.output(dw_, w.shape, "dw"), db = call.output(db_, {s.out}, "db");
  separate(call, dx, {&x, &w, &dy});
  separate(call, dw, {&x, &w, &dy, &dx});
  separate(call, db, {&x, &w, &dy, &dx, &dw});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, dense_backward<T>, x.ptr<T>(), w.ptr<T>(), dy.ptr<T>(), dx.ptr<T>(), dw.ptr<T>(),
                 db.ptr<T>(), s);
  });
  return py::make_tuple(dx.owner, dw.owner, db.owner);
}

// An activation (N, C, H, W) as the per-channel ops see it.
ChannelShape channel_shape(Call& call, const Array& x) {
  call.ndim(x, 4, "(N, C, H, W)");
  call.positive_dims(x, "(N, C, H, W)");
  call.fits_int32(x);
  return ChannelShape{x.dim(0), x.dim(1), x.dim(2) * x.dim(3)};
}

// A per-channel vector (C,) of an op over x.
void channel_vector(Call& call, const Array& v, int64_t C) {
  call.ndim(v, 1, "(C,)");
  call.dim_equals(v, 0, C, "C, the channels of x");
}

double batchnorm_momentum(Call& call, py::handle momentum_) {
  const double momentum = call.real(momentum_, "momentum");
  if (!(momentum >= 0.0 && momentum <= 1.0))
    call.value_error("momentum: expected a number in [0, 1] but got " + std::to_string(momentum));
  return momentum;
}

double batchnorm_eps(Call& call, py::handle eps_) {
  const double eps = call.real(eps_, "eps");
  if (!(eps > 0.0) || std::isinf(eps))
    call.value_error("eps: expected a finite number > 0 but got " + std::to_string(eps));
  return eps;
}

py::tuple batchnorm_forward(py::handle x_, py::handle gamma_, py::handle beta_, py::handle running_mean_,
                            py::handle running_var_, py::handle training_, py::handle momentum_, py::handle eps_,
                            py::handle out_, py::handle mean_, py::handle invstd_) {
  Call call("batchnorm_forward");
  Array x = call.array(x_, "x"), gamma = call.array(gamma_, "gamma"), beta = call.array(beta_, "beta"),
        running_mean = call.array(running_mean_, "running_mean"), running_var = call.array(running_var_, "running_var");
  call.floats({&x, &gamma, &beta, &running_mean, &running_var});
  const ChannelShape s = channel_shape(call, x);
  for (const Array* v : {&gamma, &beta, &running_mean, &running_var}) channel_vector(call, *v, s.C);
  const bool training = flag(call, training_, "training");
  const BatchNormParams p{training, batchnorm_momentum(call, momentum_), batchnorm_eps(call, eps_)};
  if (training) {
    if (s.N * s.HW < 2)
      call.value_error("x: expected more than one value per channel in training mode (N * H * W > 1) but got shape " +
                       shape_str(x.shape));
    call.writable(running_mean);
    call.writable(running_var);
    separate(call, running_mean, {&x, &gamma, &beta});
    separate(call, running_var, {&x, &gamma, &beta, &running_mean});
  }
  Array y = call.output(out_, x.shape, "out");
  separate(call, y, {&x, &gamma, &beta, &running_mean, &running_var});
  Array mean = call.output(mean_, {s.C}, "mean");
  separate(call, mean, {&x, &gamma, &beta, &running_mean, &running_var, &y});
  Array invstd = call.output(invstd_, {s.C}, "invstd");
  separate(call, invstd, {&x, &gamma, &beta, &running_mean, &running_var, &y, &mean});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, batchnorm_forward<T>, x.ptr<T>(), gamma.ptr<T>(), beta.ptr<T>(), running_mean.ptr<T>(),
                 running_var.ptr<T>(), y.ptr<T>(), mean.ptr<T>(), invstd.ptr<T>(), s, p);
  });
  return py::make_tuple(y.owner, mean.owner, invstd.owner);
}

py::tuple batchnorm_backward(py::handle x_, py::handle gamma_, py::handle dy_, py::handle mean_, py::handle invstd_,
                             py::handle training_, py::handle dx_, py::handle dgamma_, py::handle dbeta_) {
  Call call("batchnorm_backward");
  Array x = call.array(x_, "x"), gamma = call.array(gamma_, "gamma"), dy = call.array(dy_, "dy"),
        mean = call.array(mean_, "mean"), invstd = call.array(invstd_, "invstd");
  call.floats({&x, &gamma, &dy, &mean, &invstd});
  const ChannelShape s = channel_shape(call, x);
  call.same_shape(x, dy);
  for (const Array* v : {&gamma, &mean, &invstd}) channel_vector(call, *v, s.C);
  const bool training = flag(call, training_, "training");
  Array dx = call.output(dx_, x.shape, "dx"), dgamma = call.output(dgamma_, {s.C}, "dgamma"),
        dbeta = call.output(dbeta_, {s.C}, "dbeta");
  separate(call, dx, {&x, &gamma, &dy, &mean, &invstd});
  separate(call, dgamma, {&x, &gamma, &dy, &mean, &invstd, &dx});
  separate(call, dbeta, {&x, &gamma, &dy, &mean, &invstd, &dx, &dgamma});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, batchnorm_backward<T>, x.ptr<T>(), gamma.ptr<T>(), dy.ptr<T>(), mean.ptr<T>(), invstd.ptr<T>(),
                 dx.ptr<T>(), dgamma.ptr<T>(), dbeta.ptr<T>(), s, training);
  });
  return py::make_tuple(dx.owner, dgamma.owner, dbeta.owner);
}

py::object global_avgpool_forward(py::handle x_, py::handle out_) {
  Call call("global_avgpool_forward");
  Array x = call.array(x_, "x");
  call.floats({&x});
  const ChannelShape s = channel_shape(call, x);
  Array y = call.output(out_, {s.N, s.C}, "out");
  separate(call, y, {&x});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, global_avgpool_forward<T>, x.ptr<T>(), y.ptr<T>(), s);
  });
  return y.owner;
}

py::object global_avgpool_backward(py::handle x_, py::handle dy_, py::handle out_) {
  Call call("global_avgpool_backward");
  Array x = call.array(x_, "x"), dy = call.array(dy_, "dy");
  call.floats({&x, &dy});
  const ChannelShape s = channel_shape(call, x);
  if (dy.shape != std::vector<int64_t>{s.N, s.C})
    call.value_error("dy: expected the output shape (N, C) = " + shape_str({s.N, s.C}) + " but got " +
                     shape_str(dy.shape));
  Array dx = call.output(out_, x.shape, "out");
  separate(call, dx, {&x, &dy});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, global_avgpool_backward<T>, dy.ptr<T>(), dx.ptr<T>(), s);
  });
  return dx.owner;
}

// The shortcut between x (N, C, H, W) and the block output (N, K, P, Q) that `y` names.
ShortcutShape shortcut_shape(Call& call, const Array& x, const Array& y, py::handle stride_) {
  call.ndim(x, 4, "(N, C, H, W)");
  call.ndim(y, 4, "(N, K, P, Q)");
  call.positive_dims(x, "(N, C, H, W)");
  call.fits_int32(x);
  call.fits_int32(y);
  const int64_t stride = call.integer(stride_, "stride", 1, ">= 1");
  ShortcutShape s{x.dim(0), x.dim(1), x.dim(2), x.dim(3), y.dim(1), 0, 0, stride};
  s.P = (s.H - 1) / stride + 1;
  s.Q = (s.W - 1) / stride + 1;
  if (y.dim(0) != s.N || y.dim(1) < s.C || y.dim(2) != s.P || y.dim(3) != s.Q)
    call.value_error(y.name + ": expected shape (N, K, P, Q) with N = " + std::to_string(s.N) + ", K >= C = " +
                     std::to_string(s.C) + ", (P, Q) = " + shape_str({s.P, s.Q}) + " (x's H, W subsampled by stride " +
                     std::to_string(stride) + ") but got " + shape_str(y.shape));
  return s;
}

py::object residual_add_forward(py::handle main_, py::handle x_, py::handle stride_, py::handle relu_,
                                py::handle out_) {
  Call call("residual_add_forward");
  Array main = call.array(main_, "main"), x = call.array(x_, "x");
  call.floats({&main, &x});
  const ShortcutShape s = shortcut_shape(call, x, main, stride_);
  const bool relu = flag(call, relu_, "relu");
  Array y = call.output(out_, main.shape, "out");
  same_or_separate(call, y, main);
  separate(call, y, {&x});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, residual_add_forward<T>, main.ptr<T>(), x.ptr<T>(), y.ptr<T>(), s, relu);
  });
  return y.owner;
}

py::object residual_add_backward(py::handle dy_, py::handle grad_, py::handle stride_, py::handle out_) {
  Call call("residual_add_backward");
  Array dy = call.array(dy_, "dy"), grad = call.array(grad_, "grad");
  call.floats({&dy, &grad});
  const ShortcutShape s = shortcut_shape(call, grad, dy, stride_);
  Array out = call.output(out_, grad.shape, "out");
  same_or_separate(call, out, grad);
  separate(call, out, {&dy});
  by_dtype(call, [&](auto t) {
    using T = decltype(t);
    PYREGNET_RUN(call, residual_add_backward<T>, dy.ptr<T>(), grad.ptr<T>(), out.ptr<T>(), s);
  });
  return out.owner;
}

py::tuple softmax_cross_entropy(py::handle logits_, py::handle labels_, py::handle dlogits_, py::handle into_) {
  Call call("softmax_cross_entropy");
  Array logits = call.array(logits_, "logits"), labels = call.array(labels_, "labels");
  call.floats({&logits});
  call.integers(labels);
  call.ndim(logits, 2, "(N, classes)");
  call.positive_dims(logits, "(N, classes)");
  call.ndim(labels, 1, "(N,)");
  call.dim_equals(labels, 0, logits.dim(0), "N, the rows of logits");
  const int64_t N = logits.dim(0), classes = logits.dim(1);
  const IntArray lab{labels.data, labels.dtype};
  if (!call.on_cuda()) {  // on the GPU the kernel counts bad labels instead
    for (int64_t i = 0; i < N; ++i) {
      const int64_t l = int_at(lab, i);
      if (l < 0 || l >= classes)
        call.value_error("labels: expected class indices in [0, " + std::to_string(classes) + ") but got " +
                         std::string(py::repr(labels.owner[py::int_(i)])) + " at index " + std::to_string(i));
    }
  }
  Array dlogits = call.output(dlogits_, logits.shape, "dlogits");
  separate(call, dlogits, {&logits, &labels});
  const Array into = call.accumulator(into_, 3, "into");
  if (into.data != nullptr) separate(call, into, {&logits, &labels, &dlogits});
  const XentTotals totals = by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, softmax_cross_entropy<T>, logits.ptr<T>(), lab, dlogits.ptr<T>(), N, classes,
                        accumulator_ptr(into));
  });
  if (into.data != nullptr) return py::make_tuple(py::none(), dlogits.owner, py::none());
  if (totals.bad_labels > 0)
    call.value_error("labels: expected class indices in [0, " + std::to_string(classes) + ") but " +
                     std::to_string(totals.bad_labels) + " of " + std::to_string(N) + " are outside it");
  return py::make_tuple(totals.loss_sum / double(N), dlogits.owner, totals.correct);
}

py::object penalty(py::handle w_, py::handle l1_, py::handle l2_, py::handle into_) {
  Call call("penalty");
  Array w = call.array(w_, "w");
  call.floats({&w});
  const double l1 = call.nonneg_real(l1_, "l1"), l2 = call.nonneg_real(l2_, "l2");
  const Array into = call.accumulator(into_, 1, "into");
  const double value = w.numel() == 0 ? 0.0 : by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, penalty<T>, w.ptr<T>(), w.numel(), l1, l2, accumulator_ptr(into));
  });
  return into.data != nullptr ? py::object(py::none()) : py::object(py::float_(value));
}

// The number of leading elements of `buffer` that get the penalty (None: all).
int64_t penalized_count(Call& call, py::handle penalized, const Array& buffer) {
  const int64_t n = buffer.numel();
  if (penalized.is_none()) return n;
  const std::string range = "in [0, " + buffer.name + ".size";
  const int64_t k = call.integer(penalized, "penalized", 0, (range + "]").c_str());
  if (k > n)
    call.value_error("penalized: expected an integer " + range + " = " + std::to_string(n) + "] but got " +
                     std::to_string(k));
  return k;
}


// What every optimizer update checks and shares: param and grad, the optimizer's state arrays
// (updated in place with param), lr, the penalty and the value options.
struct Update {
  Array param, grad;
  std::vector<Array> state;
  int64_t n, n_penalized;
  double lr;
  PenaltyRule penalty;
  bool with_penalty;
  Array into;
};

Update update_args(Call& call, py::handle param_, py::handle grad_,
                   std::initializer_list<std::pair<py::handle, const char*>> state_, py::handle lr_, py::handle l1_,
                   py::handle l2_, py::handle penalized_, py::handle proximal_, py::handle with_penalty_,
                   py::handle into_) {
  Update u{call.array(param_, "param"), call.array(grad_, "grad"), {}, 0, 0, 0.0, {}, false, {}};
  for (const auto& [handle, name] : state_) u.state.push_back(call.array(handle, name));
  std::vector<Array*> all{&u.param, &u.grad};
  for (Array& a : u.state) all.push_back(&a);
  call.floats(std::vector<const Array*>(all.begin(), all.end()));
  for (Array* a : all) call.same_shape(u.param, *a);
  for (Array* a : all)
    if (a != &u.grad) call.writable(*a);
  // Every pair: param and the state are updated in place, grad is read throughout.
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t j = i + 1; j < all.size(); ++j) call.disjoint(*all[i], *all[j]);
  u.lr = call.real(lr_, "lr");
  if (!(u.lr > 0.0) || std::isinf(u.lr)) call.value_error("lr: expected a finite number > 0 but got " + std::to_string(u.lr));
  u.penalty = {call.nonneg_real(l1_, "l1"), call.nonneg_real(l2_, "l2"), flag(call, proximal_, "proximal")};
  u.n = u.param.numel();
  u.n_penalized = penalized_count(call, penalized_, u.param);
  u.with_penalty = flag(call, with_penalty_, "with_penalty");
  u.into = call.accumulator(into_, 1, "into");
  if (u.into.data != nullptr) {
    if (!u.with_penalty) call.value_error("into: expected None when with_penalty is False (there is no value to add)");
    for (Array* a : all) call.disjoint(*a, u.into);
  }
  return u;
}

py::object update_result(const Update& u, double value) {
  return u.with_penalty && u.into.data == nullptr ? py::object(py::float_(value)) : py::object(py::none());
}

py::object adam_update(py::handle param_, py::handle grad_, py::handle m_, py::handle v_, py::handle step_,
                       py::handle lr_, py::handle beta1_, py::handle beta2_, py::handle eps_, py::handle l1_,
                       py::handle l2_, py::handle penalized_, py::handle proximal_, py::handle with_penalty_,
                       py::handle into_) {
  Call call("adam_update");
  Update u = update_args(call, param_, grad_, {{m_, "m"}, {v_, "v"}}, lr_, l1_, l2_, penalized_, proximal_,
                         with_penalty_, into_);
  const Counter step = call.counter(step_, "step", 1, ">= 1");
  const double beta1 = call.real(beta1_, "beta1"), beta2 = call.real(beta2_, "beta2"), eps = call.real(eps_, "eps");
  if (!(beta1 >= 0.0 && beta1 < 1.0)) call.value_error("beta1: expected a number in [0, 1) but got " + std::to_string(beta1));
  if (!(beta2 >= 0.0 && beta2 < 1.0)) call.value_error("beta2: expected a number in [0, 1) but got " + std::to_string(beta2));
  if (!(eps > 0.0) || std::isinf(eps))
    call.value_error("eps: expected a finite number > 0 but got " + std::to_string(eps));
  const AdamStep s{u.lr, beta1, beta2, eps, u.penalty, step};
  const double value = u.n == 0 ? 0.0 : by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, adam_update<T>, u.param.ptr<T>(), u.grad.ptr<T>(), u.state[0].ptr<T>(),
                        u.state[1].ptr<T>(), u.n, u.n_penalized, s, u.with_penalty, accumulator_ptr(u.into));
  });
  return update_result(u, value);
}

py::object sgd_update(py::handle param_, py::handle grad_, py::handle velocity_, py::handle lr_,
                      py::handle momentum_, py::handle l1_, py::handle l2_, py::handle penalized_,
                      py::handle proximal_, py::handle with_penalty_, py::handle into_) {
  Call call("sgd_update");
  Update u = update_args(call, param_, grad_, {{velocity_, "velocity"}}, lr_, l1_, l2_, penalized_, proximal_,
                         with_penalty_, into_);
  const double momentum = call.real(momentum_, "momentum");
  if (!(momentum >= 0.0 && momentum < 1.0))
    call.value_error("momentum: expected a number in [0, 1) but got " + std::to_string(momentum));
  const SgdStep s{u.lr, momentum, u.penalty};
  const double value = u.n == 0 ? 0.0 : by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, sgd_update<T>, u.param.ptr<T>(), u.grad.ptr<T>(), u.state[0].ptr<T>(), u.n,
                        u.n_penalized, s, u.with_penalty, accumulator_ptr(u.into));
  });
  return update_result(u, value);
}

py::object penalty_gradient(py::handle w_, py::handle grad_, py::handle l1_, py::handle l2_, py::handle penalized_,
                            py::handle with_penalty_, py::handle into_) {
  Call call("penalty_gradient");
  Array w = call.array(w_, "w"), grad = call.array(grad_, "grad");
  call.floats({&w, &grad});
  call.same_shape(w, grad);
  call.writable(grad);
  call.disjoint(w, grad);
  const double l1 = call.nonneg_real(l1_, "l1"), l2 = call.nonneg_real(l2_, "l2");
  const int64_t n_penalized = penalized_count(call, penalized_, w);
  const bool with_penalty = flag(call, with_penalty_, "with_penalty");
  const Array into = call.accumulator(into_, 1, "into");
  if (into.data != nullptr) {
    if (!with_penalty) call.value_error("into: expected None when with_penalty is False (there is no value to add)");
    call.disjoint(grad, into);
  }
  const double value = n_penalized == 0 ? 0.0 : by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, penalty_gradient<T>, w.ptr<T>(), grad.ptr<T>(), n_penalized, l1, l2, with_penalty,
                        accumulator_ptr(into));
  });
  return with_penalty && into.data == nullptr ? py::object(py::float_(value)) : py::object(py::none());
}

int64_t sparsity_count(py::handle w_, py::handle threshold_) {
  Call call("sparsity_count");
  Array w = call.array(w_, "w");
  call.floats({&w});
  const double threshold = call.real(threshold_, "threshold");  // inf counts everything
  if (!(threshold >= 0.0)) call.value_error("threshold: expected a number >= 0 but got " + std::to_string(threshold));
  if (w.numel() == 0) return 0;
  return by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, sparsity_count<T>, w.ptr<T>(), w.numel(), threshold);
  });
}

// The batch size of a gather from `index` at `offset`: out's first dimension when out is given,
// else what is left of index after a constant offset.
int64_t batch_size(Call& call, py::handle out, const Array& index, const Counter& offset) {
  if (!out.is_none()) {
    const Array o = call.array(out, "out");
    if (o.shape.empty()) call.value_error("out: expected an array with a batch dimension but got a 0-d array");
    return o.dim(0);
  }
  if (offset.at != nullptr)
    call.value_error("out: expected an array (it sets the batch size) when offset is an array but got None");
  if (offset.value > index.dim(0))
    call.value_error("offset: expected an integer in [0, " + std::to_string(index.dim(0)) + "] (the length of index) but got " +
                     std::to_string(offset.value));
  return index.dim(0) - offset.value;
}

py::object augment_batch(py::handle images_, py::handle index_, py::handle seed_, py::handle step_,
                         py::handle max_shift_, py::handle flip_, py::handle dtype_, py::handle offset_,
                         py::handle out_, py::handle into_) {
  Call call("augment_batch");
  Array images = call.array(images_, "images"), index = call.array(index_, "index");
  call.bytes(images);
  call.integers(index);
  call.result_dtype(dtype_, "dtype");
  call.ndim(images, 4, "(N, H, W, C)");
  call.positive_dims(images, "(N, H, W, C)");
  call.ndim(index, 1, "(n,)");
  AugmentShape s{images.dim(0), images.dim(1), images.dim(2), images.dim(3), 0, 0, true, 0, {}, {}, index.dim(0)};
  s.seed = uint64_t(call.integer(seed_, "seed", 0, ">= 0"));
  s.step = call.counter(step_, "step", 0, ">= 0");
  s.offset = call.counter(offset_, "offset", 0, ">= 0");
  const int64_t max_shift = call.integer(max_shift_, "max_shift", 0, ">= 0");
  if (max_shift >= std::min(s.H, s.W))
    call.value_error("max_shift: expected a shift smaller than the image (" + std::to_string(std::min(s.H, s.W)) +
                     " pixels) but got " + std::to_string(max_shift));
  s.max_shift = int(max_shift);
  s.flip = flag(call, flip_, "flip");
  s.B = batch_size(call, out_, index, s.offset);
  Array batch = call.output(out_, {s.B, s.C, s.H, s.W}, "out");
  separate(call, batch, {&images, &index});
  const Array into = call.accumulator(into_, 1, "into");
  if (into.data != nullptr) separate(call, into, {&images, &index, &batch});
  const int64_t bad = by_dtype(call, [&](auto t) {
    using T = decltype(t);
    return PYREGNET_RUN(call, augment_batch<T>, images.ptr<uint8_t>(), IntArray{index.data, index.dtype},
                        batch.ptr<T>(), s, accumulator_ptr(into));
  });
  if (bad > 0)
    call.value_error("index: expected sample indices in [0, " + std::to_string(s.N) + ") but " + std::to_string(bad) +
                     " of " + std::to_string(s.B) + " (index[offset:offset + " + std::to_string(s.B) +
                     "]) are outside it or past the end of index");
  return batch.owner;
}

py::object take(py::handle values_, py::handle index_, py::handle offset_, py::handle out_) {
  Call call("take");
  Array values = call.array(values_, "values"), index = call.array(index_, "index");
  call.integers(values);
  call.integers(index);
  call.ndim(values, 1, "(n_values,)");
  call.ndim(index, 1, "(n,)");
  const Counter offset = call.counter(offset_, "offset", 0, ">= 0");
  const int64_t B = batch_size(call, out_, index, offset);
  Array out = call.output(out_, {B}, "out", "int32");
  separate(call, out, {&values, &index});
  {
    const IntArray v{values.data, values.dtype}, i{index.data, index.dtype};
    int32_t* const o = out.ptr<int32_t>();
    PYREGNET_RUN(call, take, v, values.dim(0), i, index.dim(0), offset, o, B);
  }
  return out.owner;
}

// cuda::workspace_info for tests: `stream` is a cudaStream_t as an integer (a CuPy stream's
// .ptr; 0: the legacy default stream). The CPU-only build has no workspace: all zeros.
py::dict workspace_info(uintptr_t stream) {
  py::dict info;
#ifdef PYREGNET_WITH_CUDA
  const cuda::WorkspaceInfo w = cuda::workspace_info(reinterpret_cast<void*>(stream));
#else
  static_cast<void>(stream);
  struct { int64_t arenas = 0, allocations = 0, bytes = 0, captured_leases = 0, capacity = 0; } w;
#endif
  info["arenas"] = w.arenas;
  info["allocations"] = w.allocations;
  info["bytes"] = w.bytes;
  info["captured_leases"] = w.captured_leases;
  info["capacity"] = w.capacity;
  return info;
}

py::dict build_info() {
  py::dict info;
  info["version"] = PYREGNET_VERSION;
  py::list archs;
#ifdef PYREGNET_WITH_CUDA
  info["cuda_compiled"] = true;
  const int devices = cuda::device_count();
  info["cuda_available"] = devices > 0;
  info["cuda_device_count"] = devices;
  info["cuda_runtime_version"] = cuda::runtime_version();
  std::string list = PYREGNET_CUDA_ARCHS;
  for (size_t start = 0; start <= list.size();) {
    const size_t end = std::min(list.find(';', start), list.size());
    if (end > start) archs.append(list.substr(start, end - start));
    start = end + 1;
  }
#else
  info["cuda_compiled"] = false;
  info["cuda_available"] = false;
  info["cuda_device_count"] = 0;
  info["cuda_runtime_version"] = py::none();
#endif
  info["cuda_archs"] = archs;
  // Subnormal float32 values flushed to zero by both backends (PYREGNET_FLUSH_DENORMALS).
  info["flush_denormals"] = cpu::kFlushDenormals;
  // The instruction set the CPU backend was compiled for (-march=native: the building machine's).
  // It is part of a result's identity: the vector width and the compiler's FMA contractions change
  // rounding, so the same seed gives other bits on another instruction set (docs/design.md,
  // Reproducibility).
#if defined(__AVX512F__)
  info["cpu_isa"] = "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
  info["cpu_isa"] = "avx2+fma";
#elif defined(__AVX__)
  info["cpu_isa"] = "avx";
#elif defined(__SSE2__)
  info["cpu_isa"] = "sse2";
#elif defined(__ARM_NEON)
  info["cpu_isa"] = "neon";
#else
  info["cpu_isa"] = "generic";
#endif
  info["cpu_vector_bytes"] = cpu::kVectorBytes;
#ifdef _OPENMP
  info["openmp"] = true;
  info["cpu_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["cpu_threads"] = 1;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyregnet's compiled kernels (CPU backend, and CUDA backend when built with nvcc)";
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("padding"), py::kw_only(),
        py::arg("stride") = 1, py::arg("relu") = false, py::arg("out") = py::none());
  m.def("conv2d_backward", &conv2d_backward, py::arg("x"), py::arg("w"), py::arg("dy"), py::arg("padding"),
        py::kw_only(), py::arg("stride") = 1, py::arg("input_grad") = true, py::arg("dx") = py::none(),
        py::arg("dw") = py::none(), py::arg("db") = py::none());
  m.def("maxpool2d_forward", &maxpool2d_forward, py::arg("x"), py::kw_only(), py::arg("out") = py::none(),
        py::arg("argmax") = py::none());
  m.def("maxpool2d_backward", &maxpool2d_backward, py::arg("x"), py::arg("dy"), py::kw_only(), py::arg("out") = py::none(),
        py::arg("argmax") = py::none(), py::arg("relu_y") = py::none());
  m.def("relu_forward", &relu_forward, py::arg("x"), py::kw_only(), py::arg("out") = py::none());
  m.def("relu_backward", &relu_backward, py::arg("y"), py::arg("dy"), py::kw_only(), py::arg("out") = py::none());
  m.def("dense_forward", &dense_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::kw_only(),
        py::arg("relu") = false, py::arg("out") = py::none());
  m.def("dense_backward", &dense_backward, py::arg("x"), py::arg("w"), py::arg("dy"), py::kw_only(),
        py::arg("dx") = py::none(), py::arg("dw") = py::none(), py::arg("db") = py::none());
  m.def("batchnorm_forward", &batchnorm_forward, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("running_mean"), py::arg("running_var"), py::kw_only(), py::arg("training") = true,
        py::arg("momentum") = 0.1, py::arg("eps") = 1e-5, py::arg("out") = py::none(), py::arg("mean") = py::none(),
        py::arg("invstd") = py::none());
  m.def("batchnorm_backward", &batchnorm_backward, py::arg("x"), py::arg("gamma"), py::arg("dy"), py::arg("mean"),
        py::arg("invstd"), py::kw_only(), py::arg("training") = true, py::arg("dx") = py::none(),
        py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none());
  m.def("global_avgpool_forward", &global_avgpool_forward, py::arg("x"), py::kw_only(), py::arg("out") = py::none());
  m.def("global_avgpool_backward", &global_avgpool_backward, py::arg("x"), py::arg("dy"), py::kw_only(),
        py::arg("out") = py::none());
  m.def("residual_add_forward", &residual_add_forward, py::arg("main"), py::arg("x"), py::arg("stride"),
        py::kw_only(), py::arg("relu") = false, py::arg("out") = py::none());
  m.def("residual_add_backward", &residual_add_backward, py::arg("dy"), py::arg("grad"), py::arg("stride"),
        py::kw_only(), py::arg("out") = py::none());
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"), py::kw_only(),
        py::arg("dlogits") = py::none(), py::arg("into") = py::none());
  m.def("penalty", &penalty, py::arg("w"), py::arg("l1"), py::arg("l2"), py::kw_only(), py::arg("into") = py::none());
  m.def("adam_update", &adam_update, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::kw_only(),
        py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-7,
        py::arg("l1") = 0.0, py::arg("l2") = 0.0, py::arg("penalized") = py::none(), py::arg("proximal") = false,
        py::arg("with_penalty") = false, py::arg("into") = py::none());
  m.def("sgd_update", &sgd_update, py::arg("param"), py::arg("grad"), py::arg("velocity"), py::kw_only(),
        py::arg("lr"), py::arg("momentum") = 0.9, py::arg("l1") = 0.0, py::arg("l2") = 0.0,
        py::arg("penalized") = py::none(), py::arg("proximal") = false, py::arg("with_penalty") = false,
        py::arg("into") = py::none());
  m.def("penalty_gradient", &penalty_gradient, py::arg("w"), py::arg("grad"), py::arg("l1"), py::arg("l2"), py::kw_only(),
        py::arg("penalized") = py::none(), py::arg("with_penalty") = false, py::arg("into") = py::none());
  m.def("sparsity_count", &sparsity_count, py::arg("w"), py::arg("threshold"));
  m.def("augment_batch", &augment_batch, py::arg("images"), py::arg("index"), py::kw_only(), py::arg("seed"),
        py::arg("step"), py::arg("max_shift") = 3, py::arg("flip") = true, py::arg("dtype") = "float32",
        py::arg("offset") = 0, py::arg("out") = py::none(), py::arg("into") = py::none());
  m.def("take", &take, py::arg("values"), py::arg("index"), py::kw_only(), py::arg("offset") = 0,
        py::arg("out") = py::none());
  m.def("build_info", &build_info);
  m.def("workspace_info", &workspace_info, py::arg("stream") = 0);
}
