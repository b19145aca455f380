// Group norm on the GPU: x [N, C, S] normalised per (sample n, group g) over the C/G channels of
// the group and all S positions, forward and backward -- the CPU's formulas
// (kernels/cpu/group_norm.cpp) with these kernels:
//
//   forward      a block per (n, g) row: the group's m = C/G * S values are contiguous, so the
//                block reads them coalesced, reduces the mean and then the variance about it (two
//                passes: a large mean does not cancel the digits of a small spread) with
//                block_sum, writes mean and rstd ([N, G] f32) and y = (x - mean) rstd w[c] + b[c].
//   backward dx  a block per (n, g) row again: the sums of g = dy w[c] and g xhat over the group,
//                then dx = rstd (g - mean(g) - xhat mean(g xhat)).
//   dweight/dbias  a block per channel c: sum over n and s of dy xhat and dy (the plane of each n
//                is contiguous, so the block's threads read it coalesced), reduced with block_sum
//                and stored by thread 0. A channel is summed by one block, each thread over a fixed
//                set of indices and the block reduction in a fixed order, and the grid depends on C
//                only -- no atomics, so the result is the same on every run and every GPU.
// Rows and channels are grid-stride loops whose bounds depend only on blockIdx, so every thread
// of a block reaches each block_sum's __syncthreads.
//
// Statistics and arithmetic are in acc_type (f32 for f16/bf16/f32, f64 for f64); the CPU keeps
// its sums in double, which differs within f32 rounding. weight and bias ([C], any float dtype
// and stride: a 16-bit input runs with f32 parameters under autocast) are used directly when
// already contiguous in acc_type, else converted into a small scratch vector; an undefined
// weight is 1 and an undefined bias 0. dweight and dbias are stored in their own dtype and
// stride. Everything is written (=), never accumulated. Offsets are int64.
#include <algorithm>
#include <type_traits>

#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

constexpr int kGnMaxThreads = 512;
constexpr int64_t kGnMaxGrid = 65535 * 8;

template <typename C>
__device__ __forceinline__ C gn_rsqrt(C v) {
  if constexpr (std::is_same_v<C, float>) return 1.0f / sqrtf(v);
  else return 1.0 / sqrt(v);
}

// Threads for a block that reduces `len` values: 512 for long reductions, else 256.
unsigned gn_threads(int64_t len) { return static_cast<unsigned>(len >= 8192 ? kGnMaxThreads : kBlock); }
unsigned gn_grid(int64_t items) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(items, kGnMaxGrid))); }

// Element i of a small float vector of runtime dtype (weight, bias), as C; and the reverse.
template <typename C>
__device__ C gn_load(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return convert<C>(static_cast<const float*>(p)[i]);
    case DType::f64: return convert<C>(static_cast<const double*>(p)[i]);
    case DType::f16: return convert<C>(static_cast<const __half*>(p)[i]);
    case DType::bf16: return convert<C>(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return C(0);  // the host admits float dtypes only
  }
}
template <typename C>
__device__ void gn_store(void* p, DType dt, int64_t i, C v) {
  switch (dt) {
    case DType::f32: static_cast<float*>(p)[i] = convert<float>(v); break;
    case DType::f64: static_cast<double*>(p)[i] = convert<double>(v); break;
    case DType::f16: static_cast<__half*>(p)[i] = convert<__half>(v); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(p)[i] = convert<__nv_bfloat16>(v); break;
    default: break;
  }
}

template <typename C>
__global__ void gn_param_to_acc_kernel(const void* __restrict__ src, DType dt, int64_t stride, C* __restrict__ dst,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = gn_load<C>(src, dt, i * stride);
}

// ---- forward: a block per (n, g) ----

