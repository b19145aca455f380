// Kernels around the cuDNN calls: convolution bias, and batch norm's own path (dnn_kernels.h
// says what each computes and why it exists).
//
// Shapes of the work: the bias add and the two batch-norm "apply" passes are elementwise over
// [N, C, S] (grid-stride, one thread an element, channel = (i / S) % C). The per-channel sums
// are a 2-d grid: blockIdx.x the channel, blockIdx.y a slice of its N * S values, so a few
// channels over a large batch still fill the GPU; each block writes one f64 partial pair, and a
// thread per channel folds the partials in slice order (no atomics: the same bits every run).
// The finalize kernels are a thread per channel.
#include "kernels/cuda/dnn_kernels.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "engine/memory.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A pointer to a [C] tensor's data, or nullptr when it is undefined.
template <typename P>
P* optional_data(const Tensor& t) {
  return t.defined() ? device_data<P>(t) : nullptr;
}

Tensor f64_scratch(int64_t n, Device device) {
  CategoryScope workspace(MemoryCategory::workspace);
  return Tensor::empty({std::max<int64_t>(n, 1)}, TensorOptions().dtype(DType::f64).device(device));
}

// ---- convolution bias ----

template <typename T>
__global__ void add_channel_bias_kernel(T* out, const T* bias, int64_t bias_stride, int64_t channels, int64_t inner,
                                        int64_t n) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = (i / inner) % channels;
    out[i] = convert<T>(convert<A>(out[i]) + convert<A>(bias[o * bias_stride]));
  }
}

template <typename T>
void add_channel_bias_impl(const KernelScope& scope, const Tensor& out, const Tensor& bias) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const int64_t channels = out.size(1), inner = n / (out.size(0) * channels);
  add_channel_bias_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(out), device_data<T>(bias),
                                                                         bias.stride(0), channels, inner, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- batch norm: per-channel sums ----

constexpr int kSumBlock = 256;

// Block (c, slice) sums its slice [begin, end) of channel c's N * S values into partial
// [C][slices][2]. kBackward: sum(dy) and sum(dy * xhat); else sum(x - k) and sum((x - k)^2).
template <typename T, bool kBackward>
__global__ void __launch_bounds__(kSumBlock)
    bn_partial_kernel(const T* x, const T* dy, const acc_type<T>* mean, const acc_type<T>* invstd, int64_t channels,
                      int64_t S, int64_t count, int64_t per_slice, double* partial) {
  using A = acc_type<T>;
  __shared__ double shared[32];
  const int64_t c = blockIdx.x, slice = blockIdx.y;
  const int64_t begin = slice * per_slice, end = min(count, begin + per_slice);
  double s1 = 0, s2 = 0;
  if constexpr (kBackward) {
    const A m = static_cast<A>(mean[c]), is = static_cast<A>(invstd[c]);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const int64_t n = i / S, off = (n * channels + c) * S + (i - n * S);
      const A d = convert<A>(dy[off]);
      s1 += static_cast<double>(d);
      s2 += static_cast<double>(d * (convert<A>(x[off]) - m) * is);
    }
  } else {
    const double k = static_cast<double>(convert<A>(x[c * S]));  // x[0, c, 0]
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const int64_t n = i / S, off = (n * channels + c) * S + (i - n * S);
      const double d = static_cast<double>(convert<A>(x[off])) - k;
      s1 += d;
      s2 += d * d;
    }
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  if (threadIdx.x == 0) {
    double* p = partial + (c * gridDim.y + slice) * 2;
    p[0] = s1;
    p[1] = s2;
  }
}

// sums[c] and sums[C + c] = the partials of channel c, added in slice order.
__global__ void bn_fold_kernel(const double* partial, int64_t channels, int64_t slices, double* sums) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s1 = 0, s2 = 0;
    for (int64_t k = 0; k < slices; ++k) {
      s1 += partial[(c * slices + k) * 2];
      s2 += partial[(c * slices + k) * 2 + 1];
    }
    sums[c] = s1;
    sums[channels + c] = s2;
  }
}

