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

}  // namespace pyregnet
