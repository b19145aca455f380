// Softmax, log-softmax and the fused softmax cross-entropy on the GPU.
//
// A contiguous tensor is seen as [outer, n, inner] around the softmax dim, as on the CPU.
//  - inner == 1 (the last dim, the common case): rows are contiguous; a warp takes a row of up
//    to kWarpRowMax elements, a whole block a longer one, so every load is coalesced and the
//    row's statistics combine with shuffles (and shared memory across a block's warps).
//  - inner > 1: a thread per (outer, inner) column walks the n elements at stride inner, so a
//    warp reads 32 neighbouring columns at once; threadIdx.y splits long columns, combined in
//    shared memory.
// Forward reads x twice: one pass keeps a running maximum and the sum of exp(x - max) rescaled
// whenever the maximum grows (online softmax; numerically the same as subtracting the row's
// maximum first), the second writes y. NaN and infinity behave as on the CPU: a NaN or a +inf
// in a row makes the row NaN, a -inf gives 0 (log: -inf), an all -inf row is NaN.
// f16/bf16 are read into f32 and rounded once when written; f32 computes in f32, f64 in f64.
// Backward: softmax dx = y * (dy - sum(dy * y)); log-softmax dx = dy - exp(y) * sum(dy).
//
// Cross-entropy is fused: a row kernel gives logsumexp (saved in lse: f32, f64 for f64 logits) and the loss
// lse - logits[target] in one read of the row; backward is elementwise, rebuilding softmax as
// exp(logits - lse), so no [N, C] probability tensor lives between forward and backward. A
// negative target is ignored (loss 0, gradient 0). The CPU throws a ValueError for a target
// >= C; a kernel cannot throw, and checking on the host would mean copying the targets back
// and waiting for the stream, so here such a row is treated like an ignored one (loss 0,
// gradient 0) and never read out of bounds. The range check belongs to the caller
// (autograd/functions/nn_ops.cpp already synchronises once for the negative-target check).
// Every output is written (=).
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/row_ops.cuh"

namespace headroom::cuda {

namespace {

using kernels::softmax_geometry;
using kernels::SoftmaxGeometry;

constexpr int64_t kMaxGrid = kMaxRowGrid;

// Running maximum m and sum s of exp(v - m) over a stream of values (online softmax).
template <typename C>
struct MaxSum {
  C m, s;

