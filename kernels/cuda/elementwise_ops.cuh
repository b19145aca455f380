// The elementwise ops of the CUDA backend, each a function of its op as a template argument.
//
// Why it is shaped so: kernels/cpu/elementwise.cpp defines what each op computes; these are
// the same expressions, term for term and in the same compute type (acc_type: f32 for f16 and
// bf16), so that the two backends agree up to the last bits of the math library (CUDA's expf,
// tanhf, powf ... are within 1-2 ulp, not glibc's). The op is a template argument resolved by
// `if constexpr`, so each kernel holds one op and no per-element switch. Which dtypes an op
// takes is the CPU's: every op on the floats; neg, abs, relu, sign, square and logical_not
// (unary) and every binary op but gelu_backward on the integers and bool.
// Only precise CUDA math is used (expf, never __expf); the build does not use -use_fast_math.
#pragma once

#include <cstdint>
#include <type_traits>

#include "engine/backend.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

// ---- precise math by compute type ----

__device__ __forceinline__ float math_exp(float x) { return expf(x); }
__device__ __forceinline__ double math_exp(double x) { return exp(x); }
__device__ __forceinline__ float math_log(float x) { return logf(x); }
__device__ __forceinline__ double math_log(double x) { return log(x); }
__device__ __forceinline__ float math_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double math_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float math_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double math_abs(double x) { return fabs(x); }
__device__ __forceinline__ float math_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double math_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float math_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double math_pow(double a, double b) { return pow(a, b); }

inline constexpr double kSqrt2OverPi = 0.7978845608028654;
inline constexpr double kGeluCoeff = 0.044715;

// ---- which dtypes an op takes (the CPU's rules) ----

constexpr bool unary_takes_integers(UnaryOp op) {
  return op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::relu || op == UnaryOp::sign ||
         op == UnaryOp::square || op == UnaryOp::logical_not;
}
constexpr bool binary_takes_integers(BinaryOp op) { return op != BinaryOp::gelu_backward; }
constexpr bool is_comparison_op(BinaryOp op) {
  return op == BinaryOp::eq || op == BinaryOp::ne || op == BinaryOp::lt || op == BinaryOp::le || op == BinaryOp::gt ||
         op == BinaryOp::ge;
}

// ---- unary ----

// x in the compute type C (float, double, or the integer / bool type itself).
template <UnaryOp K, typename C>
__device__ __forceinline__ C unary_op(C x) {
  constexpr bool kFloat = std::is_floating_point_v<C>;
  static_assert(kFloat || unary_takes_integers(K), "op not defined for integer dtypes");
  if constexpr (K == UnaryOp::neg) {
    return static_cast<C>(-x);
  } else if constexpr (K == UnaryOp::exp) {
    return math_exp(x);
  } else if constexpr (K == UnaryOp::log) {
    return math_log(x);
  } else if constexpr (K == UnaryOp::sqrt) {
    return math_sqrt(x);
  } else if constexpr (K == UnaryOp::abs) {
    if constexpr (kFloat) return math_abs(x);  // clears the sign of -0 and NaN, like std::abs
    else if constexpr (std::is_signed_v<C>) return x < C(0) ? static_cast<C>(-x) : x;
    else return x;  // u8, bool
  } else if constexpr (K == UnaryOp::relu) {
    return x > C(0) ? x : C(0);  // NaN -> 0, as on the CPU
  } else if constexpr (K == UnaryOp::gelu) {
    const C inner = C(kSqrt2OverPi) * (x + C(kGeluCoeff) * x * x * x);
    return C(0.5) * x * (C(1) + math_tanh(inner));
  } else if constexpr (K == UnaryOp::tanh) {
    return math_tanh(x);
  } else if constexpr (K == UnaryOp::sigmoid) {
    return C(1) / (C(1) + math_exp(-x));
  } else if constexpr (K == UnaryOp::sign) {
    if constexpr (std::is_signed_v<C>) return x > C(0) ? C(1) : (x < C(0) ? static_cast<C>(-1) : C(0));
    else return x > C(0) ? C(1) : C(0);  // u8, bool: never negative
  } else if constexpr (K == UnaryOp::reciprocal) {
    return C(1) / x;
  } else if constexpr (K == UnaryOp::square) {
    return static_cast<C>(x * x);
  } else {
    static_assert(K == UnaryOp::logical_not, "every UnaryOp has a branch above");
    return x == C(0) ? C(1) : C(0);
  }
}

