// Layer norm on the GPU: x [M, N] normalised over each row of N, forward and backward in one
// place (llm.c layernorm.cuh, PyTorch's layer_norm_kernel.cu).
//
// Forward: a warp per row up to kWarpRowMax elements, a block per longer row; the mean and
// then the variance about it (two passes, so a large mean does not cancel the digits of a
// small spread) are reduced with shuffles and shared memory; the row is re-read for each pass
// (from L1/L2: a row is at most a few tens of KiB). mean and rstd are written as f32 [M].
// Statistics and per-element arithmetic are in acc_type: f32 for f16/bf16/f32, f64 for f64
// (the CPU keeps its statistics in double; the difference is within f32 rounding).
//
// Backward, with xhat = (x - mean) * rstd and g = dy * weight:
//   dx      = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))      row kernel, like forward
//   dweight = sum_rows(dy * xhat), dbias = sum_rows(dy)             column sums
// The column sums avoid atomics so they are deterministic: a kernel over (column tiles, row
// splits) writes per-split partial sums [splits, N] in acc_type, then a thread per column adds
// its splits in order. The split count depends only on M, never on the GPU. dx, dweight and
// dbias are all written (=), never accumulated: the autograd engine sums fan-in itself.
//
// weight and bias ([N], any float dtype and stride: an f16 input may run with f32 parameters)
// are used directly when they already are contiguous in acc_type, and otherwise converted into
// a small scratch vector first; dweight and dbias may likewise have any float dtype and stride.
// An undefined weight is 1 and an undefined bias 0, as on the CPU.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/row_ops.cuh"