template <typename T>
__global__ void __launch_bounds__(kGnMaxThreads)
    gn_forward_kernel(const T* __restrict__ x, const acc_type<T>* __restrict__ w, const acc_type<T>* __restrict__ b,
                      acc_type<T> eps, T* __restrict__ y, acc_type<T>* __restrict__ mean,
                      acc_type<T>* __restrict__ rstd, int64_t rows, int64_t groups, int64_t cg, int64_t s) {
  using C = acc_type<T>;
  __shared__ C shared[32];
  const int64_t m = cg * s;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * m;
    T* yr = y + r * m;
    C sum = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) sum += convert<C>(xr[j]);
    const C mu = block_sum(sum, shared) / static_cast<C>(m);
    C ss = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const C d = convert<C>(xr[j]) - mu;
      ss += d * d;
    }
    const C rs = gn_rsqrt(block_sum(ss, shared) / static_cast<C>(m) + eps);
    if (threadIdx.x == 0) {
      mean[r] = mu;  // f32, or f64 for f64 data (Note [statistics dtype])
      rstd[r] = rs;
    }
    const int64_t c0 = (r % groups) * cg;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const int64_t ch = c0 + j / s;
      const C scale = w ? rs * w[ch] : rs;
      yr[j] = convert<T>((convert<C>(xr[j]) - mu) * scale + (b ? b[ch] : C(0)));
    }
  }
}

// ---- backward ----

template <typename T>
__global__ void __launch_bounds__(kGnMaxThreads)
    gn_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ w,
                          const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ rstd,
                          T* __restrict__ dx, int64_t rows, int64_t groups, int64_t cg, int64_t s) {
  using C = acc_type<T>;
  __shared__ C shared[32];
  const int64_t m = cg * s;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * m;
    const T* dyr = dy + r * m;
    T* dxr = dx + r * m;
    const int64_t c0 = (r % groups) * cg;
    const C mu = static_cast<C>(mean[r]), rs = static_cast<C>(rstd[r]);
    C sum_g = 0, sum_gx = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const C g = convert<C>(dyr[j]) * (w ? w[c0 + j / s] : C(1));
      sum_g += g;
      sum_gx += g * ((convert<C>(xr[j]) - mu) * rs);
    }
    const C mg = block_sum(sum_g, shared) / static_cast<C>(m);
    const C mgx = block_sum(sum_gx, shared) / static_cast<C>(m);
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const C g = convert<C>(dyr[j]) * (w ? w[c0 + j / s] : C(1));
      const C xh = (convert<C>(xr[j]) - mu) * rs;
      dxr[j] = convert<T>(rs * (g - mg - xh * mgx));
    }
  }
}

// dweight[c] = sum_(n,s) dy xhat, dbias[c] = sum_(n,s) dy: a block per channel, no atomics.
template <typename T>
__global__ void __launch_bounds__(kGnMaxThreads)
    gn_backward_param_kernel(const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean,
                             const acc_type<T>* __restrict__ rstd, int64_t n, int64_t channels, int64_t groups,
                             int64_t cg, int64_t s, void* dweight, DType dw_dtype, int64_t dw_stride, void* dbias,
                             DType db_dtype, int64_t db_stride) {
  using C = acc_type<T>;
  __shared__ C shared[32];
  const int64_t count = n * s;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x) {
    const int64_t g = ch / cg;
    C sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t sample = i / s;
      const int64_t off = (sample * channels + ch) * s + (i - sample * s);
      const int64_t r = sample * groups + g;
      const C d = convert<C>(dy[off]);
      sum_dy += d;
      sum_dy_xhat += d * ((convert<C>(x[off]) - static_cast<C>(mean[r])) * static_cast<C>(rstd[r]));
    }
    const C total_dy = block_sum(sum_dy, shared);
    const C total_dy_xhat = block_sum(sum_dy_xhat, shared);
    if (threadIdx.x == 0) {
      if (dweight) gn_store(dweight, dw_dtype, ch * dw_stride, total_dy_xhat);
      if (dbias) gn_store(dbias, db_dtype, ch * db_stride, total_dy);
    }
  }
}

// ---- host side ----

using GnGeom = kernels::GroupNormGeometry;

// t as a contiguous vector of C on the device: t itself when it already is one, else a converted
// scratch copy (held in `keep` until the kernels reading it are queued). Null when undefined.
template <typename C>
const C* acc_param(const KernelScope& scope, const Tensor& t, int64_t c, Tensor& keep) {
  if (!t.defined()) return nullptr;
  const DType acc_dtype = std::is_same_v<C, double> ? DType::f64 : DType::f32;
  if (t.dtype() == acc_dtype && (t.is_contiguous() || c <= 1)) return device_data<const C>(t);
  keep = Tensor::empty({c}, TensorOptions().dtype(acc_dtype).device(t.device()));
  C* dst = device_data<C>(keep);
  gn_param_to_acc_kernel<C><<<grid_for(c), kBlock, 0, scope.stream()>>>(t.raw_data(), t.dtype(), t.stride(0), dst, c);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  return dst;
}

