// Elementwise unary and binary ops and where() on the GPU.
//
// Why it is shaped so: one grid-stride kernel per (dtype, op), the op a template argument
// (elementwise_ops.cuh), so no kernel switches per element; the host picks the instantiation
// with one switch. Operands of any strides (zero strides for broadcast) go through the shared
// Indexer, whose dims are merged on the host: dense operands take its contiguous fast path
// (offset = index, coalesced), the rest one div/mod per remaining dim. Which dtypes each op
// takes follows the CPU backend (kernels/cpu/elementwise.cpp); f16 and bf16 are loaded to f32,
// computed, and rounded back to nearest even. where() only moves elements, so it exists once
// per element size, not per dtype.
// Outputs are written (=), never accumulated. out may alias an input exactly: each element is
// read and written by the one thread that owns it, the reads first.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/op_profile.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/elementwise_ops.cuh"

namespace headroom::cuda {

namespace {

// ---- unary ----

template <typename T, UnaryOp K>
void unary_launch(const KernelScope& scope, const Tensor& x, const Tensor& out) {
  using C = acc_type<T>;
  const T* in = device_data<const T>(x);
  T* o = device_data<T>(out);
  launch_strided<2>(scope, make_indexer<2>({&out, &x}), out.numel(), [=] __device__(const int64_t* off) {
    o[off[0]] = convert<T>(unary_op<K, C>(convert<C>(in[off[1]])));
  });
}

template <typename T>
void unary_typed(const KernelScope& scope, UnaryOp op, const Tensor& x, const Tensor& out) {
#define HR_UNARY_CASE(name) \
  case UnaryOp::name: return unary_launch<T, UnaryOp::name>(scope, x, out)
  if constexpr (std::is_floating_point_v<acc_type<T>>) {
    switch (op) {
      HR_UNARY_CASE(neg);
      HR_UNARY_CASE(exp);
      HR_UNARY_CASE(log);
      HR_UNARY_CASE(sqrt);
      HR_UNARY_CASE(abs);
      HR_UNARY_CASE(relu);
      HR_UNARY_CASE(gelu);
      HR_UNARY_CASE(tanh);
      HR_UNARY_CASE(sigmoid);
      HR_UNARY_CASE(sign);
      HR_UNARY_CASE(reciprocal);
      HR_UNARY_CASE(square);
      HR_UNARY_CASE(logical_not);
      case UnaryOp::kCount: break;
    }
  } else {
    switch (op) {
      HR_UNARY_CASE(neg);
      HR_UNARY_CASE(abs);
      HR_UNARY_CASE(relu);
      HR_UNARY_CASE(sign);
      HR_UNARY_CASE(square);
      HR_UNARY_CASE(logical_not);
      case UnaryOp::kCount: throw DTypeError("cuda unary: invalid op");
      default:
        throw DTypeError(str_cat("unary ", unary_op_name(op), ": not defined for ", dtype_name(x.dtype()), " (shape ",
                                 shape_str(x.shape()), ")"));
    }
  }
#undef HR_UNARY_CASE
  throw DTypeError("cuda unary: invalid op");
}

// ---- binary ----

template <typename T, BinaryOp K>
void binary_launch(const KernelScope& scope, const Tensor& a, const Tensor& b, const Tensor& out) {
  using C = acc_type<T>;
  const T* pa = device_data<const T>(a);
  const T* pb = device_data<const T>(b);
  const Indexer<3> ix = make_indexer<3>({&out, &a, &b});
  if constexpr (is_comparison_op(K)) {
    bool* o = device_data<bool>(out);
    launch_strided<3>(scope, ix, out.numel(), [=] __device__(const int64_t* off) {
      o[off[0]] = compare_op<K, C>(convert<C>(pa[off[1]]), convert<C>(pb[off[2]]));
    });
  } else {
    T* o = device_data<T>(out);
    launch_strided<3>(scope, ix, out.numel(), [=] __device__(const int64_t* off) {
      o[off[0]] = convert<T>(binary_op<K, C>(convert<C>(pa[off[1]]), convert<C>(pb[off[2]])));
    });
  }
}

template <typename T>
void binary_typed(const KernelScope& scope, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
#define HR_BINARY_CASE(name) \
  case BinaryOp::name: return binary_launch<T, BinaryOp::name>(scope, a, b, out)
  switch (op) {
    HR_BINARY_CASE(add);
    HR_BINARY_CASE(sub);
    HR_BINARY_CASE(mul);
    HR_BINARY_CASE(div);
    HR_BINARY_CASE(pow);
    HR_BINARY_CASE(maximum);
    HR_BINARY_CASE(minimum);
    HR_BINARY_CASE(eq);
    HR_BINARY_CASE(ne);
    HR_BINARY_CASE(lt);
    HR_BINARY_CASE(le);
    HR_BINARY_CASE(gt);
    HR_BINARY_CASE(ge);
    HR_BINARY_CASE(relu_backward);
    case BinaryOp::gelu_backward:
      if constexpr (std::is_floating_point_v<acc_type<T>>) {
        return binary_launch<T, BinaryOp::gelu_backward>(scope, a, b, out);
      } else {
        throw DTypeError(str_cat("binary gelu_backward: not defined for ", dtype_name(a.dtype()), " (shape ",
                                 shape_str(a.shape()), ")"));
      }
    case BinaryOp::kCount: break;
  }
#undef HR_BINARY_CASE
  throw DTypeError("cuda binary: invalid op");
}

// ---- where ----

// B: the unsigned integer of the element's size; cond is read as bytes (any nonzero is true).
template <typename B>
void where_launch(const KernelScope& scope, const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  const uint8_t* c = device_data<const uint8_t>(cond);
  const B* pa = device_data<const B>(a);
  const B* pb = device_data<const B>(b);
  B* o = device_data<B>(out);
  launch_strided<4>(scope, make_indexer<4>({&out, &cond, &a, &b}), out.numel(),
                    [=] __device__(const int64_t* off) { o[off[0]] = c[off[1]] != 0 ? pa[off[2]] : pb[off[3]]; });
}

}  // namespace

void CudaBackend::impl_unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  if (out.numel() == 0) return;
  KernelScope scope(out, profile_name("unary", unary_op_name(op)));
  dispatch_cuda(x.dtype(), [&](auto tag) { unary_typed<typename decltype(tag)::type>(scope, op, x, out); });
}

void CudaBackend::impl_binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (out.numel() == 0) return;
  KernelScope scope(out, profile_name("binary", binary_op_name(op)));
  dispatch_cuda(a.dtype(), [&](auto tag) { binary_typed<typename decltype(tag)::type>(scope, op, a, b, out); });
}

void CudaBackend::impl_where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (out.numel() == 0) return;
  KernelScope scope(out);
  dispatch_bits(dtype_size(out.dtype()),
                [&](auto tag) { where_launch<typename decltype(tag)::type>(scope, cond, a, b, out); });
}

}  // namespace headroom::cuda