  __device__ static MaxSum empty() { return {neg_inf<C>(), C(0)}; }
  __device__ void add(C v) {
    if (v > m) {
      // exp(v - v): 1, or NaN for v = +inf, as the CPU's exp(inf - inf).
      s = s * dev_exp(m - v) + dev_exp(v - v);
      m = v;
    } else if (v != neg_inf<C>()) {
      s += dev_exp(v - m);  // a NaN v makes s NaN; -inf adds exactly 0 and is skipped
    }
  }
  // Commutative, so every lane of a butterfly ends with the same bits. m is never NaN.
  __device__ static MaxSum merge(MaxSum a, MaxSum b) {
    const C m = a.m > b.m ? a.m : b.m;
    if (m == neg_inf<C>()) return {m, a.s + b.s};
    return {m, a.s * dev_exp(a.m - m) + b.s * dev_exp(b.m - m)};
  }
};

template <typename C>
__device__ __forceinline__ MaxSum<C> warp_max_sum(MaxSum<C> v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = MaxSum<C>::merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  return v;
}

// The row's running max and sum, in every lane (Rows<kBlockRow>). `sm`, `ss` hold 32 values each.
template <bool kBlockRow, typename C>
__device__ MaxSum<C> row_max_sum(MaxSum<C> v, C* sm, C* ss) {
  v = warp_max_sum(v);
  if constexpr (kBlockRow) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    __syncthreads();  // sm/ss may still be read for the previous row
    if (lane == 0) {
      sm[warp] = v.m;
      ss[warp] = v.s;
    }
    __syncthreads();
    v = lane < warps ? MaxSum<C>{sm[lane], ss[lane]} : MaxSum<C>::empty();
    v = warp_max_sum(v);
  }
  return v;
}

// Column launches: threadIdx.x walks columns, threadIdx.y (a power of two) splits each
// column's n elements. Combines per-thread values over threadIdx.y in shared[blockDim], result
// in every thread of the column. Called by the whole block.
template <typename C, typename F>
__device__ C column_combine(C v, C* shared, F combine) {
  if (blockDim.y == 1) return v;
  const int i = threadIdx.y * blockDim.x + threadIdx.x;
  __syncthreads();  // shared may still be read for the previous columns
  shared[i] = v;
  for (int step = blockDim.y / 2; step > 0; step >>= 1) {
    __syncthreads();
    if (static_cast<int>(threadIdx.y) < step) shared[i] = combine(shared[i], shared[i + step * blockDim.x]);
  }
  __syncthreads();
  return shared[threadIdx.x];
}

struct ColumnGeometry {
  int64_t columns, n, inner;
  // Offset of column c's first element: its outer slice, then its inner position.
  __device__ int64_t base(int64_t c) const { return (c / inner) * n * inner + c % inner; }
};

// ---- softmax forward ----

template <typename T, bool kBlockRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_forward_rows(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n, bool log) {
  using C = acc_type<T>;
  using R = Rows<kBlockRow>;
  __shared__ C sm[32], ss[32];
  const int lane = R::lane(), lanes = R::lanes();
  for (int64_t r = R::first(); r < rows; r += R::step()) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    MaxSum<C> st = MaxSum<C>::empty();
    for (int64_t j = lane; j < n; j += lanes) st.add(convert<C>(xr[j]));
    st = row_max_sum<kBlockRow>(st, sm, ss);
    if (log) {
      // (x - max) - log(sum), not x - (max + log(sum)), which would lose the digits of large
      // logits (as on the CPU).
      const C log_sum = dev_log(st.s);
      for (int64_t j = lane; j < n; j += lanes) yr[j] = convert<T>((convert<C>(xr[j]) - st.m) - log_sum);
    } else {
      const C inv = C(1) / st.s;
      for (int64_t j = lane; j < n; j += lanes) yr[j] = convert<T>(dev_exp(convert<C>(xr[j]) - st.m) * inv);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    softmax_forward_columns(const T* __restrict__ x, T* __restrict__ y, ColumnGeometry g, bool log) {
  using C = acc_type<T>;
  __shared__ C sm[kBlock], ss[kBlock];
  // The column loop is uniform over the block (blockIdx only), so all threads synchronise.
  for (int64_t c0 = blockIdx.x * static_cast<int64_t>(blockDim.x); c0 < g.columns;
       c0 += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = c0 + threadIdx.x;
    const bool active = c < g.columns;
    const int64_t base = active ? g.base(c) : 0;
    MaxSum<C> st = MaxSum<C>::empty();
    if (active)
      for (int64_t j = threadIdx.y; j < g.n; j += blockDim.y) st.add(convert<C>(x[base + j * g.inner]));
    if (blockDim.y > 1) {
      // Two arrays, one combine: merge pairs in place over threadIdx.y.
      const int i = threadIdx.y * blockDim.x + threadIdx.x;
      __syncthreads();
      sm[i] = st.m;
      ss[i] = st.s;
      for (int step = blockDim.y / 2; step > 0; step >>= 1) {
        __syncthreads();
        if (static_cast<int>(threadIdx.y) < step) {
          const int k = i + step * blockDim.x;
          const MaxSum<C> v = MaxSum<C>::merge({sm[i], ss[i]}, {sm[k], ss[k]});
          sm[i] = v.m;
          ss[i] = v.s;
        }
      }
      __syncthreads();
      st = {sm[threadIdx.x], ss[threadIdx.x]};
    }
    if (!active) continue;
    if (log) {
      const C log_sum = dev_log(st.s);
      for (int64_t j = threadIdx.y; j < g.n; j += blockDim.y) {
        const int64_t o = base + j * g.inner;
        y[o] = convert<T>((convert<C>(x[o]) - st.m) - log_sum);
      }
    } else {
      const C inv = C(1) / st.s;
      for (int64_t j = threadIdx.y; j < g.n; j += blockDim.y) {
        const int64_t o = base + j * g.inner;
        y[o] = convert<T>(dev_exp(convert<C>(x[o]) - st.m) * inv);
      }
    }
  }
}

// ---- softmax backward ----

template <typename T, bool kBlockRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_backward_rows(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                          int64_t n, bool log) {
  using C = acc_type<T>;
  using R = Rows<kBlockRow>;
  __shared__ C shared[32];
  const int lane = R::lane(), lanes = R::lanes();
  for (int64_t r = R::first(); r < rows; r += R::step()) {
    const T* yr = y + r * n;
    const T* dyr = dy + r * n;
    T* dxr = dx + r * n;
    C s = 0;
    if (log) {
      for (int64_t j = lane; j < n; j += lanes) s += convert<C>(dyr[j]);
    } else {
      for (int64_t j = lane; j < n; j += lanes) s += convert<C>(dyr[j]) * convert<C>(yr[j]);
    }
    s = R::sum(s, shared);
    if (log) {
      for (int64_t j = lane; j < n; j += lanes)
        dxr[j] = convert<T>(convert<C>(dyr[j]) - dev_exp(convert<C>(yr[j])) * s);
    } else {
      for (int64_t j = lane; j < n; j += lanes) dxr[j] = convert<T>(convert<C>(yr[j]) * (convert<C>(dyr[j]) - s));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock) softmax_backward_columns(const T* __restrict__ y, const T* __restrict__ dy,
                                                                   T* __restrict__ dx, ColumnGeometry g, bool log) {
  using C = acc_type<T>;
  __shared__ C shared[kBlock];
  for (int64_t c0 = blockIdx.x * static_cast<int64_t>(blockDim.x); c0 < g.columns;
       c0 += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = c0 + threadIdx.x;
    const bool active = c < g.columns;
    const int64_t base = active ? g.base(c) : 0;
    C s = 0;
    if (active) {
      for (int64_t j = threadIdx.y; j < g.n; j += blockDim.y) {
        const int64_t o = base + j * g.inner;
        s += log ? convert<C>(dy[o]) : convert<C>(dy[o]) * convert<C>(y[o]);
      }
    }
    s = column_combine(s, shared, [](C a, C b) { return a + b; });
    if (!active) continue;
    for (int64_t j = threadIdx.y; j < g.n; j += blockDim.y) {
      const int64_t o = base + j * g.inner;
      const C yv = convert<C>(y[o]), dyv = convert<C>(dy[o]);
      dx[o] = convert<T>(log ? dyv - dev_exp(yv) * s : yv * (dyv - s));
    }
  }
}

// ---- launch geometry ----

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// 32 neighbouring columns across threadIdx.x (fewer when there are fewer columns), and
// threadIdx.y splitting long columns so that each thread keeps at least 16 elements.
struct ColumnLaunch {
  dim3 grid, block;
};
ColumnLaunch column_launch(const ColumnGeometry& g) {
  const int64_t by_cap = kBlock / std::min<int64_t>(32, pow2_ceil(g.columns));
  int64_t by = 1;
  while (by * 2 <= by_cap && by * 2 * 16 <= g.n) by *= 2;
  const int64_t bx = std::min<int64_t>(pow2_ceil(g.columns), kBlock / by);
  const int64_t blocks = std::min<int64_t>((g.columns + bx - 1) / bx, kMaxGrid);
  return {dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by))};
}

template <typename T>
void softmax_forward_impl(const KernelScope& scope, const Tensor& x, const Tensor& y, const SoftmaxGeometry& g,
                          bool log) {
  const T* px = device_data<const T>(x);
  T* py = device_data<T>(y);
  if (g.inner == 1) {
    const RowLaunch l = row_launch(g.outer, g.n);
    if (l.block_rows)
      softmax_forward_rows<T, true><<<l.grid, l.threads, 0, scope.stream()>>>(px, py, g.outer, g.n, log);
    else softmax_forward_rows<T, false><<<l.grid, l.threads, 0, scope.stream()>>>(px, py, g.outer, g.n, log);
  } else {
    const ColumnGeometry cg{g.outer * g.inner, g.n, g.inner};
    const ColumnLaunch l = column_launch(cg);
    softmax_forward_columns<T><<<l.grid, l.block, 0, scope.stream()>>>(px, py, cg, log);
  }
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void softmax_backward_impl(const KernelScope& scope, const Tensor& y, const Tensor& dy, const Tensor& dx,
                           const SoftmaxGeometry& g, bool log) {
  const T* py = device_data<const T>(y);
  const T* pdy = device_data<const T>(dy);
  T* pdx = device_data<T>(dx);
  if (g.inner == 1) {
    const RowLaunch l = row_launch(g.outer, g.n);
    if (l.block_rows)
      softmax_backward_rows<T, true><<<l.grid, l.threads, 0, scope.stream()>>>(py, pdy, pdx, g.outer, g.n, log);
    else softmax_backward_rows<T, false><<<l.grid, l.threads, 0, scope.stream()>>>(py, pdy, pdx, g.outer, g.n, log);
  } else {
    const ColumnGeometry cg{g.outer * g.inner, g.n, g.inner};
    const ColumnLaunch l = column_launch(cg);
    softmax_backward_columns<T><<<l.grid, l.block, 0, scope.stream()>>>(py, pdy, pdx, cg, log);
  }
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- cross-entropy ----

template <typename T, bool kBlockRow>
__global__ void __launch_bounds__(kMaxRowThreads)
    cross_entropy_forward_rows(const T* __restrict__ x, const int64_t* __restrict__ target, int64_t ts,
                               T* __restrict__ losses, acc_type<T>* __restrict__ lse, int64_t rows, int64_t c) {
  using C = acc_type<T>;
  using R = Rows<kBlockRow>;
  __shared__ C sm[32], ss[32];
  const int lane = R::lane(), lanes = R::lanes();
  for (int64_t r = R::first(); r < rows; r += R::step()) {
    const T* xr = x + r * c;
    MaxSum<C> st = MaxSum<C>::empty();
    for (int64_t j = lane; j < c; j += lanes) st.add(convert<C>(xr[j]));
    st = row_max_sum<kBlockRow>(st, sm, ss);
    if (lane == 0) {
      const C log_sum = dev_log(st.s);
      lse[r] = st.m + log_sum;
      const int64_t t = target[r * ts];
      // t >= c: see the top of the file.
      losses[r] = convert<T>(t < 0 || t >= c ? C(0) : log_sum - (convert<C>(xr[t]) - st.m));
    }
  }
}

// dlogits = dlosses[r] * (exp(logits - lse[r]) - onehot(target[r])); zero for an ignored row.
template <typename T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ x, const int64_t* __restrict__ target, int64_t ts,
                                              const acc_type<T>* __restrict__ lse, const T* __restrict__ dl, int64_t ds,
                                              T* __restrict__ dx, int64_t rows, int64_t c) {
  using C = acc_type<T>;
  const int64_t total = rows * c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / c, j = i - r * c;
    const int64_t t = target[r * ts];
    if (t < 0 || t >= c) {
      dx[i] = convert<T>(C(0));
      continue;
    }
    const C g = convert<C>(dl[r * ds]);
    const C p = dev_exp(convert<C>(x[i]) - lse[r]);
    dx[i] = convert<T>(j == t ? g * (p - C(1)) : g * p);  // the target's entry rounded once
  }
}

template <typename T>
void cross_entropy_forward_impl(const KernelScope& scope, const Tensor& logits, const Tensor& target,
                                const Tensor& losses, const Tensor& lse) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const T* px = device_data<const T>(logits);
  const int64_t* pt = device_data<const int64_t>(target);
  T* pl = device_data<T>(losses);
  acc_type<T>* plse = device_data<acc_type<T>>(lse);  // f32, f64 for f64 (statistics_dtype)
  const RowLaunch l = row_launch(n, c);
  if (l.block_rows)
    cross_entropy_forward_rows<T, true>
        <<<l.grid, l.threads, 0, scope.stream()>>>(px, pt, target.stride(0), pl, plse, n, c);
  else
    cross_entropy_forward_rows<T, false>
        <<<l.grid, l.threads, 0, scope.stream()>>>(px, pt, target.stride(0), pl, plse, n, c);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void cross_entropy_backward_impl(const KernelScope& scope, const Tensor& logits, const Tensor& target,
                                 const Tensor& lse, const Tensor& dlosses, const Tensor& dlogits) {
  const int64_t n = logits.size(0), c = logits.size(1);
  cross_entropy_backward_kernel<T><<<grid_for(n * c), kBlock, 0, scope.stream()>>>(
      device_data<const T>(logits), device_data<const int64_t>(target), target.stride(0),
      device_data<const acc_type<T>>(lse), device_data<const T>(dlosses), dlosses.stride(0), device_data<T>(dlogits), n,
      c);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_softmax_forward(const Tensor& x, const Tensor& y, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  if (x.numel() == 0) return;
  const SoftmaxGeometry g = softmax_geometry(x.shape(), x.dim() == 0 ? 0 : wrap_dim(dim, x.dim(), op));
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op,
                      [&](auto tag) { softmax_forward_impl<typename decltype(tag)::type>(scope, x, y, g, log); });
}

void CudaBackend::impl_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, bool log) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  if (y.numel() == 0) return;
  const SoftmaxGeometry g = softmax_geometry(y.shape(), y.dim() == 0 ? 0 : wrap_dim(dim, y.dim(), op));
  KernelScope scope(y);
  dispatch_cuda_float(y.dtype(), op,
                      [&](auto tag) { softmax_backward_impl<typename decltype(tag)::type>(scope, y, dy, dx, g, log); });
}

void CudaBackend::impl_cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                                             const Tensor& lse) {
  const char* op = "cross_entropy";
  if (logits.size(0) == 0) return;
  KernelScope scope(logits);
  dispatch_cuda_float(logits.dtype(), op, [&](auto tag) {
    cross_entropy_forward_impl<typename decltype(tag)::type>(scope, logits, target, losses, lse);
  });
}

void CudaBackend::impl_cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& lse,
                                              const Tensor& dlosses, const Tensor& dlogits) {
  const char* op = "cross_entropy backward";
  if (logits.numel() == 0) return;
  KernelScope scope(logits);
  dispatch_cuda_float(logits.dtype(), op, [&](auto tag) {
    cross_entropy_backward_impl<typename decltype(tag)::type>(scope, logits, target, lse, dlosses, dlogits);
  });
}

}  // namespace headroom::cuda
