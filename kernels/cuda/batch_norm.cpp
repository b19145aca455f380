// Batch norm on the GPU: cuDNN 9's legacy batch-norm calls where they fit, own kernels elsewhere.
//
// x [N, C, S] is described to cuDNN as the 4-d [N, C, S, 1] with CUDNN_BATCHNORM_SPATIAL
// (statistics per channel over N and S). cuDNN runs:
//   training forward   cudnnBatchNormalizationForwardTraining: y, save_mean, save_invstd
//                      (1 / sqrt(biased var + eps)), and the running statistics as
//                      (1 - momentum) * old + momentum * batch value, with the UNBIASED variance
//                      for running_var (cuDNN's documented behaviour, which PyTorch relies on
//                      too) -- the CPU's rule exactly (kernels/cpu/norm.cpp);
//   eval forward       cudnnBatchNormalizationForwardInference for y; it saves nothing, so a
//                      tiny kernel saves the running statistics as (mean, 1 / sqrt(var + eps))
//                      for backward, as the contract asks;
//   training backward  cudnnBatchNormalizationBackward with the saved statistics, when dx is
//                      wanted (cuDNN always writes dx).
// Own kernels (dnn_kernels.h, the CPU's formulas, f64 statistics) run the rest:
//   eval backward      dx = dy * weight * invstd, a per-channel scale cuDNN has no call for
//                      (its Backward assumes batch statistics); dweight/dbias as sums;
//   training backward without dx (only dweight/dbias);
//   everything cuDNN cannot take: bf16 data (cuDNN's batch norm does not promise it; PyTorch
//   never sends it there either), more than 2^31 - 1 elements (32-bit descriptors), N beyond
//   cuDNN's grid limits for spatial batch norm (880801 training, 65535 eval: PyTorch's measured
//   limits), eps below CUDNN_BN_MIN_EPSILON, and set_cudnn_batch_norm(false) (tests compare).
//
// Parameters: cuDNN wants weight, bias and the running statistics as one contiguous [C] tensor
// type, f32 for f16/f32 data and f64 for f64 data; the own kernels take f64. Parameters of any
// other float dtype or stride are cast into temporaries (workspace) and results cast back; an
// undefined weight is ones, an undefined bias zeros; undefined dweight/dbias get temporaries
// where cuDNN needs somewhere to write. save_mean/save_invstd are [C] in statistics_dtype as the
// contract says: f32, or f64 for f64 data -- cuDNN's parameter dtype either way, so they are
// written directly. Everything is written (=), nothing accumulated.
//
// Differences from the CPU: with f32 data and f64 running statistics, the cuDNN path updates
// them through f32 (cuDNN's parameter type), so they carry f32 rounding; the own path and the
// CPU keep f64. The cuDNN path's f32 statistics accumulate as cuDNN does (f32 on the GPU where
// the CPU uses f64): the difference is within f32 tolerance for sane data.
#include <algorithm>
#include <climits>

#include "engine/memory.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_libs.h"
#include "kernels/cuda/cuda_scope.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/dnn_kernels.h"

// cuDNN 9 marks the legacy batch-norm API deprecated (cudnn_util.h): silenced for this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace headroom::cuda {

