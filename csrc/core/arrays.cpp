#include "core/arrays.h"

#include <cmath>
#include <limits>
#include <sstream>

#ifdef PYREGNET_WITH_CUDA
#include "core/backend.h"
#endif

namespace pyregnet {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i8: return "int8";
    case DType::i16: return "int16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::u16: return "uint16";
    case DType::u32: return "uint32";
    case DType::u64: return "uint64";
    default: return "other";
  }
}

bool is_float(DType dt) { return dt == DType::f32 || dt == DType::f64; }
bool is_integer(DType dt) { return !is_float(dt) && dt != DType::other; }

int64_t Array::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// The number of elements of `shape`, or -1 when it exceeds `limit` (no overflow on the way).
int64_t numel_up_to(const std::vector<int64_t>& shape, int64_t limit) {
  for (int64_t d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || n > limit / d) return -1;
    n *= d;
  }
  return n;
}

// dtype from NumPy's kind letter and item size; only native byte order counts.
DType dtype_of(char kind, int64_t itemsize, bool native) {
  if (!native && itemsize > 1) return DType::other;
  if (kind == 'f') return itemsize == 4 ? DType::f32 : itemsize == 8 ? DType::f64 : DType::other;
  if (kind == 'i') {
    switch (itemsize) {
      case 1: return DType::i8;
      case 2: return DType::i16;
      case 4: return DType::i32;
      case 8: return DType::i64;
    }
  }
  if (kind == 'u') {
    switch (itemsize) {
      case 1: return DType::u8;
      case 2: return DType::u16;
      case 4: return DType::u32;
      case 8: return DType::u64;
    }
  }
  return DType::other;
}

bool strides_are_c_contiguous(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                              int64_t itemsize) {
  int64_t expected = itemsize;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

py::object cupy_module(const char* op) {
  try {
    return py::module_::import("cupy");
  } catch (py::error_already_set&) {
    throw std::runtime_error(std::string(op) +
                             ": CUDA arrays need CuPy to allocate results and pick the stream "
                             "(pip install cupy-cuda13x)");
  }
}

}  // namespace

namespace {

// numpy.ma.MaskedArray, imported once: an import per array argument was a dictionary lookup and
// an attribute read on every op call. Never freed: it must outlive the interpreter's teardown.
py::handle masked_array_type() {
  static py::object* type = new py::object(py::module_::import("numpy.ma").attr("MaskedArray"));
  return *type;
}

// obj.__cuda_array_interface__, read once (CuPy builds the dict anew on every read), or None when
// obj has no such attribute. Any other error while reading it propagates.
py::object cuda_interface(py::handle obj) {
  PyObject* cai = PyObject_GetAttrString(obj.ptr(), "__cuda_array_interface__");
  if (cai != nullptr) return py::reinterpret_steal<py::object>(cai);
  if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
  PyErr_Clear();
  return py::none();
}

}  // namespace

bool Call::try_array(py::handle obj, const char* name, Array& out) {
  if (!py::isinstance<py::array>(obj)) {
    py::object cai;
    try {
      cai = cuda_interface(obj);
    } catch (py::error_already_set& e) {
      type_error(std::string(name) + ": expected a valid __cuda_array_interface__ (shape, typestr, data) but "
                 "reading it failed: " + e.what());
    }
    if (cai.is_none()) return false;
    out = cuda_array(obj, cai, name);
    return true;
  }
  out = numpy_array(obj, name);
  return true;
}

Array Call::array(py::handle obj, const char* name) {
  Array a;
  if (!try_array(obj, name, a))
    type_error(std::string(name) + ": expected a NumPy array or a CUDA array (CuPy, PyTorch, Numba) but got " +
               type_name(obj));
  return a;
}

Array Call::numpy_array(py::handle obj, const char* name) {
  // A masked array's mask would be ignored silently by a kernel: refuse it.
  if (py::isinstance(obj, masked_array_type()))
    type_error(std::string(name) + ": expected an array without a mask but got a numpy.ma.MaskedArray");
  Array a;
  a.name = name;
  a.owner = py::reinterpret_borrow<py::object>(obj);
  auto arr = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = arr.dtype();
  const char order = dt.attr("byteorder").cast<std::string>()[0];
  a.dtype = dtype_of(dt.kind(), dt.itemsize(), order != '>');
  a.dtype_str = py::str(dt);
  a.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  a.itemsize = dt.itemsize();
  a.data = const_cast<void*>(arr.data());
  a.writable = arr.writeable();
  a.contiguous = (arr.flags() & py::array::c_style) != 0;
  return a;
}

