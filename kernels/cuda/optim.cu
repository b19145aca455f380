// Fused optimizer updates on the GPU (Backend::sgd_update / adam_update).
//
// One grid-stride kernel per update reads p, g and the optimizer state once and writes p and
// the state back once (all in place, =), in the parameter's dtype, computing in f32 for f32,
// f16 and bf16 and in f64 for f64 -- the formulas of kernels/cpu/optim.cpp, term for term. The
// step-wide constants (1 - beta1, 1 - beta2, decay factor, step size, 1 / sqrt(bias_correction2))
// arrive folded in double (AdamStep, Note [optimizer step constants] in engine/backend.h) and
// are rounded once on the host, exactly as the CPU rounds them; no kernel derives one. An update is memory-bound (a handful of flops
// per 16-20 bytes), so the kernels are plain coalesced loops; the tensors are contiguous by
// contract, so element i of every tensor is at offset i.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

#include <cmath>

namespace headroom::cuda {

namespace {

template <typename A>
__device__ __forceinline__ A device_sqrt(A x) {
  if constexpr (std::is_same_v<A, double>) {
    return sqrt(x);
  } else {
    return sqrtf(x);
  }
}

// buf is null when momentum is 0 (no state).
template <typename T>
__global__ void sgd_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int64_t n, bool first,
                           acc_type<T> lr, acc_type<T> momentum, acc_type<T> weight_decay, bool nesterov) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A w = convert<A>(p[i]);
    A d = convert<A>(g[i]) + weight_decay * w;
    if (buf != nullptr) {
      const A b = first ? d : momentum * convert<A>(buf[i]) + d;
      buf[i] = convert<T>(b);
      d = nesterov ? d + momentum * b : b;
    }
    p[i] = convert<T>(w - lr * d);
  }
}

// AdamStep's constants rounded to A, passed by value.
template <typename A>
struct AdamConstants {
  A beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, l2, step_size, inv_sqrt_bc2;
};

template <typename T>
__global__ void adam_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int64_t n,
                            AdamConstants<acc_type<T>> k) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A w = convert<A>(p[i]) * k.decay;
    const A d = convert<A>(g[i]) + k.l2 * w;
    const A mi = k.beta1 * convert<A>(m[i]) + k.one_minus_beta1 * d;
    const A vi = k.beta2 * convert<A>(v[i]) + k.one_minus_beta2 * (d * d);
    m[i] = convert<T>(mi);
    v[i] = convert<T>(vi);
    p[i] = convert<T>(w - (mi / (device_sqrt(vi) * k.inv_sqrt_bc2 + k.eps)) * k.step_size);
  }
}

template <typename T>
void sgd_impl(const KernelScope& scope, const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr,
              double momentum, double weight_decay, bool nesterov) {
  using A = acc_type<T>;
  const int64_t n = p.numel();
  sgd_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(
      device_data<T>(p), device_data<T>(g), buf.defined() ? device_data<T>(buf) : nullptr, n, first, static_cast<A>(lr),
      static_cast<A>(momentum), static_cast<A>(weight_decay), nesterov);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void adam_impl(const KernelScope& scope, const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
               const AdamStep& step) {
  using A = acc_type<T>;
  const int64_t n = p.numel();
  // Each constant rounded once from AdamStep's double, as on the CPU.
  const AdamConstants<A> k{static_cast<A>(step.beta1),       static_cast<A>(step.one_minus_beta1),
                           static_cast<A>(step.beta2),       static_cast<A>(step.one_minus_beta2),
                           static_cast<A>(step.eps),         static_cast<A>(step.decay),
                           static_cast<A>(step.l2),          static_cast<A>(step.step_size),
                           static_cast<A>(step.inv_sqrt_bc2)};
  adam_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(p), device_data<T>(g), device_data<T>(m),
                                                             device_data<T>(v), n, k);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr,
                                  double momentum, double weight_decay, bool nesterov) {
  const char* op = "cuda sgd_update";
  // The arguments are checked by Backend::sgd_update (Note [op table]).
  if (p.numel() == 0) return;
  KernelScope scope(p);
  dispatch_cuda_float(p.dtype(), op, [&](auto tag) {
    sgd_impl<typename decltype(tag)::type>(scope, p, g, buf, first, lr, momentum, weight_decay, nesterov);
  });
}

void CudaBackend::impl_adam_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                                   const AdamStep& step) {
  const char* op = "cuda adam_update";
  // The arguments are checked by Backend::adam_update (Note [op table]).
  if (p.numel() == 0) return;
  KernelScope scope(p);
  dispatch_cuda_float(p.dtype(), op,
                      [&](auto tag) { adam_impl<typename decltype(tag)::type>(scope, p, g, m, v, step); });
}

}  // namespace headroom::cuda
