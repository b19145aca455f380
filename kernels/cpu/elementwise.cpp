// Elementwise unary and binary ops and where(), for every dtype that the op accepts.
// Floats compute in acc_t (f32 for f16/bf16); integers and bool in their own type.
#include <bit>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCoeff = 0.044715;

// Note [vectorised gelu]: GELU (tanh form) and its backward in f32 are the largest elementwise
// cost of a GPT step on the CPU, and through libm's scalar tanhf they were a quarter of
// gpt-tiny's step. Here they use 1 + tanh(u) = 2 sigmoid(2u), so
//   gelu(x)  = x * s,                          s = 1 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x) = s + 2 x s (1 - s) du/dx,        du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// with an exp written out in plain arithmetic (exp_f32) that GCC vectorises: no cancellation
// in 1 + tanh for negative x, and within a few ulp of the libm form elsewhere. The loops are
// compiled for AVX-512, AVX2 and x86-64 (as Note [vectorised adam]); with no FMA contraction
// (-ffp-contract=off, Note [no contraction] in CMakeLists.txt) each lane computes the scalar
// result, so every width gives the same bits.
// f16/bf16 and f64 keep the generic path (f64: gradcheck's reference precision).

// e^x for float in plain arithmetic: x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor series to
// r^7 (relative error below 1e-8 there), 2^n through the exponent bits. Clamped to
// [-87, 88], where 2^n stays a normal float; NaN stays NaN.
__attribute__((always_inline)) inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;  // two selects, not a nested one: GCC turns each into a blend
  x = x > 88.0f ? 88.0f : x;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + kShift) - kShift;
  float r = x - n * 0.693145751953125f;   // ln 2, high bits (exact product for |n| < 2^9)
  r = r - n * 1.428606765330187045e-06f;  // ln 2, low bits
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 +
                                          r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HR_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HR_VECTOR_CLONES
#endif

HR_VECTOR_CLONES
void gelu_f32(const float* __restrict x, float* __restrict y, int64_t n) {
  constexpr float k0 = 0.7978845608028654f, k1 = 0.044715f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = k0 * (v + k1 * v * v * v);
    y[i] = v / (1.0f + exp_f32(-2.0f * u));
  }
}

HR_VECTOR_CLONES
void gelu_backward_f32(const float* __restrict dy, const float* __restrict x, float* __restrict dx, int64_t n) {
  constexpr float k0 = 0.7978845608028654f, k1 = 0.044715f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = k0 * (v + k1 * v * v * v);
    const float s = 1.0f / (1.0f + exp_f32(-2.0f * u));
    const float du = k0 * (1.0f + 3.0f * k1 * v * v);
    dx[i] = dy[i] * (s + 2.0f * v * s * (1.0f - s) * du);
  }
}

// f16 and bf16 GELU through the f32 loops above, a block at a time in f32 on the stack (in place
// is fine: a block is read before it is written). libm's tanhf and expm1f, which the generic
// path called per element, were a quarter of gpt-tiny-cpu-bf16-fused's step; the results are
// the f32 kernel's rounded once to the 16-bit dtype.
template <typename T>
constexpr bool is_16bit_v = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;
constexpr int64_t k16bitBlock = 256;

template <typename T>
void gelu_16bit(const T* x, T* y, int64_t n) {
  float in[k16bitBlock], out[k16bitBlock];
  for (int64_t i0 = 0; i0 < n; i0 += k16bitBlock) {
    const int64_t m = std::min(k16bitBlock, n - i0);
    for (int64_t i = 0; i < m; ++i) in[i] = static_cast<float>(x[i0 + i]);
    gelu_f32(in, out, m);
    for (int64_t i = 0; i < m; ++i) y[i0 + i] = static_cast<T>(out[i]);
  }
}