namespace {

struct BnGeom {
  int64_t n = 0, c = 0, s = 0;
};

// The sizes of an x that passed the batch_norm contract (Note [op table]).
BnGeom geometry(const Tensor& x, const char* op) { return {x.size(0), x.size(1), x.size(2)}; }

Tensor scratch(int64_t n, DType dtype, Device device) {
  CategoryScope workspace(MemoryCategory::workspace);
  return Tensor::empty({n}, TensorOptions().dtype(dtype).device(device));
}

// `t` as a contiguous [C] tensor of `dtype`: itself when it already is one, else a cast copy;
// undefined stays undefined.
Tensor param_in(Backend& be, const Tensor& t, DType dtype) {
  if (!t.defined() || (t.dtype() == dtype && t.is_contiguous())) return t;
  Tensor out = scratch(t.numel(), dtype, t.device());
  be.copy(out, t);
  return out;
}

// A contiguous [C] buffer of `dtype` for results bound for `t`: `t` itself when it is one, a
// temporary otherwise (param_back then casts it into `t`); undefined stays undefined.
Tensor param_out(const Tensor& t, DType dtype) {
  if (!t.defined() || (t.dtype() == dtype && t.is_contiguous())) return t;
  return scratch(t.numel(), dtype, t.device());
}

void param_back(Backend& be, const Tensor& t, const Tensor& buffer) {
  if (t.defined() && !buffer.is_same(t)) be.copy(t, buffer);
}

Tensor filled(Backend& be, int64_t c, DType dtype, Device device, double value) {
  Tensor t = scratch(c, dtype, device);
  be.fill(t, value);
  return t;
}

// Whether cuDNN's batch norm takes this call (the list at the top of the file).
bool cudnn_takes(const Tensor& x, const BnGeom& g, bool training, double eps) {
  constexpr int64_t kMaxBatchTraining = 880801, kMaxBatchEval = 65535;
  const DType dt = x.dtype();
  return cudnn_batch_norm() && (dt == DType::f32 || dt == DType::f16 || dt == DType::f64) && x.numel() > 0 &&
         x.numel() < INT_MAX && g.n <= (training ? kMaxBatchTraining : kMaxBatchEval) && eps >= CUDNN_BN_MIN_EPSILON;
}

// cuDNN's parameter dtype for the data dtype.
DType cudnn_param_dtype(DType data) { return data == DType::f64 ? DType::f64 : DType::f32; }

// The scaling factors cuDNN reads from host memory: double for double data, float otherwise.
struct Scaling {
  double one_d = 1.0, zero_d = 0.0;
  float one_f = 1.0f, zero_f = 0.0f;
  const void* one(DType data) const { return data == DType::f64 ? static_cast<const void*>(&one_d) : &one_f; }
  const void* zero(DType data) const { return data == DType::f64 ? static_cast<const void*>(&zero_d) : &zero_f; }
};

// x (and y, dy, dx) as [N, C, S, 1]; the parameters as [1, C, 1, 1].
struct BnDescriptors {
  TensorDescriptor data, param;
  BnDescriptors(const BnGeom& g, DType dtype, const char* op) {
    data.set_nchw(cudnn_dtype(dtype, op), static_cast<int>(g.n), static_cast<int>(g.c), static_cast<int>(g.s), 1);
    param.set_nchw(cudnn_dtype(cudnn_param_dtype(dtype), op), 1, static_cast<int>(g.c), 1, 1);
  }
};

void forward_cudnn(Backend& be, const KernelScope& scope, const BnGeom& g, const Tensor& x, const Tensor& weight,
                   const Tensor& bias, const Tensor& running_mean, const Tensor& running_var, bool training,
                   double momentum, double eps, const Tensor& y, const Tensor& save_mean, const Tensor& save_invstd,
                   const char* op) {
  const Device dev = x.device();
  const DType P = cudnn_param_dtype(x.dtype());
  const BnDescriptors d(g, x.dtype(), op);
  const Scaling s;
  const Tensor w = weight.defined() ? param_in(be, weight, P) : filled(be, g.c, P, dev, 1.0);
  const Tensor b = bias.defined() ? param_in(be, bias, P) : filled(be, g.c, P, dev, 0.0);
  cudnnHandle_t handle = cudnn_handle(dev, scope.stream());
  if (training) {
    // cuDNN updates both running statistics or neither: a missing one gets a throwaway buffer.
    Tensor rm = param_in(be, running_mean, P), rv = param_in(be, running_var, P);
    if (rm.defined() != rv.defined()) {
      if (!rm.defined()) rm = filled(be, g.c, P, dev, 0.0);
      if (!rv.defined()) rv = filled(be, g.c, P, dev, 1.0);
    }
    const Tensor sm = param_out(save_mean, P), si = param_out(save_invstd, P);
    HR_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
        handle, CUDNN_BATCHNORM_SPATIAL, s.one(x.dtype()), s.zero(x.dtype()), d.data.get(), x.raw_data(), d.data.get(),
        y.raw_data(), d.param.get(), w.raw_data(), b.raw_data(), momentum, rm.defined() ? rm.raw_data() : nullptr,
        rv.defined() ? rv.raw_data() : nullptr, eps, sm.raw_data(), si.raw_data()));
    param_back(be, running_mean, rm);
    param_back(be, running_var, rv);
    param_back(be, save_mean, sm);
    param_back(be, save_invstd, si);
  } else {
    const Tensor rm = param_in(be, running_mean, P), rv = param_in(be, running_var, P);
    HR_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
        handle, CUDNN_BATCHNORM_SPATIAL, s.one(x.dtype()), s.zero(x.dtype()), d.data.get(), x.raw_data(), d.data.get(),
        y.raw_data(), d.param.get(), w.raw_data(), b.raw_data(), rm.raw_data(), rv.raw_data(), eps));
    bn_eval_finalize(scope, Tensor(), Tensor(), rm, rv, eps, save_mean, save_invstd, Tensor());
  }
}

void forward_own(Backend& be, const KernelScope& scope, const BnGeom& g, const Tensor& x, const Tensor& weight,
                 const Tensor& bias, const Tensor& running_mean, const Tensor& running_var, bool training,
                 double momentum, double eps, const Tensor& y, const Tensor& save_mean, const Tensor& save_invstd) {
  const Device dev = x.device();
  const Tensor w = param_in(be, weight, DType::f64), b = param_in(be, bias, DType::f64);
  const Tensor rm = param_in(be, running_mean, DType::f64), rv = param_in(be, running_var, DType::f64);
  const Tensor coef = scratch(3 * g.c, DType::f64, dev);
  if (training) {
    const Tensor sums = scratch(2 * g.c, DType::f64, dev);
    bn_channel_sums(scope, x, Tensor(), Tensor(), Tensor(), sums);
    bn_training_finalize(scope, x, sums, w, b, rm, rv, momentum, eps, save_mean, save_invstd, coef);
    param_back(be, running_mean, rm);
    param_back(be, running_var, rv);
  } else {
    bn_eval_finalize(scope, w, b, rm, rv, eps, save_mean, save_invstd, coef);
  }
  bn_apply_forward(scope, x, coef, y);
}