// Reads __cuda_array_interface__ (version 2 or 3): shape, typestr, data = (pointer, read-only),
// strides (None = C-contiguous), mask (must be absent).
Array Call::cuda_array(py::handle obj, py::handle interface, const char* name) {
  Array a;
  a.name = name;
  a.owner = py::reinterpret_borrow<py::object>(obj);
  a.on_cuda = true;
  std::vector<int64_t> strides;
  try {
    py::dict cai = py::reinterpret_borrow<py::object>(interface);
    const std::string typestr = cai["typestr"].cast<std::string>();
    if (typestr.size() < 3 || typestr.find_first_not_of("0123456789", 2) != std::string::npos)
      throw std::invalid_argument("typestr " + typestr);
    a.itemsize = std::stoll(typestr.substr(2));
    a.dtype = dtype_of(typestr[1], a.itemsize, typestr[0] != '>');
    a.dtype_str = (is_float(a.dtype) || is_integer(a.dtype)) ? dtype_name(a.dtype) : typestr;
    for (auto d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
    const auto data = cai["data"].cast<py::tuple>();
    if (data.size() != 2) throw std::invalid_argument("data");
    a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
    a.writable = !data[1].cast<bool>();
    if (cai.contains("strides") && !cai["strides"].is_none())
      for (auto st : cai["strides"].cast<py::tuple>()) strides.push_back(st.cast<int64_t>());
    if (cai.contains("mask") && !cai["mask"].is_none()) a.dtype = DType::other, a.dtype_str = "masked";
  } catch (py::error_already_set& e) {
    type_error(std::string(name) + ": expected a valid __cuda_array_interface__ (shape, typestr, data) but reading it "
               "failed: " + e.what());
  } catch (std::exception& e) {
    type_error(std::string(name) + ": expected a valid __cuda_array_interface__ (shape, typestr, data) but got a "
               "malformed one (" + e.what() + ")");
  }
  if (a.dtype_str == "masked") type_error(std::string(name) + ": expected an array without a mask but got a masked CUDA array");
  if (strides.size() == a.shape.size()) a.contiguous = strides_are_c_contiguous(a.shape, strides, a.itemsize);
  else if (!strides.empty()) type_error(std::string(name) + ": expected as many strides as dimensions in __cuda_array_interface__");
  return a;
}

void Call::set_device(const Array& a) {
  if (!device_set_) {
    device_set_ = true;
    on_cuda_ = a.on_cuda;
    if (!on_cuda_) return;
#ifndef PYREGNET_WITH_CUDA
    throw std::runtime_error(std::string(op_) + ": " + a.name +
                             " is a CUDA array but this pyregnet was built without the CUDA backend "
                             "(no CUDA compiler was found at build time)");
#else
    if (cuda::device_count() == 0)
      throw std::runtime_error(std::string(op_) + ": " + a.name +
                               " is a CUDA array but no usable CUDA GPU or driver was found");
    cuda_device_ = cuda::current_device();
    // Results are allocated by CuPy on its current device and work runs on its current stream.
    py::object cupy = cupy_module(op_);
    stream_ = reinterpret_cast<void*>(cupy.attr("cuda").attr("get_current_stream")().attr("ptr").cast<uintptr_t>());
#endif
  }
  if (a.on_cuda != on_cuda_)
    value_error("expected all arrays on one device but " + a.name + " is " +
                (a.on_cuda ? "a CUDA array" : "a NumPy (CPU) array") + " and the first array is " +
                (on_cuda_ ? "a CUDA array" : "a NumPy (CPU) array"));
#ifdef PYREGNET_WITH_CUDA
  if (on_cuda_ && a.numel() > 0) {
    const int dev = cuda::pointer_device(a.data);
    if (dev != cuda_device_)
      value_error(a.name + ": expected memory on the current CUDA device " + std::to_string(cuda_device_) +
                  " but got " + (dev < 0 ? std::string("memory that is not device memory") : "device " + std::to_string(dev)) +
                  " (select the array's device with `with cupy.cuda.Device(n):`)");
  }
#endif
}

void Call::floats(std::vector<const Array*> arrays) {
  for (const Array* a : arrays) {
    if (!is_float(a->dtype))
      type_error(a->name + ": expected float32 or float64 but got " + a->dtype_str);
    if (dtype_ == DType::other) dtype_ = a->dtype;
    if (a->dtype != dtype_)
      type_error(a->name + ": expected " + dtype_name(dtype_) + " like " + arrays.front()->name +
                 " (all arrays of one call share a dtype) but got " + a->dtype_str);
    if (!a->contiguous)
      value_error(a->name + ": expected a C-contiguous array but got a strided view "
                  "(use numpy.ascontiguousarray or cupy.ascontiguousarray)");
    set_device(*a);
  }
}

void Call::integers(const Array& a) {
  if (!is_integer(a.dtype)) type_error(a.name + ": expected an integer dtype but got " + a.dtype_str);
  if (!a.contiguous) value_error(a.name + ": expected a C-contiguous array but got a strided view");
  set_device(a);
}

void Call::bytes(const Array& a) {
  if (a.dtype != DType::u8) type_error(a.name + ": expected uint8 but got " + a.dtype_str);
  if (!a.contiguous) value_error(a.name + ": expected a C-contiguous array but got a strided view");
  set_device(a);
}

void Call::result_dtype(py::handle dtype, const char* name) {
  std::string spelled;
  try {
    spelled = py::str(py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype)));
  } catch (py::error_already_set&) {
    type_error(std::string(name) + ": expected float32 or float64 but got " + std::string(py::repr(dtype)));
  }
  if (spelled == "float32") dtype_ = DType::f32;
  else if (spelled == "float64") dtype_ = DType::f64;
  else type_error(std::string(name) + ": expected float32 or float64 but got " + spelled);
}