namespace headroom::cuda {

namespace {

constexpr int64_t kMaxGrid = kMaxRowGrid;
constexpr int64_t kMaxParamSplits = 128;  // row splits for the dweight/dbias partial sums
constexpr int64_t kMinSplitRows = 32;     // rows a split should get at least
constexpr int kParamTileX = 32, kParamTileY = 8;

template <typename C>
__device__ __forceinline__ C dev_sqrt(C v) {
  if constexpr (std::is_same_v<C, float>) return sqrtf(v);
  else return sqrt(v);
}

// Element i of a float vector of runtime dtype, as C (small per-feature vectors only).
template <typename C>
__device__ C load_as(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return convert<C>(static_cast<const float*>(p)[i]);
    case DType::f64: return convert<C>(static_cast<const double*>(p)[i]);
    case DType::f16: return convert<C>(static_cast<const __half*>(p)[i]);
    case DType::bf16: return convert<C>(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return C(0);  // the host accepts float dtypes only
  }
}
template <typename C>
__device__ void store_as(void* p, DType dt, int64_t i, C v) {
  switch (dt) {
    case DType::f32: static_cast<float*>(p)[i] = convert<float>(v); break;
    case DType::f64: static_cast<double*>(p)[i] = convert<double>(v); break;
    case DType::f16: static_cast<__half*>(p)[i] = convert<__half>(v); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(p)[i] = convert<__nv_bfloat16>(v); break;
    default: break;  // the host accepts float dtypes only
  }
}

template <typename C>
__global__ void vector_to_acc_kernel(const void* __restrict__ src, DType dt, int64_t stride, C* __restrict__ dst,
                                     int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = load_as<C>(src, dt, i * stride);
}

// ---- forward ----

// w, b: acc_type vectors or null (1 and 0); affine: either is defined (as on the CPU, the
// affine form is (x - mean) * rstd * w + b).
template <typename T, bool kBlockRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    layer_norm_forward_rows(const T* __restrict__ x, const acc_type<T>* __restrict__ w,
                            const acc_type<T>* __restrict__ b, bool affine, acc_type<T> eps, T* __restrict__ y,
                            acc_type<T>* __restrict__ mean, acc_type<T>* __restrict__ rstd, int64_t m, int64_t n) {
  using C = acc_type<T>;
  using R = Rows<kBlockRow>;
  __shared__ C shared[32];
  const int lane = R::lane(), lanes = R::lanes();
  for (int64_t r = R::first(); r < m; r += R::step()) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    C s = 0;
    for (int64_t j = lane; j < n; j += lanes) s += convert<C>(xr[j]);
    const C mu = R::sum(s, shared) / static_cast<C>(n);
    C ss = 0;
    for (int64_t j = lane; j < n; j += lanes) {
      const C d = convert<C>(xr[j]) - mu;
      ss += d * d;
    }
    const C rs = C(1) / dev_sqrt(R::sum(ss, shared) / static_cast<C>(n) + eps);
    if (lane == 0) {
      mean[r] = mu;  // f32, or f64 for f64 data (Note [statistics dtype])
      rstd[r] = rs;
    }
    if (affine) {
      for (int64_t j = lane; j < n; j += lanes)
        yr[j] = convert<T>((convert<C>(xr[j]) - mu) * rs * (w ? w[j] : C(1)) + (b ? b[j] : C(0)));
    } else {
      for (int64_t j = lane; j < n; j += lanes) yr[j] = convert<T>((convert<C>(xr[j]) - mu) * rs);
    }
  }
}

// ---- backward ----

template <typename T, bool kBlockRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    layer_norm_backward_dx_rows(const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ w,
                                const acc_type<T>* __restrict__ mean, const acc_type<T>* __restrict__ rstd,
                                T* __restrict__ dx, int64_t m, int64_t n) {
  using C = acc_type<T>;
  using R = Rows<kBlockRow>;
  __shared__ C shared[32];
  const int lane = R::lane(), lanes = R::lanes();
  for (int64_t r = R::first(); r < m; r += R::step()) {
    const T* xr = x + r * n;
    const T* dyr = dy + r * n;
    T* dxr = dx + r * n;
    const C mu = static_cast<C>(mean[r]), rs = static_cast<C>(rstd[r]);
    C sum_g = 0, sum_gx = 0;
    for (int64_t j = lane; j < n; j += lanes) {
      const C xh = (convert<C>(xr[j]) - mu) * rs;
      const C g = convert<C>(dyr[j]) * (w ? w[j] : C(1));
      sum_g += g;
      sum_gx += g * xh;
    }
    const C mg = R::sum(sum_g, shared) / static_cast<C>(n);
    const C mgx = R::sum(sum_gx, shared) / static_cast<C>(n);
    for (int64_t j = lane; j < n; j += lanes) {
      const C xh = (convert<C>(xr[j]) - mu) * rs;
      const C g = convert<C>(dyr[j]) * (w ? w[j] : C(1));
      dxr[j] = convert<T>(rs * (g - mg - xh * mgx));
    }
  }
}

// Partial column sums of dy * xhat and dy over the rows of split blockIdx.y: threadIdx.x walks
// columns (coalesced), threadIdx.y rows; part_w/part_b are [splits, n].
template <typename T>
__global__ void __launch_bounds__(kParamTileX* kParamTileY)
    layer_norm_param_partials(const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean,
                              const acc_type<T>* __restrict__ rstd, acc_type<T>* __restrict__ part_w,
                              acc_type<T>* __restrict__ part_b, int64_t m, int64_t n, int64_t rows_per_split) {
  using C = acc_type<T>;
  __shared__ C sw[kParamTileX * kParamTileY], sb[kParamTileX * kParamTileY];
  const int64_t split = blockIdx.y;
  const int64_t r0 = split * rows_per_split, r1 = min(m, r0 + rows_per_split);
  const int i = threadIdx.y * blockDim.x + threadIdx.x;
  // The column loop is uniform over the block (blockIdx only), so all threads synchronise.
  for (int64_t c0 = blockIdx.x * static_cast<int64_t>(blockDim.x); c0 < n;
       c0 += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = c0 + threadIdx.x;
    const bool active = j < n;
    C aw = 0, ab = 0;
    if (active) {
      for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
        const C d = convert<C>(dy[r * n + j]);
        const C xh = (convert<C>(x[r * n + j]) - static_cast<C>(mean[r])) * static_cast<C>(rstd[r]);
        aw += d * xh;
        ab += d;
      }
    }
    __syncthreads();  // sw/sb may still be read for the previous columns
    sw[i] = aw;
    sb[i] = ab;
    for (int step = blockDim.y / 2; step > 0; step >>= 1) {
      __syncthreads();
      if (static_cast<int>(threadIdx.y) < step) {
        sw[i] += sw[i + step * blockDim.x];
        sb[i] += sb[i + step * blockDim.x];
      }
    }
    // Row 0 of the tile reads back what it wrote itself last.
    if (threadIdx.y == 0 && active) {
      part_w[split * n + j] = sw[i];
      part_b[split * n + j] = sb[i];
    }
  }
}

