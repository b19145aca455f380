// The small kernels around the cuDNN calls of conv.cpp and batch_norm.cpp (which are plain C++
// and cannot launch kernels themselves): the convolution's bias, and batch norm's own path.
//
// Batch norm runs through cuDNN where cuDNN can (batch_norm.cpp says when); these kernels do
// the rest: the eval-mode statistics saved for backward (cuDNN's inference call saves none),
// the eval-mode backward (a per-channel scale cuDNN has no call for), and the whole op where
// cuDNN cannot run it (bf16, shapes past its limits, set_cudnn_batch_norm(false)). They follow
// kernels/cpu/norm.cpp formula for formula: statistics and gradient sums accumulate in f64
// (per-thread partial sums, then a fixed-order fold: deterministic), elementwise passes compute
// in acc_type (f32 for 16-bit data, f64 for f64).
//
// Shapes: x, y, dy, dx contiguous [N, C, S]. Per-channel tensors are contiguous [C]:
// save_mean/save_invstd in statistics_dtype (f32; f64 for f64 data); on the own path weight, bias, running stats, dweight and dbias are
// f64 (the caller casts in and out; undefined = absent); coef and sums are f64 scratch.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "kernels/cuda/cuda_scope.h"

namespace headroom::cuda {

// out [N, O, inner] (contiguous) += bias[o]; bias 1-d [O], any stride, out's dtype.
void add_channel_bias(const KernelScope& scope, const Tensor& out, const Tensor& bias);

// sums (f64 [2, C]). Forward (dy undefined): sum(x - k) and sum((x - k)^2) with k = x[0, c, 0]
// (a shift against cancellation). Backward: sum(dy) and sum(dy * (x - save_mean) * save_invstd).
// Zeros when N * S == 0.
void bn_channel_sums(const KernelScope& scope, const Tensor& x, const Tensor& dy, const Tensor& save_mean,
                     const Tensor& save_invstd, const Tensor& sums);

// Training forward, from the forward sums: save_mean, save_invstd; running_mean/var (if
// defined) = (1 - momentum) * old + momentum * batch value, the variance unbiased; coef
// (f64 [3, C]) = mean, invstd * weight, bias for bn_apply_forward. N * S > 1.
void bn_training_finalize(const KernelScope& scope, const Tensor& x, const Tensor& sums, const Tensor& weight,
                          const Tensor& bias, const Tensor& running_mean, const Tensor& running_var, double momentum,
                          double eps, const Tensor& save_mean, const Tensor& save_invstd, const Tensor& coef);

// Eval forward: save_mean = running_mean, save_invstd = 1 / sqrt(running_var + eps), and coef
// as above when defined. The running stats (and weight, bias) are f32 or f64, one dtype.
void bn_eval_finalize(const KernelScope& scope, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                      const Tensor& running_var, double eps, const Tensor& save_mean, const Tensor& save_invstd,
                      const Tensor& coef);

// y = (x - coef[0]) * coef[1] + coef[2], per channel.
void bn_apply_forward(const KernelScope& scope, const Tensor& x, const Tensor& coef, const Tensor& y);

// Backward, from the backward sums (undefined: no sums were needed, eval without dweight and
// dbias): dweight = sum(dy * xhat), dbias = sum(dy) where defined; coef (f64 [4, C]) for
// bn_apply_backward: k_dy = weight * invstd, and in training
// k_xhat = -k_dy * invstd * sum(dy * xhat) / count, k_const = -k_dy * sum(dy) / count (else 0).
void bn_backward_finalize(const KernelScope& scope, const Tensor& sums, const Tensor& weight, const Tensor& save_mean,
                          const Tensor& save_invstd, bool training, int64_t count, const Tensor& dweight,
                          const Tensor& dbias, const Tensor& coef);

// dx = k_dy * dy + k_xhat * (x - save_mean) + k_const, per channel.
void bn_apply_backward(const KernelScope& scope, const Tensor& dy, const Tensor& x, const Tensor& coef,
                       const Tensor& dx);

}  // namespace headroom::cuda