void Call::writable(const Array& a) {
  if (!a.writable) value_error(a.name + ": expected a writable array (it is updated in place) but got a read-only one");
}

void Call::disjoint(const Array& a, const Array& b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.data), b0 = reinterpret_cast<uintptr_t>(b.data);
  if (a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes())
    value_error(b.name + ": expected memory separate from " + a.name + " (one of them is written) but the two overlap");
}

void Call::ndim(const Array& a, size_t n, const char* letters) {
  if (a.shape.size() != n)
    value_error(a.name + ": expected a " + std::to_string(n) + "-d array " + letters + " but got shape " +
                shape_str(a.shape));
}

void Call::dim_equals(const Array& a, size_t i, int64_t expected, const std::string& what) {
  if (a.shape[i] != expected)
    value_error(a.name + ": expected dimension " + std::to_string(i) + " to be " + std::to_string(expected) +
                " (" + what + ") but got shape " + shape_str(a.shape));
}

void Call::same_shape(const Array& a, const Array& b) {
  if (a.shape != b.shape)
    value_error(b.name + ": expected the shape of " + a.name + " " + shape_str(a.shape) + " but got " +
                shape_str(b.shape));
}

void Call::positive_dims(const Array& a, const char* letters) {
  for (int64_t d : a.shape)
    if (d < 1) value_error(a.name + ": expected every dimension of " + letters + " to be >= 1 but got shape " + shape_str(a.shape));
}

void Call::fits_int32(const Array& a) {
  if (a.numel() > std::numeric_limits<int32_t>::max())
    value_error(a.name + ": expected fewer than 2^31 elements but got " + std::to_string(a.numel()));
}

void Call::output_fits_int32(const std::vector<int64_t>& shape, const char* what, const std::string& arg) {
  const int64_t n = numel_up_to(shape, std::numeric_limits<int32_t>::max());
  if (n < 0)
    value_error(arg + ": expected an output " + what + " = " + shape_str(shape) +
                " of fewer than 2^31 elements (the kernels index with 32-bit integers) but it would have more");
}

int64_t Call::integer(py::handle obj, const char* name, int64_t min_value, const char* expected) {
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr()))
    type_error(std::string(name) + ": expected an integer " + expected + " but got " + type_name(obj));
  PyObject* index = PyNumber_Index(obj.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    type_error(std::string(name) + ": expected an integer " + expected + " but its __index__ failed");
  }
  int64_t v;
  try {
    v = py::reinterpret_steal<py::object>(index).cast<int64_t>();
  } catch (py::cast_error&) {
    value_error(std::string(name) + ": expected an integer " + expected + " but got " + std::string(py::repr(obj)));
  }
  if (v < min_value) value_error(std::string(name) + ": expected an integer " + expected + " but got " + std::to_string(v));
  return v;
}

