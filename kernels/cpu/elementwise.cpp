// Elementwise unary and binary ops and where(), for every dtype that the op accepts.
// Floats compute in acc_t (f32 for f16/bf16); integers and bool in their own type.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCoeff = 0.044715;

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
      if constexpr (std::is_floating_point_v<C>) { if (std::isnan(a) || std::isnan(b)) return a + b; }
      return a > b ? a : b;
    case BinaryOp::minimum:
      if constexpr (std::is_floating_point_v<C>) { if (std::isnan(a) || std::isnan(b)) return a + b; }
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
  case UnaryOp::name: return f(std::integral_constant<UnaryOp, UnaryOp::name>{});
  switch (op) {
    HR_CASE(neg) HR_CASE(exp) HR_CASE(log) HR_CASE(sqrt) HR_CASE(abs) HR_CASE(relu) HR_CASE(gelu)
    HR_CASE(tanh) HR_CASE(sigmoid) HR_CASE(sign) HR_CASE(reciprocal) HR_CASE(square) HR_CASE(logical_not)
    case UnaryOp::kCount: break;
  }
#undef HR_CASE
  throw DTypeError("unary: invalid op");
}

template <typename F>
void with_binary_op(BinaryOp op, F&& f) {
#define HR_CASE(name) \
  case BinaryOp::name: return f(std::integral_constant<BinaryOp, BinaryOp::name>{});
  switch (op) {
    HR_CASE(add) HR_CASE(sub) HR_CASE(mul) HR_CASE(div) HR_CASE(pow) HR_CASE(maximum) HR_CASE(minimum)
    HR_CASE(eq) HR_CASE(ne) HR_CASE(lt) HR_CASE(le) HR_CASE(gt) HR_CASE(ge) HR_CASE(relu_backward)
    HR_CASE(gelu_backward)
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
        layout.for_range(begin, end, [&](const std::array<int64_t, 3>& off, const std::array<int64_t, 3>& st, int64_t len) {
          const T* ap = pa + off[1];
          const T* bp = pb + off[2];
          if constexpr (K == BinaryOp::eq || K == BinaryOp::ne || K == BinaryOp::lt || K == BinaryOp::le ||
                        K == BinaryOp::gt || K == BinaryOp::ge) {
            bool* op_ = static_cast<bool*>(out.raw_data()) + off[0];
            for (int64_t i = 0; i < len; ++i)
              op_[i * st[0]] = apply_compare<C>(K, static_cast<C>(ap[i * st[1]]), static_cast<C>(bp[i * st[2]]));
          } else {
            T* op_ = static_cast<T*>(out.raw_data()) + off[0];
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
      layout.for_range(begin, end, [&](const std::array<int64_t, 4>& off, const std::array<int64_t, 4>& st, int64_t len) {
        for (int64_t i = 0; i < len; ++i)
          o[off[0] + i * st[0]] = c[off[1] + i * st[1]] ? pa[off[2] + i * st[2]] : pb[off[3] + i * st[3]];
      });
    });
  });
}

}  // namespace headroom::cpu