template <typename T>
void group_norm_forward_impl(const KernelScope& scope, const GnGeom& g, const Tensor& x, const Tensor& weight,
                             const Tensor& bias, double eps, const Tensor& y, const Tensor& save_mean,
                             const Tensor& save_rstd) {
  using C = acc_type<T>;
  Tensor keep_w, keep_b;
  const C* w = acc_param<C>(scope, weight, g.c, keep_w);
  const C* b = acc_param<C>(scope, bias, g.c, keep_b);
  const int64_t rows = g.n * g.g;
  gn_forward_kernel<T><<<gn_grid(rows), gn_threads(g.cg * g.s), 0, scope.stream()>>>(
      device_data<const T>(x), w, b, static_cast<C>(eps), device_data<T>(y), device_data<C>(save_mean),
      device_data<C>(save_rstd), rows, g.g, g.cg, g.s);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void group_norm_backward_impl(const KernelScope& scope, const GnGeom& g, const Tensor& dy, const Tensor& x,
                              const Tensor& weight, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& dx,
                              const Tensor& dweight, const Tensor& dbias) {
  using C = acc_type<T>;
  const T* pdy = device_data<const T>(dy);
  const T* px = device_data<const T>(x);
  const C* pm = device_data<const C>(save_mean);
  const C* pr = device_data<const C>(save_rstd);
  if (dx.defined()) {
    Tensor keep_w;
    const C* w = acc_param<C>(scope, weight, g.c, keep_w);
    const int64_t rows = g.n * g.g;
    gn_backward_dx_kernel<T><<<gn_grid(rows), gn_threads(g.cg * g.s), 0, scope.stream()>>>(
        pdy, px, w, pm, pr, device_data<T>(dx), rows, g.g, g.cg, g.s);
    HR_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (dweight.defined() || dbias.defined()) {
    gn_backward_param_kernel<T><<<gn_grid(g.c), gn_threads(g.n * g.s), 0, scope.stream()>>>(
        pdy, px, pm, pr, g.n, g.c, g.g, g.cg, g.s, dweight.defined() ? dweight.raw_data() : nullptr,
        dweight.defined() ? dweight.dtype() : DType::f32, dweight.defined() ? dweight.stride(0) : 0,
        dbias.defined() ? dbias.raw_data() : nullptr, dbias.defined() ? dbias.dtype() : DType::f32,
        dbias.defined() ? dbias.stride(0) : 0);
    HR_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void CudaBackend::impl_group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                                          double eps, const Tensor& y, const Tensor& save_mean,
                                          const Tensor& save_rstd) {
  const char* op = "group_norm";
  const GnGeom g = kernels::group_norm_geometry(x, groups);  // checked by Backend::group_norm_forward
  if (g.n * g.g == 0) return;
  HR_CHECK(g.cg * g.s > 0, ValueError, op, ": cannot normalise groups of size 0 in ", describe(x));
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op, [&](auto tag) {
    group_norm_forward_impl<typename decltype(tag)::type>(scope, g, x, weight, bias, eps, y, save_mean, save_rstd);
  });
}

void CudaBackend::impl_group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                           const Tensor& save_mean, const Tensor& save_rstd, int64_t groups,
                                           const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  const char* op = "group_norm backward";
  const GnGeom g = kernels::group_norm_geometry(x, groups);  // checked by Backend::group_norm_backward
  if (g.c == 0) return;
  if (!dx.defined() && !dweight.defined() && !dbias.defined()) return;
  if (x.numel() == 0 && !dweight.defined() && !dbias.defined()) return;
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op, [&](auto tag) {
    group_norm_backward_impl<typename decltype(tag)::type>(scope, g, dy, x, weight, save_mean, save_rstd, dx, dweight,
                                                           dbias);
  });
}

}  // namespace headroom::cuda