template <typename T>
void bn_channel_sums_impl(const KernelScope& scope, const Tensor& x, const Tensor& dy, const Tensor& save_mean,
                          const Tensor& save_invstd, const Tensor& sums) {
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2), count = N * S;
  if (C == 0) return;
  if (count == 0) {
    HR_CUDA_CHECK(cudaMemsetAsync(sums.raw_data(), 0, static_cast<size_t>(2 * C) * sizeof(double), scope.stream()));
    return;
  }
  // About 1024 blocks in all, each of at least 4096 values; at most 65535 slices (grid.y).
  int64_t slices = std::max<int64_t>(1, std::min(ceil_div(count, 4096), ceil_div(1024, C)));
  slices = std::min<int64_t>(slices, 65535);
  const int64_t per_slice = ceil_div(count, slices);
  slices = ceil_div(count, per_slice);
  HR_CHECK(C <= 0x7fffffff, ShapeError, "cuda batch_norm: ", C, " channels are more than a grid holds");
  Tensor partial = f64_scratch(C * slices * 2, x.device());
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(slices));
  if (dy.defined()) {
    bn_partial_kernel<T, true><<<grid, kSumBlock, 0, scope.stream()>>>(
        device_data<T>(x), device_data<T>(dy), device_data<acc_type<T>>(save_mean),
        device_data<acc_type<T>>(save_invstd), C, S, count, per_slice, device_data<double>(partial));
  } else {
    bn_partial_kernel<T, false><<<grid, kSumBlock, 0, scope.stream()>>>(
        device_data<T>(x), nullptr, nullptr, nullptr, C, S, count, per_slice, device_data<double>(partial));
  }
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  bn_fold_kernel<<<grid_for(C), kBlock, 0, scope.stream()>>>(device_data<double>(partial), C, slices,
                                                             device_data<double>(sums));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- batch norm: per-channel finalisation ----

template <typename T>
__global__ void bn_training_finalize_kernel(const T* x, const double* sums, const double* weight, const double* bias,
                                            double* running_mean, double* running_var, double momentum, double eps,
                                            int64_t channels, int64_t S, int64_t count, acc_type<T>* save_mean,
                                            acc_type<T>* save_invstd, double* coef) {
  using A = acc_type<T>;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double k = static_cast<double>(convert<A>(x[c * S]));  // the shift bn_partial_kernel used
    const double shifted_mean = sums[c] / static_cast<double>(count);
    const double var = fmax(sums[channels + c] / static_cast<double>(count) - shifted_mean * shifted_mean, 0.0);
    const double mean = k + shifted_mean;
    const double invstd = 1.0 / sqrt(var + eps);
    save_mean[c] = static_cast<A>(mean);  // f32, or f64 for f64 data (Note [statistics dtype])
    save_invstd[c] = static_cast<A>(invstd);
    if (running_mean != nullptr) running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean;
    if (running_var != nullptr) {
      const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
      running_var[c] = (1 - momentum) * running_var[c] + momentum * var * bessel;
    }
    coef[c] = mean;
    coef[channels + c] = invstd * (weight != nullptr ? weight[c] : 1.0);
    coef[2 * channels + c] = bias != nullptr ? bias[c] : 0.0;
  }
}

template <typename T>
void bn_training_finalize_impl(const KernelScope& scope, const Tensor& x, const Tensor& sums, const Tensor& weight,
                               const Tensor& bias, const Tensor& running_mean, const Tensor& running_var,
                               double momentum, double eps, const Tensor& save_mean, const Tensor& save_invstd,
                               const Tensor& coef) {
  const int64_t C = x.size(1);
  if (C == 0) return;
  bn_training_finalize_kernel<T><<<grid_for(C), kBlock, 0, scope.stream()>>>(
      device_data<T>(x), device_data<double>(sums), optional_data<double>(weight), optional_data<double>(bias),
      optional_data<double>(running_mean), optional_data<double>(running_var), momentum, eps, C, x.size(2),
      x.size(0) * x.size(2), device_data<acc_type<T>>(save_mean), device_data<acc_type<T>>(save_invstd),
      device_data<double>(coef));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename P, typename S>
__global__ void bn_eval_finalize_kernel(const P* weight, const P* bias, const P* running_mean, const P* running_var,
                                        double eps, int64_t channels, S* save_mean, S* save_invstd, double* coef) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double mean = static_cast<double>(running_mean[c]);
    const double invstd = 1.0 / sqrt(static_cast<double>(running_var[c]) + eps);
    save_mean[c] = static_cast<S>(mean);
    save_invstd[c] = static_cast<S>(invstd);
    if (coef != nullptr) {
      coef[c] = mean;
      coef[channels + c] = invstd * (weight != nullptr ? static_cast<double>(weight[c]) : 1.0);
      coef[2 * channels + c] = bias != nullptr ? static_cast<double>(bias[c]) : 0.0;
    }
  }
}