template <typename T>
void gelu_backward_16bit(const T* dy, const T* x, T* dx, int64_t n) {
  float d[k16bitBlock], in[k16bitBlock], out[k16bitBlock];
  for (int64_t i0 = 0; i0 < n; i0 += k16bitBlock) {
    const int64_t m = std::min(k16bitBlock, n - i0);
    for (int64_t i = 0; i < m; ++i) {
      d[i] = static_cast<float>(dy[i0 + i]);
      in[i] = static_cast<float>(x[i0 + i]);
    }
    gelu_backward_f32(d, in, out, m);
    for (int64_t i = 0; i < m; ++i) dx[i0 + i] = static_cast<T>(out[i]);
  }
}

template <typename C>
__attribute__((always_inline)) inline C apply_unary(UnaryOp op, C x) {
  if constexpr (std::is_floating_point_v<C>) {
    switch (op) {
      case UnaryOp::neg: return -x;
      case UnaryOp::exp: return std::exp(x);
      case UnaryOp::log: return std::log(x);
      case UnaryOp::sqrt: return std::sqrt(x);
      case UnaryOp::abs: return std::abs(x);
      case UnaryOp::relu: return x > C(0) ? x : C(0);
      case UnaryOp::gelu: {
        C inner = C(kSqrt2OverPi) * (x + C(kGeluCoeff) * x * x * x);
        return C(0.5) * x * (C(1) + std::tanh(inner));
      }
      case UnaryOp::tanh: return std::tanh(x);
      case UnaryOp::sigmoid: return C(1) / (C(1) + std::exp(-x));
      case UnaryOp::sign: return x > C(0) ? C(1) : (x < C(0) ? C(-1) : C(0));
      case UnaryOp::reciprocal: return C(1) / x;
      case UnaryOp::square: return x * x;
      case UnaryOp::logical_not: return x == C(0) ? C(1) : C(0);
      case UnaryOp::kCount: break;
    }
  } else {
    switch (op) {
      case UnaryOp::neg: return static_cast<C>(-x);
      case UnaryOp::abs: return x < C(0) ? static_cast<C>(-x) : x;
      case UnaryOp::relu: return x > C(0) ? x : C(0);
      case UnaryOp::sign: return x > C(0) ? C(1) : (x < C(0) ? static_cast<C>(-1) : C(0));
      case UnaryOp::square: return static_cast<C>(x * x);
      case UnaryOp::logical_not: return x == C(0) ? C(1) : C(0);
      default: break;
    }
  }
  throw DTypeError(str_cat("unary ", unary_op_name(op), ": not defined for integer dtypes"));
}

