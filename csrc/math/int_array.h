// Integer arrays of any dtype (labels, indices), read element by element as int64.
#pragma once
#include "math/hd.h"
#include "math/shapes.h"

namespace pyregnet {

// Element i of an integer array of any integer dtype, widened to int64.
PYREGNET_HD int64_t int_at(const IntArray& a, int64_t i) {
  switch (a.dtype) {
    case DType::i8: return static_cast<const int8_t*>(a.data)[i];
    case DType::i16: return static_cast<const int16_t*>(a.data)[i];
    case DType::i32: return static_cast<const int32_t*>(a.data)[i];
    case DType::i64: return static_cast<const int64_t*>(a.data)[i];
    case DType::u8: return static_cast<const uint8_t*>(a.data)[i];
    case DType::u16: return static_cast<const uint16_t*>(a.data)[i];
    case DType::u32: return static_cast<const uint32_t*>(a.data)[i];
    case DType::u64: {
      // Values past int64's range are out of range for any class count: map them to -1.
      const uint64_t u = static_cast<const uint64_t*>(a.data)[i];
      return u > uint64_t(INT64_MAX) ? int64_t(-1) : int64_t(u);
    }
    default: return -1;
  }
}

// The value of a Counter: read from memory when it points there, else its constant.
PYREGNET_HD int64_t read_counter(const Counter& c) { return c.at ? *c.at : c.value; }

// index[position] when position is in [0, n_index) and that entry is in [0, n_samples); else -1.
PYREGNET_HD int64_t sample_at(const IntArray& index, int64_t n_index, int64_t position, int64_t n_samples) {
  if (position < 0 || position >= n_index) return -1;
  const int64_t n = int_at(index, position);
  return n < 0 || n >= n_samples ? int64_t(-1) : n;
}

// values[index[position]] narrowed to int32 (class labels), -1 when anything is out of range.
PYREGNET_HD int32_t take_at(const IntArray& values, int64_t n_values, const IntArray& index, int64_t n_index,
                            int64_t position) {
  const int64_t n = sample_at(index, n_index, position, n_values);
  if (n < 0) return -1;
  const int64_t v = int_at(values, n);
  return v < 0 || v > INT32_MAX ? -1 : int32_t(v);
}

}  // namespace pyregnet