// A thread per column adds its `splits` partial sums in order and writes dweight/dbias (either
// may be null) in their own dtype and stride. splits == 0 (no rows) writes zeros.
template <typename C>
__global__ void layer_norm_param_finalize(const C* __restrict__ part_w, const C* __restrict__ part_b, int64_t splits,
                                          int64_t n, void* dweight, DType dw_dtype, int64_t dw_stride, void* dbias,
                                          DType db_dtype, int64_t db_stride) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    C sw = 0, sb = 0;
    for (int64_t s = 0; s < splits; ++s) {
      sw += part_w[s * n + j];
      sb += part_b[s * n + j];
    }
    if (dweight) store_as(dweight, dw_dtype, j * dw_stride, sw);
    if (dbias) store_as(dbias, db_dtype, j * db_stride, sb);
  }
}

// ---- host side ----

// t as a contiguous vector of C on the device: t itself when it already is one, else a
// converted scratch copy (held in `keep` until the kernels using it are queued). Null when t
// is undefined.
template <typename C>
const C* acc_vector(const KernelScope& scope, const Tensor& t, int64_t n, Tensor& keep) {
  if (!t.defined()) return nullptr;
  const DType acc_dtype = std::is_same_v<C, double> ? DType::f64 : DType::f32;
  if (t.dtype() == acc_dtype && (t.is_contiguous() || n <= 1)) return device_data<const C>(t);
  keep = Tensor::empty({n}, TensorOptions().dtype(acc_dtype).device(t.device()));
  C* dst = device_data<C>(keep);
  vector_to_acc_kernel<C><<<grid_for(n), kBlock, 0, scope.stream()>>>(t.raw_data(), t.dtype(), t.stride(0), dst, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  return dst;
}

template <typename T>
void layer_norm_forward_impl(const KernelScope& scope, const Tensor& x, const Tensor& weight, const Tensor& bias,
                             double eps, const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  using C = acc_type<T>;
  const int64_t m = x.size(0), n = x.size(1);
  Tensor keep_w, keep_b;
  const C* w = acc_vector<C>(scope, weight, n, keep_w);
  const C* b = acc_vector<C>(scope, bias, n, keep_b);
  const bool affine = weight.defined() || bias.defined();
  const T* px = device_data<const T>(x);
  T* py = device_data<T>(y);
  C* pm = device_data<C>(mean);
  C* pr = device_data<C>(rstd);
  const RowLaunch l = row_launch(m, n);
  if (l.block_rows)
    layer_norm_forward_rows<T, true>
        <<<l.grid, l.threads, 0, scope.stream()>>>(px, w, b, affine, static_cast<C>(eps), py, pm, pr, m, n);
  else
    layer_norm_forward_rows<T, false>
        <<<l.grid, l.threads, 0, scope.stream()>>>(px, w, b, affine, static_cast<C>(eps), py, pm, pr, m, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void layer_norm_backward_impl(const KernelScope& scope, const Tensor& dy, const Tensor& x, const Tensor& weight,
                              const Tensor& mean, const Tensor& rstd, const Tensor& dx, const Tensor& dweight,
                              const Tensor& dbias) {
  using C = acc_type<T>;
  const int64_t m = x.size(0), n = x.size(1);
  const T* pdy = device_data<const T>(dy);
  const T* px = device_data<const T>(x);
  const C* pm = device_data<const C>(mean);
  const C* pr = device_data<const C>(rstd);
  if (dx.defined() && m > 0) {
    Tensor keep_w;
    const C* w = acc_vector<C>(scope, weight, n, keep_w);
    T* pdx = device_data<T>(dx);
    const RowLaunch l = row_launch(m, n);
    if (l.block_rows)
      layer_norm_backward_dx_rows<T, true><<<l.grid, l.threads, 0, scope.stream()>>>(pdy, px, w, pm, pr, pdx, m, n);
    else layer_norm_backward_dx_rows<T, false><<<l.grid, l.threads, 0, scope.stream()>>>(pdy, px, w, pm, pr, pdx, m, n);
    HR_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!dweight.defined() && !dbias.defined()) return;
  // Splits: enough rows each to be worth a block, at most kMaxParamSplits; none for m == 0.
  const int64_t want = std::min<int64_t>(kMaxParamSplits, (m + kMinSplitRows - 1) / kMinSplitRows);
  const int64_t rows_per_split = want > 0 ? (m + want - 1) / want : 0;
  const int64_t splits = want > 0 ? (m + rows_per_split - 1) / rows_per_split : 0;
  const DType acc_dtype = std::is_same_v<C, double> ? DType::f64 : DType::f32;
  Tensor partials;
  C* part_w = nullptr;
  C* part_b = nullptr;
  if (splits > 0) {
    partials = Tensor::empty({2 * splits * n}, TensorOptions().dtype(acc_dtype).device(x.device()));
    part_w = device_data<C>(partials);
    part_b = part_w + splits * n;
    const dim3 block(kParamTileX, kParamTileY);
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((n + kParamTileX - 1) / kParamTileX, kMaxGrid)),
                    static_cast<unsigned>(splits));
    layer_norm_param_partials<T>
        <<<grid, block, 0, scope.stream()>>>(pdy, px, pm, pr, part_w, part_b, m, n, rows_per_split);
    HR_CUDA_KERNEL_LAUNCH_CHECK();
  }
  layer_norm_param_finalize<C><<<grid_for(n), kBlock, 0, scope.stream()>>>(
      part_w, part_b, splits, n, dweight.defined() ? dweight.raw_data() : nullptr,
      dweight.defined() ? dweight.dtype() : DType::f32, dweight.defined() ? dweight.stride(0) : 0,
      dbias.defined() ? dbias.raw_data() : nullptr, dbias.defined() ? dbias.dtype() : DType::f32,
      dbias.defined() ? dbias.stride(0) : 0);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                          const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layer_norm";
  // The arguments are checked by Backend::layer_norm_forward (Note [op table]).
  if (x.size(0) == 0) return;
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op, [&](auto tag) {
    layer_norm_forward_impl<typename decltype(tag)::type>(scope, x, weight, bias, eps, y, mean, rstd);
  });
}

void CudaBackend::impl_layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                           const Tensor& rstd, const Tensor& dx, const Tensor& dweight,
                                           const Tensor& dbias) {
  const char* op = "layer_norm backward";
  // The arguments are checked by Backend::layer_norm_backward (Note [op table]).
  if (x.size(1) == 0) return;  // nothing to write: dx is empty, and so are dweight and dbias
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op, [&](auto tag) {
    layer_norm_backward_impl<typename decltype(tag)::type>(scope, dy, x, weight, mean, rstd, dx, dweight, dbias);
  });
}

}  // namespace headroom::cuda