template <typename P>
void bn_eval_finalize_impl(const KernelScope& scope, const Tensor& weight, const Tensor& bias,
                           const Tensor& running_mean, const Tensor& running_var, double eps, const Tensor& save_mean,
                           const Tensor& save_invstd, const Tensor& coef) {
  const int64_t C = running_mean.numel();
  if (C == 0) return;
  auto launch = [&](auto* s_tag) {
    using S = std::remove_pointer_t<decltype(s_tag)>;
    bn_eval_finalize_kernel<P, S><<<grid_for(C), kBlock, 0, scope.stream()>>>(
        optional_data<P>(weight), optional_data<P>(bias), device_data<P>(running_mean), device_data<P>(running_var),
        eps, C, device_data<S>(save_mean), device_data<S>(save_invstd), optional_data<double>(coef));
  };
  if (save_mean.dtype() == DType::f64) launch(static_cast<double*>(nullptr));  // f64 data (statistics_dtype)
  else launch(static_cast<float*>(nullptr));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename S>
__global__ void bn_backward_finalize_kernel(const double* sums, const double* weight, const S* save_mean,
                                            const S* save_invstd, bool training, int64_t count, int64_t channels,
                                            double* dweight, double* dbias, double* coef) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double sum_dy = sums != nullptr ? sums[c] : 0.0;
    const double sum_dy_xhat = sums != nullptr ? sums[channels + c] : 0.0;
    if (dweight != nullptr) dweight[c] = sum_dy_xhat;
    if (dbias != nullptr) dbias[c] = sum_dy;
    const double invstd = static_cast<double>(save_invstd[c]);
    const double wi = (weight != nullptr ? weight[c] : 1.0) * invstd;
    double k_xhat = 0, k_const = 0;
    if (training) {
      const double inv_count = 1.0 / static_cast<double>(count);
      k_xhat = -wi * sum_dy_xhat * inv_count * invstd;
      k_const = -wi * sum_dy * inv_count;
    }
    coef[c] = wi;
    coef[channels + c] = k_xhat;
    coef[2 * channels + c] = k_const;
    coef[3 * channels + c] = static_cast<double>(save_mean[c]);
  }
}

// ---- batch norm: elementwise passes ----

template <typename T>
__global__ void bn_apply_forward_kernel(const T* x, const double* coef, int64_t channels, int64_t S, int64_t n, T* y) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / S) % channels;
    const A mean = static_cast<A>(coef[c]), scale = static_cast<A>(coef[channels + c]);
    const A shift = static_cast<A>(coef[2 * channels + c]);
    y[i] = convert<T>((convert<A>(x[i]) - mean) * scale + shift);
  }
}

template <typename T>
void bn_apply_forward_impl(const KernelScope& scope, const Tensor& x, const Tensor& coef, const Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  bn_apply_forward_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(x), device_data<double>(coef),
                                                                         x.size(1), x.size(2), n, device_data<T>(y));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
__global__ void bn_apply_backward_kernel(const T* dy, const T* x, const double* coef, int64_t channels, int64_t S,
                                         int64_t n, T* dx) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / S) % channels;
    const A k_dy = static_cast<A>(coef[c]), k_xhat = static_cast<A>(coef[channels + c]);
    const A k_const = static_cast<A>(coef[2 * channels + c]), mean = static_cast<A>(coef[3 * channels + c]);
    dx[i] = convert<T>(k_dy * convert<A>(dy[i]) + k_xhat * (convert<A>(x[i]) - mean) + k_const);
  }
}