void backward_cudnn(Backend& be, const KernelScope& scope, const BnGeom& g, const Tensor& dy, const Tensor& x,
                    const Tensor& weight, const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                    const Tensor& dweight, const Tensor& dbias, const char* op) {
  const Device dev = x.device();
  const DType P = cudnn_param_dtype(x.dtype());
  const BnDescriptors d(g, x.dtype(), op);
  const Scaling s;
  const Tensor w = weight.defined() ? param_in(be, weight, P) : filled(be, g.c, P, dev, 1.0);
  const Tensor dw = dweight.defined() ? param_out(dweight, P) : scratch(g.c, P, dev);
  const Tensor db = dbias.defined() ? param_out(dbias, P) : scratch(g.c, P, dev);
  const Tensor sm = param_in(be, save_mean, P), si = param_in(be, save_invstd, P);
  // epsilon only matters to cuDNN when no saved statistics are given; they always are here.
  const double eps = std::max(CUDNN_BN_MIN_EPSILON, 1e-5);
  HR_CUDNN_CHECK(cudnnBatchNormalizationBackward(
      cudnn_handle(dev, scope.stream()), CUDNN_BATCHNORM_SPATIAL, s.one(x.dtype()), s.zero(x.dtype()), s.one(x.dtype()),
      s.zero(x.dtype()), d.data.get(), x.raw_data(), d.data.get(), dy.raw_data(), d.data.get(), dx.raw_data(),
      d.param.get(), w.raw_data(), dw.raw_data(), db.raw_data(), eps, sm.raw_data(), si.raw_data()));
  param_back(be, dweight, dw);
  param_back(be, dbias, db);
}

void backward_own(Backend& be, const KernelScope& scope, const BnGeom& g, const Tensor& dy, const Tensor& x,
                  const Tensor& weight, const Tensor& save_mean, const Tensor& save_invstd, bool training,
                  const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  const Device dev = x.device();
  const bool need_sums = dweight.defined() || dbias.defined() || (training && dx.defined());
  Tensor sums;
  if (need_sums) {
    sums = scratch(2 * g.c, DType::f64, dev);
    bn_channel_sums(scope, x, dy, save_mean, save_invstd, sums);
  }
  const Tensor w = param_in(be, weight, DType::f64);
  const Tensor dw = param_out(dweight, DType::f64), db = param_out(dbias, DType::f64);
  const Tensor coef = scratch(4 * g.c, DType::f64, dev);
  bn_backward_finalize(scope, sums, w, save_mean, save_invstd, training, g.n * g.s, dw, db, coef);
  param_back(be, dweight, dw);
  param_back(be, dbias, db);
  if (dx.defined()) bn_apply_backward(scope, dy, x, coef, dx);
}

}  // namespace

void CudaBackend::impl_batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                          const Tensor& running_mean, const Tensor& running_var, bool training,
                                          double momentum, double eps, const Tensor& y, const Tensor& save_mean,
                                          const Tensor& save_invstd) {
  const char* op = "cuda batch_norm";
  const BnGeom g = geometry(x, op);
  (void)cudnn_dtype(x.dtype(), op);  // a DTypeError for non-float data
  // The rest of the contract is checked by Backend::batch_norm_forward (Note [op table]).
  if (g.c == 0) return;
  KernelScope scope(x);
  if (cudnn_takes(x, g, training, eps)) {
    forward_cudnn(*this, scope, g, x, weight, bias, running_mean, running_var, training, momentum, eps, y, save_mean,
                  save_invstd, op);
  } else {
    forward_own(*this, scope, g, x, weight, bias, running_mean, running_var, training, momentum, eps, y, save_mean,
                save_invstd);
  }
}

void CudaBackend::impl_batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                           const Tensor& save_mean, const Tensor& save_invstd, bool training,
                                           const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  const char* op = "cuda batch_norm backward";
  const BnGeom g = geometry(x, op);
  (void)cudnn_dtype(x.dtype(), op);
  // The rest of the contract is checked by Backend::batch_norm_backward (Note [op table]).
  if (g.c == 0) return;
  if (!dx.defined() && !dweight.defined() && !dbias.defined()) return;
  if (x.numel() == 0) {  // no values: the parameter gradients are empty sums
    if (dweight.defined()) fill(dweight, 0.0);
    if (dbias.defined()) fill(dbias, 0.0);
    return;
  }
  KernelScope scope(x);
  if (training && dx.defined() && cudnn_takes(x, g, true, CUDNN_BN_MIN_EPSILON)) {
    backward_cudnn(*this, scope, g, dy, x, weight, save_mean, save_invstd, dx, dweight, dbias, op);
  } else {
    backward_own(*this, scope, g, dy, x, weight, save_mean, save_invstd, training, dx, dweight, dbias);
  }
}

}  // namespace headroom::cuda

#pragma GCC diagnostic pop