double Call::real(py::handle obj, const char* name) {
  if (PyBool_Check(obj.ptr()) || !(PyFloat_Check(obj.ptr()) || PyIndex_Check(obj.ptr()) ||
                                   py::hasattr(obj, "__float__")) || py::isinstance<py::str>(obj))
    type_error(std::string(name) + ": expected a real number but got " + type_name(obj));
  if (py::isinstance<py::array>(obj)) {
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.ndim() != 0)
      type_error(std::string(name) + ": expected a real number but got an array of shape " +
                 shape_str(std::vector<int64_t>(arr.shape(), arr.shape() + arr.ndim())));
  }
  PyObject* as_float = PyNumber_Float(obj.ptr());
  if (as_float == nullptr) {
    const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
    PyErr_Clear();
    if (overflow) value_error(std::string(name) + ": expected a number within float64's range but got " + std::string(py::repr(obj)).substr(0, 40));
    type_error(std::string(name) + ": expected a real number but converting " + type_name(obj) + " to float failed");
  }
  return py::reinterpret_steal<py::float_>(as_float).cast<double>();
}

double Call::nonneg_real(py::handle obj, const char* name) {
  const double v = real(obj, name);
  if (!(v >= 0.0) || std::isinf(v))
    value_error(std::string(name) + ": expected a finite number >= 0 but got " + std::string(py::repr(py::float_(v))));
  return v;
}

Array Call::empty(std::vector<int64_t> shape, const char* name, const char* dtype) {
  if (dtype == nullptr) dtype = dtype_ == DType::f32 ? "float32" : "float64";
  const py::ssize_t itemsize = py::dtype(dtype).itemsize();
  if (numel_up_to(shape, std::numeric_limits<py::ssize_t>::max() / itemsize) < 0)
    value_error(std::string(name) + ": expected a result that fits in memory but its shape " + shape_str(shape) +
                " of " + dtype + " needs more than 2^63 bytes");
  py::object obj;
  if (!on_cuda_) {
    obj = py::array(py::dtype(dtype), shape);
  } else {
    py::object cupy = cupy_module(op_);
    obj = cupy.attr("empty")(py::tuple(py::cast(shape)), dtype);
  }
  return array(obj, name);
}

Array Call::output(py::handle out, std::vector<int64_t> shape, const char* name, const char* dtype) {
  if (out.is_none()) return empty(std::move(shape), name, dtype);
  Array a;
  if (!try_array(out, name, a)) type_error(std::string(name) + ": expected None or an array but got " + type_name(out));
  const std::string want = dtype != nullptr ? dtype : dtype_name(dtype_);
  if (a.dtype_str != want) type_error(a.name + ": expected " + want + " but got " + a.dtype_str);
  if (!a.contiguous) value_error(a.name + ": expected a C-contiguous array but got a strided view");
  set_device(a);
  writable(a);
  if (a.shape != shape) value_error(a.name + ": expected shape " + shape_str(shape) + " but got " + shape_str(a.shape));
  return a;
}

Array Call::accumulator(py::handle obj, int64_t n, const char* name) {
  if (obj.is_none()) return Array{};
  Array a;
  if (!try_array(obj, name, a)) type_error(std::string(name) + ": expected None or a float64 array but got " + type_name(obj));
  if (a.dtype != DType::f64) type_error(a.name + ": expected float64 but got " + a.dtype_str);
  if (!a.contiguous) value_error(a.name + ": expected a C-contiguous array but got a strided view");
  set_device(a);
  writable(a);
  if (a.shape != std::vector<int64_t>{n})
    value_error(a.name + ": expected shape (" + std::to_string(n) + ",) but got " + shape_str(a.shape));
  return a;
}

Counter Call::counter(py::handle obj, const char* name, int64_t min_value, const char* expected) {
  Array a;
  if (!try_array(obj, name, a)) return Counter{nullptr, integer(obj, name, min_value, expected)};
  if (a.dtype != DType::i64 || a.shape != std::vector<int64_t>{1})
    type_error(a.name + ": expected an integer " + expected + " or an int64 array of shape (1,) but got a " +
               a.dtype_str + " array of shape " + shape_str(a.shape));
  set_device(a);
  return Counter{a.ptr<const int64_t>(), 0};
}

void Call::value_error(const std::string& message) const { throw py::value_error(std::string(op_) + ": " + message); }
void Call::type_error(const std::string& message) const { throw py::type_error(std::string(op_) + ": " + message); }

}  // namespace pyregnet