template <typename C>
__attribute__((always_inline)) inline C apply_binary(BinaryOp op, C a, C b) {
  switch (op) {
    case BinaryOp::add: return static_cast<C>(a + b);
    case BinaryOp::sub: return static_cast<C>(a - b);
    case BinaryOp::mul: return static_cast<C>(a * b);
    case BinaryOp::div:
      if constexpr (std::is_floating_point_v<C>) return a / b;
      else return b == C(0) ? C(0) : static_cast<C>(a / b);
    case BinaryOp::pow:
      if constexpr (std::is_floating_point_v<C>) return std::pow(a, b);
      else return static_cast<C>(std::pow(static_cast<double>(a), static_cast<double>(b)));
    case BinaryOp::maximum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return a > b ? a : b;
    case BinaryOp::minimum:
      if constexpr (std::is_floating_point_v<C>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return a < b ? a : b;
    case BinaryOp::relu_backward: return b > C(0) ? a : C(0);
    case BinaryOp::gelu_backward:
      if constexpr (std::is_floating_point_v<C>) {
        C x = b;
        C inner = C(kSqrt2OverPi) * (x + C(kGeluCoeff) * x * x * x);
        C t = std::tanh(inner);
        C dinner = C(kSqrt2OverPi) * (C(1) + C(3 * kGeluCoeff) * x * x);
        return a * (C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * dinner);
      }
      break;
    default: break;
  }
  throw DTypeError(str_cat("binary ", binary_op_name(op), ": not defined for this dtype"));
}

template <typename C>
__attribute__((always_inline)) inline bool apply_compare(BinaryOp op, C a, C b) {
  switch (op) {
    case BinaryOp::eq: return a == b;
    case BinaryOp::ne: return a != b;
    case BinaryOp::lt: return a < b;
    case BinaryOp::le: return a <= b;
    case BinaryOp::gt: return a > b;
    case BinaryOp::ge: return a >= b;
    default: return false;
  }
}

template <typename T>
inline T from_acc(acc_t<T> v) {
  if constexpr (std::is_same_v<T, bool>) return v != acc_t<T>(0);
  else return static_cast<T>(v);
}

// Calls f with the op as a compile-time constant (std::integral_constant), so that the switch in
// apply_unary / apply_binary folds away inside the loops and they vectorise; with the switch
// per element, relu over 4M floats took 34 ms against 2 ms for a copy.
template <typename F>
void with_unary_op(UnaryOp op, F&& f) {
#define HR_CASE(name) \
  case UnaryOp::name: return f(std::integral_constant<UnaryOp, UnaryOp::name>{})
  switch (op) {
    HR_CASE(neg);
    HR_CASE(exp);
    HR_CASE(log);
    HR_CASE(sqrt);
    HR_CASE(abs);
    HR_CASE(relu);
    HR_CASE(gelu);
    HR_CASE(tanh);
    HR_CASE(sigmoid);
    HR_CASE(sign);
    HR_CASE(reciprocal);
    HR_CASE(square);
    HR_CASE(logical_not);
    case UnaryOp::kCount: break;
  }
#undef HR_CASE
  throw DTypeError("unary: invalid op");
}

template <typename F>
void with_binary_op(BinaryOp op, F&& f) {
#define HR_CASE(name) \
  case BinaryOp::name: return f(std::integral_constant<BinaryOp, BinaryOp::name>{})
  switch (op) {
    HR_CASE(add);
    HR_CASE(sub);
    HR_CASE(mul);
    HR_CASE(div);
    HR_CASE(pow);
    HR_CASE(maximum);
    HR_CASE(minimum);
    HR_CASE(eq);
    HR_CASE(ne);
    HR_CASE(lt);
    HR_CASE(le);
    HR_CASE(gt);
    HR_CASE(ge);
    HR_CASE(relu_backward);
    HR_CASE(gelu_backward);
    case BinaryOp::kCount: break;
  }
#undef HR_CASE
  throw DTypeError("binary: invalid op");
}

}  // namespace

void CpuBackend::impl_unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  StridedLayout<2> layout({&out, &x});
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    if constexpr (!std::is_floating_point_v<C>) {
      if (op != UnaryOp::neg && op != UnaryOp::abs && op != UnaryOp::relu && op != UnaryOp::sign &&
          op != UnaryOp::square && op != UnaryOp::logical_not)
        throw DTypeError(str_cat("unary ", unary_op_name(op), ": not defined for ", dtype_name(x.dtype())));
    }
    T* o = static_cast<T*>(out.raw_data());
    const T* in = static_cast<const T*>(x.raw_data());
    with_unary_op(op, [&](auto kop) {
      constexpr UnaryOp K = decltype(kop)::value;
      parallel_for(layout.numel(), kParallelGrain / 8, [&](int64_t b, int64_t e) {
        layout.for_range(b, e, [&](const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st, int64_t len) {
          T* op_ = o + off[0];
          const T* ip = in + off[1];
          if constexpr (K == UnaryOp::gelu && std::is_same_v<T, float>) {
            if (st[0] == 1 && st[1] == 1 && (op_ + len <= ip || ip + len <= op_)) {
              gelu_f32(ip, op_, len);  // Note [vectorised gelu]
              return;
            }
          }
          if constexpr (K == UnaryOp::gelu && is_16bit_v<T>) {
            if (st[0] == 1 && st[1] == 1) {
              gelu_16bit(ip, op_, len);  // Note [vectorised gelu]
              return;
            }
          }
          if (st[0] == 1 && st[1] == 1) {
            for (int64_t i = 0; i < len; ++i) op_[i] = from_acc<T>(apply_unary<C>(K, static_cast<C>(ip[i])));
          } else {
            for (int64_t i = 0; i < len; ++i)
              op_[i * st[0]] = from_acc<T>(apply_unary<C>(K, static_cast<C>(ip[i * st[1]])));
          }
        });
      });
    });
  });
}