template <typename T>
void bn_apply_backward_impl(const KernelScope& scope, const Tensor& dy, const Tensor& x, const Tensor& coef,
                            const Tensor& dx) {
  const int64_t n = x.numel();
  if (n == 0) return;
  bn_apply_backward_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(
      device_data<T>(dy), device_data<T>(x), device_data<double>(coef), x.size(1), x.size(2), n, device_data<T>(dx));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void add_channel_bias(const KernelScope& scope, const Tensor& out, const Tensor& bias) {
  dispatch_cuda_float(out.dtype(), "cuda conv2d bias",
                      [&](auto tag) { add_channel_bias_impl<typename decltype(tag)::type>(scope, out, bias); });
}

void bn_channel_sums(const KernelScope& scope, const Tensor& x, const Tensor& dy, const Tensor& save_mean,
                     const Tensor& save_invstd, const Tensor& sums) {
  dispatch_cuda_float(x.dtype(), "cuda batch_norm", [&](auto tag) {
    bn_channel_sums_impl<typename decltype(tag)::type>(scope, x, dy, save_mean, save_invstd, sums);
  });
}

void bn_training_finalize(const KernelScope& scope, const Tensor& x, const Tensor& sums, const Tensor& weight,
                          const Tensor& bias, const Tensor& running_mean, const Tensor& running_var, double momentum,
                          double eps, const Tensor& save_mean, const Tensor& save_invstd, const Tensor& coef) {
  dispatch_cuda_float(x.dtype(), "cuda batch_norm", [&](auto tag) {
    bn_training_finalize_impl<typename decltype(tag)::type>(scope, x, sums, weight, bias, running_mean, running_var,
                                                            momentum, eps, save_mean, save_invstd, coef);
  });
}

void bn_eval_finalize(const KernelScope& scope, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                      const Tensor& running_var, double eps, const Tensor& save_mean, const Tensor& save_invstd,
                      const Tensor& coef) {
  if (running_mean.dtype() == DType::f64) {
    bn_eval_finalize_impl<double>(scope, weight, bias, running_mean, running_var, eps, save_mean, save_invstd, coef);
  } else {
    HR_CHECK(running_mean.dtype() == DType::f32, DTypeError, "cuda batch_norm: running statistics reach ",
             "bn_eval_finalize as ", describe(running_mean), ", expected f32 or f64");
    bn_eval_finalize_impl<float>(scope, weight, bias, running_mean, running_var, eps, save_mean, save_invstd, coef);
  }
}

void bn_apply_forward(const KernelScope& scope, const Tensor& x, const Tensor& coef, const Tensor& y) {
  dispatch_cuda_float(x.dtype(), "cuda batch_norm",
                      [&](auto tag) { bn_apply_forward_impl<typename decltype(tag)::type>(scope, x, coef, y); });
}

void bn_backward_finalize(const KernelScope& scope, const Tensor& sums, const Tensor& weight, const Tensor& save_mean,
                          const Tensor& save_invstd, bool training, int64_t count, const Tensor& dweight,
                          const Tensor& dbias, const Tensor& coef) {
  const int64_t C = save_mean.numel();
  if (C == 0) return;
  auto launch = [&](auto* s_tag) {
    using S = std::remove_pointer_t<decltype(s_tag)>;
    bn_backward_finalize_kernel<S><<<grid_for(C), kBlock, 0, scope.stream()>>>(
        optional_data<double>(sums), optional_data<double>(weight), device_data<S>(save_mean),
        device_data<S>(save_invstd), training, count, C, optional_data<double>(dweight), optional_data<double>(dbias),
        device_data<double>(coef));
  };
  if (save_mean.dtype() == DType::f64) launch(static_cast<double*>(nullptr));  // f64 data (statistics_dtype)
  else launch(static_cast<float*>(nullptr));
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

void bn_apply_backward(const KernelScope& scope, const Tensor& dy, const Tensor& x, const Tensor& coef,
                       const Tensor& dx) {
  dispatch_cuda_float(x.dtype(), "cuda batch_norm backward",
                      [&](auto tag) { bn_apply_backward_impl<typename decltype(tag)::type>(scope, dy, x, coef, dx); });
}

}  // namespace headroom::cuda