// ---- binary ----

// Integer power, exact where the result fits (the CPU goes through double pow and truncates,
// which is exact up to 2^53); wraps like two's complement past the type's range. A negative
// exponent gives 1 / a^-b truncated: 1 for a == 1, +-1 for a == -1, and 0 otherwise (also for
// a == 0, where the CPU converts an infinity: undefined behaviour in C++).
template <typename C>
__device__ __forceinline__ C integer_pow(C a, C b) {
  if constexpr (std::is_same_v<C, bool>) {
    return b ? a : true;
  } else {
    using U = std::make_unsigned_t<C>;
    if constexpr (std::is_signed_v<C>) {
      if (b < C(0)) return a == C(1) ? C(1) : (a == C(-1) ? ((b & C(1)) ? C(-1) : C(1)) : C(0));
    }
    U base = static_cast<U>(a), result = 1, e = static_cast<U>(b);
    while (e != 0) {
      if (e & 1u) result = static_cast<U>(result * base);
      base = static_cast<U>(base * base);
      e = static_cast<U>(e >> 1);
    }
    return static_cast<C>(result);
  }
}

template <BinaryOp K, typename C>
__device__ __forceinline__ C binary_op(C a, C b) {
  constexpr bool kFloat = std::is_floating_point_v<C>;
  static_assert(!is_comparison_op(K), "comparisons go through compare_op");
  static_assert(kFloat || binary_takes_integers(K), "op not defined for integer dtypes");
  if constexpr (K == BinaryOp::add) {
    return static_cast<C>(a + b);
  } else if constexpr (K == BinaryOp::sub) {
    return static_cast<C>(a - b);
  } else if constexpr (K == BinaryOp::mul) {
    return static_cast<C>(a * b);
  } else if constexpr (K == BinaryOp::div) {
    if constexpr (kFloat) return a / b;
    else return b == C(0) ? C(0) : static_cast<C>(a / b);  // the CPU's rule: x / 0 = 0
  } else if constexpr (K == BinaryOp::pow) {
    if constexpr (kFloat) return math_pow(a, b);
    else return integer_pow(a, b);
  } else if constexpr (K == BinaryOp::maximum) {
    if constexpr (kFloat) {
      if (isnan(a) || isnan(b)) return a + b;  // NaN propagates
    }
    return a > b ? a : b;
  } else if constexpr (K == BinaryOp::minimum) {
    if constexpr (kFloat) {
      if (isnan(a) || isnan(b)) return a + b;
    }
    return a < b ? a : b;
  } else if constexpr (K == BinaryOp::relu_backward) {
    return b > C(0) ? a : C(0);  // a = grad, b = x
  } else {
    static_assert(K == BinaryOp::gelu_backward, "every BinaryOp has a branch above");
    const C x = b;  // a = grad
    const C inner = C(kSqrt2OverPi) * (x + C(kGeluCoeff) * x * x * x);
    const C t = math_tanh(inner);
    const C dinner = C(kSqrt2OverPi) * (C(1) + C(3 * kGeluCoeff) * x * x);
    return a * (C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * dinner);
  }
}

template <BinaryOp K, typename C>
__device__ __forceinline__ bool compare_op(C a, C b) {
  static_assert(is_comparison_op(K), "not a comparison");
  if constexpr (K == BinaryOp::eq) return a == b;
  else if constexpr (K == BinaryOp::ne) return a != b;
  else if constexpr (K == BinaryOp::lt) return a < b;
  else if constexpr (K == BinaryOp::le) return a <= b;
  else if constexpr (K == BinaryOp::gt) return a > b;
  else return a >= b;
}

// ---- dtype-free dispatch ----

// For kernels that only move elements (a same-dtype copy, fill, where): f(TypeTag<B>) with B
// the unsigned integer of the element's size, so that they exist once per size, not per dtype.
template <typename F>
decltype(auto) dispatch_bits(size_t element_size, F&& f) {
  switch (element_size) {
    case 1: return f(TypeTag<uint8_t>{});
    case 2: return f(TypeTag<uint16_t>{});
    case 4: return f(TypeTag<uint32_t>{});
    case 8: return f(TypeTag<uint64_t>{});
    default: break;
  }
  throw DTypeError(str_cat("dispatch_bits: no element type of ", element_size, " bytes"));
}

}  // namespace headroom::cuda