void CpuBackend::impl_binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  StridedLayout<3> layout({&out, &a, &b});
  dispatch_dtype(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    with_binary_op(op, [&](auto kop) {
      constexpr BinaryOp K = decltype(kop)::value;
      parallel_for(layout.numel(), kParallelGrain / 4, [&](int64_t begin, int64_t end) {
        layout.for_range(
            begin, end, [&](const std::array<int64_t, 3>& off, const std::array<int64_t, 3>& st, int64_t len) {
              const T* ap = pa + off[1];
              const T* bp = pb + off[2];
              if constexpr (K == BinaryOp::eq || K == BinaryOp::ne || K == BinaryOp::lt || K == BinaryOp::le ||
                            K == BinaryOp::gt || K == BinaryOp::ge) {
                bool* op_ = static_cast<bool*>(out.raw_data()) + off[0];
                for (int64_t i = 0; i < len; ++i)
                  op_[i * st[0]] = apply_compare<C>(K, static_cast<C>(ap[i * st[1]]), static_cast<C>(bp[i * st[2]]));
              } else {
                T* op_ = static_cast<T*>(out.raw_data()) + off[0];
                if constexpr (K == BinaryOp::gelu_backward && std::is_same_v<T, float>) {
                  if (st[0] == 1 && st[1] == 1 && st[2] == 1 && (op_ + len <= ap || ap + len <= op_) &&
                      (op_ + len <= bp || bp + len <= op_)) {
                    gelu_backward_f32(ap, bp, op_, len);  // Note [vectorised gelu]
                    return;
                  }
                }
                if constexpr (K == BinaryOp::gelu_backward && is_16bit_v<T>) {
                  if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
                    gelu_backward_16bit(ap, bp, op_, len);  // Note [vectorised gelu]
                    return;
                  }
                }
                if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
                  for (int64_t i = 0; i < len; ++i)
                    op_[i] = from_acc<T>(apply_binary<C>(K, static_cast<C>(ap[i]), static_cast<C>(bp[i])));
                } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
                  const C bv = static_cast<C>(bp[0]);
                  for (int64_t i = 0; i < len; ++i) op_[i] = from_acc<T>(apply_binary<C>(K, static_cast<C>(ap[i]), bv));
                } else {
                  for (int64_t i = 0; i < len; ++i)
                    op_[i * st[0]] =
                        from_acc<T>(apply_binary<C>(K, static_cast<C>(ap[i * st[1]]), static_cast<C>(bp[i * st[2]])));
                }
              }
            });
      });
    });
  });
}

void CpuBackend::impl_where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  StridedLayout<4> layout({&out, &cond, &a, &b});
  dispatch_dtype(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.raw_data());
    const bool* c = static_cast<const bool*>(cond.raw_data());
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    parallel_for(layout.numel(), kParallelGrain / 4, [&](int64_t begin, int64_t end) {
      layout.for_range(
          begin, end, [&](const std::array<int64_t, 4>& off, const std::array<int64_t, 4>& st, int64_t len) {
            for (int64_t i = 0; i < len; ++i)
              o[off[0] + i * st[0]] = c[off[1] + i * st[1]] ? pa[off[2] + i * st[2]] : pb[off[3] + i * st[3]];
          });
    });
  });
}

}  // namespace headroom::cpu

namespace headroom::cpu {

HR_VECTOR_CLONES
void exp_shifted_f32(const float* __restrict x, float* __restrict y, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = x[i] - shift;
    y[i] = t < -87.0f ? 0.0f : exp_f32(t);
  }
}

HR_VECTOR_CLONES
void exp_affine_f32(float* __restrict x, int64_t n, float scale, float shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_f32(x[i] * scale - shift);
}

}  // namespace headroom::cpu
