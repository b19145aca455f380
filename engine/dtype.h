// DTypes and the two 16-bit float formats.
//
// f16 and bf16 are stored natively (two bytes an element) so that memory figures are real; on
// the CPU every op converts them to f32, computes, and rounds back (round to nearest even).
// dispatch_dtype() turns a runtime DType into a compile-time type for kernels.
//
// Both conversions live here, inline, because every CPU kernel calls them once an element in its
// inner loop: an out-of-line call there made f16 2-5x slower than bf16. Half uses the F16C
// instructions where the compiler targets them (-mf16c), else a branch-free integer path that
// GCC vectorises; both round to nearest even and agree bit for bit with the old out-of-line code
// (tests/engine/dtype_test.cpp).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__F16C__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#define HEADROOM_HALF_F16C 1
#endif

#include "engine/error.h"

namespace headroom {

enum class DType : uint8_t { f32, f64, f16, bf16, i32, i64, u8, boolean };
inline constexpr int kNumDTypes = 8;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);  // throws DTypeError on an unknown name
bool is_floating(DType dtype);
bool is_integral(DType dtype);  // integers and bool
inline std::ostream& operator<<(std::ostream& os, DType d) { return os << dtype_name(d); }

// The dtype of a binary op's result: floats beat integers, the wider float wins, f16 with bf16
// gives f32, wider integers beat narrower, bool is the narrowest of all.
DType promote_types(DType a, DType b);

namespace detail {
// c ? a : b as bit masks. GCC turns a plain ?: whose one arm does f32 arithmetic into a branch
// (under -ftrapping-math it may not compute a float op the source computes conditionally), and
// a branch stops the kernels' loops over Half from vectorising; masks keep them branch-free.
inline uint32_t select_bits(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}
}  // namespace detail

// IEEE 754 binary16. from_float rounds to nearest even, overflows to inf, keeps subnormals and
// turns every NaN into the quiet NaN 0x7e00 with the input's sign; to_float is exact.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f) : bits(from_float(f)) {}             // NOLINT: implicit like a builtin float type
  operator float() const { return to_float(bits); }  // NOLINT

  static uint16_t from_float(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t absx = x & 0x7fffffffu;
#ifdef HEADROOM_HALF_F16C
    // F16C would keep a NaN's payload; canonicalise it as the software path does.
    const auto h = static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
    return absx > 0x7f800000u ? static_cast<uint16_t>(sign | 0x7e00u) : h;
#else
    // Normal half (and the values that round up to inf): rebias the exponent, add just under half
    // an ulp plus the kept mantissa's low bit (ties to even); a carry runs into the exponent.
    const uint32_t normal = (absx + 0xc8000fffu + ((absx >> 13) & 1u)) >> 13;  // 0xc8000000: (15-127)<<23
    // Subnormal half or zero (|f| < 2^-14): add 0.5f, whose ulp is 2^-24, so the f32 adder rounds
    // to a whole number of half subnormal units (nearest even) held in the low mantissa bits.
    const uint32_t sub = std::bit_cast<uint32_t>(std::bit_cast<float>(absx) + 0.5f) - 0x3f000000u;
    const auto a = static_cast<int32_t>(absx);  // compared signed: SSE2 has no unsigned compares
    uint32_t h = detail::select_bits(a < 0x38800000, sub, normal);
    h = detail::select_bits(a >= 0x47800000, 0x7c00u, h);  // |f| >= 65536: inf (65520.. carry into it)
    h = detail::select_bits(a > 0x7f800000, 0x7e00u, h);   // NaN
    return static_cast<uint16_t>(sign | h);
#endif
  }

  static float to_float(uint16_t h) {
#ifdef HEADROOM_HALF_F16C
    return _cvtsh_ss(h);
#else
    const uint32_t em = (static_cast<uint32_t>(h) & 0x7fffu) << 13;  // exponent and mantissa in f32 place
    const uint32_t exp = em & 0x0f800000u;
    const uint32_t normal = em + 0x38000000u;   // rebias: (127-15)<<23
    const uint32_t inf_nan = em + 0x70000000u;  // exponent 31 -> 255, mantissa (NaN payload) kept
    // Subnormal: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24, exact in f32 (zero gives +0).
    const uint32_t sub = std::bit_cast<uint32_t>(std::bit_cast<float>(em + 0x38800000u) - 6.103515625e-05f);
    uint32_t out = detail::select_bits(exp == 0, sub, normal);
    out = detail::select_bits(exp == 0x0f800000u, inf_nan, out);
    return std::bit_cast<float>(out | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
#endif
  }
};

// bfloat16: the top half of an f32, rounded to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) : bits(from_float(f)) {}  // NOLINT
  operator float() const {                    // NOLINT
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // Branch-free, as Half's integer path, so that loops over it vectorise (a NaN test as an `if`
  // kept every conversion loop scalar).
  static uint16_t from_float(float f) {
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40u;  // NaN stays NaN
    const auto a = static_cast<int32_t>(u & 0x7fffffffu);
    return static_cast<uint16_t>(detail::select_bits(a > 0x7f800000, quiet_nan, rounded));
  }
};

// The type a kernel computes in for a storage type: f32 for the 16-bit floats.
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<Half> {
  using type = float;
};
template <>
struct AccType<BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<Half>() {
  return DType::f16;
}
template <>
constexpr DType dtype_of<BFloat16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::boolean;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// dispatch_dtype(d, [&](auto tag) { using T = typename decltype(tag)::type; ... });
template <typename F>
decltype(auto) dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::f16: return f(TypeTag<Half>{});
    case DType::bf16: return f(TypeTag<BFloat16>{});
    case DType::i32: return f(TypeTag<int32_t>{});
    case DType::i64: return f(TypeTag<int64_t>{});
    case DType::u8: return f(TypeTag<uint8_t>{});
    case DType::boolean: return f(TypeTag<bool>{});
  }
  throw DTypeError("dispatch_dtype: invalid dtype");
}

// Only the four float dtypes; anything else throws a DTypeError naming `op`.
template <typename F>
decltype(auto) dispatch_float(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::f16: return f(TypeTag<Half>{});
    case DType::bf16: return f(TypeTag<BFloat16>{});
    default: break;
  }
  throw DTypeError(str_cat(op, ": expected a floating dtype (f32, f64, f16, bf16), got ", dtype_name(d)));
}

}  // namespace headroom
