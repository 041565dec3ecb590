// The binding boundary: what an array argument is (NumPy or __cuda_array_interface__), and the
// checks every op runs on its arguments before any backend sees them. A failed check raises
// TypeError (wrong kind of thing) or ValueError (wrong value), naming the op and the argument:
//   "conv2d_forward: w: expected a 4-d array (K, C, R, S) but got shape (3, 3)".
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "math/shapes.h"

namespace pyregnet {
namespace py = pybind11;

std::string shape_str(const std::vector<int64_t>& shape);
const char* dtype_name(DType dt);
bool is_float(DType dt);
bool is_integer(DType dt);

// One array argument, as the kernels see it: a pointer to contiguous elements of one dtype.
struct Array {
  std::string name;      // the argument's name, for messages
  py::object owner;      // keeps the Python object (and its memory) alive
  void* data = nullptr;
  DType dtype = DType::other;
  std::string dtype_str;  // as Python spells it, for messages
  std::vector<int64_t> shape;
  int64_t itemsize = 0;
  bool on_cuda = false;
  bool writable = true;
  bool contiguous = true;

  int64_t numel() const;
  int64_t nbytes() const { return numel() * itemsize; }
  int64_t dim(size_t i) const { return shape[i]; }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

// The arguments of one call of one op: collects them, checks them as a group, allocates
// outputs on their device and knows the CUDA stream to run on.
class Call {
 public:
  explicit Call(const char* op) : op_(op) {}

  // Reads an argument; TypeError when it is neither a NumPy array nor a CUDA array.
  Array array(py::handle obj, const char* name);

  // Every array given: float32 or float64, all of one dtype, C-contiguous, on one device.
  // Sets the call's device and dtype. Call once, after reading the arrays.
  void floats(std::vector<const Array*> arrays);
  // Integer dtype, C-contiguous, on the call's device (class labels).
  void integers(const Array& a);
  // uint8 images, C-contiguous; sets the call's device.
  void bytes(const Array& a);
  // The dtype of the float results of a call whose inputs are not floats ("float32", "float64").
  void result_dtype(py::handle dtype, const char* name);
  void writable(const Array& a);  // the kernel writes into it
  void disjoint(const Array& a, const Array& b);  // an array written in place shares no byte with another

  void ndim(const Array& a, size_t n, const char* letters);
  void dim_equals(const Array& a, size_t i, int64_t expected, const std::string& what);
  void same_shape(const Array& a, const Array& b);
  void positive_dims(const Array& a, const char* letters);  // no empty dimension
  void fits_int32(const Array& a);  // GEMM kernels index with 32-bit ints
  // The output an op would allocate, `what` naming its letters ("(N, out)"), checked before
  // allocating against the same 32-bit index range; `arg` is the argument blamed.
  void output_fits_int32(const std::vector<int64_t>& shape, const char* what, const std::string& arg);

  // Scalars. Python ints (or objects with __index__) and floats, checked for range.
  int64_t integer(py::handle obj, const char* name, int64_t min_value, const char* expected);
  double real(py::handle obj, const char* name);
  double nonneg_real(py::handle obj, const char* name);  // finite and >= 0 (lambdas, thresholds)

  // A new C-contiguous array of the call's dtype (or `dtype`, as NumPy spells it) on the call's
  // device (NumPy, or CuPy for CUDA calls). A size beyond any address space is a ValueError
  // before anything is allocated; a failed allocation is a MemoryError.
  Array empty(std::vector<int64_t> shape, const char* name, const char* dtype = nullptr);
  // The array a result goes into: a new one when `out` is None, else `out` checked to be what
  // empty() would have made (shape, dtype, device, C-contiguous) and writable. The caller checks
  // that it shares no memory with the inputs.
  Array output(py::handle out, std::vector<int64_t> shape, const char* name, const char* dtype = nullptr);
  // Where an op adds its sums instead of returning them (core/backend.h's `into`): None, or a
  // writable float64 array of `n` elements on the call's device. Array::data is null for None.
  Array accumulator(py::handle obj, int64_t n, const char* name);
  // A step or an offset: an integer >= min_value, or a one-element int64 array on the call's
  // device read by the kernel when it runs (its value is not checked).
  Counter counter(py::handle obj, const char* name, int64_t min_value, const char* expected);

  [[noreturn]] void value_error(const std::string& message) const;
  [[noreturn]] void type_error(const std::string& message) const;

  bool on_cuda() const { return on_cuda_; }
  DType dtype() const { return dtype_; }
  void* stream() const { return stream_; }
  const char* op() const { return op_; }

 private:
  void set_device(const Array& a);
  // Reads obj into `out` when it is a NumPy array or has a __cuda_array_interface__ (read once);
  // false, and `out` untouched, when it is neither.
  bool try_array(py::handle obj, const char* name, Array& out);
  Array numpy_array(py::handle obj, const char* name);
  Array cuda_array(py::handle obj, py::handle interface, const char* name);

  const char* op_;
  bool device_set_ = false;
  bool on_cuda_ = false;
  int cuda_device_ = -1;
  DType dtype_ = DType::other;
  void* stream_ = nullptr;
};

}  // namespace pyregnet
