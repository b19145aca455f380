// Max and average pooling over 2-d windows (NCHW, contiguous) on the GPU: own kernels, no cuDNN.
//
// Why own kernels: the contract saves max pooling's winners as offsets within their windows
// (u8, or i32 for windows over 256 cells) and hands them to backward instead of x, which
// cuDNN's pooling cannot produce or take;
// average pooling is as simple, and own kernels give it kernels/cpu/pool.cpp's divisor rule
// exactly (count_include_pad: the window clipped to the padded input, else the real elements
// in it) and deterministic gradients.
//
// Forward: a thread per output element (grid-stride), walking its window in row-major order in
// acc_type (f32 for f16/bf16). Max: the first maximum wins, a NaN wins over any number (the first
// NaN), padding is never a candidate; an empty window (only possible when the input plane is
// empty) gives -inf and the offset of cell (h0, max(w_start, 0)), as on the CPU.
// Backward: a thread per INPUT element gathers from the outputs whose windows cover it -- at most
// ceil(k / s) of them per dim -- so every dx element is written (=) exactly once, by one thread,
// without atomics: overlapping windows (stride < kernel) cannot race and results are the same
// bits every run. Max pooling adds the dout of each covering output whose saved offset names this
// element; an offset that names no real cell (never the case for indices made by
// max_pool2d_forward) matches no element and is dropped, where the CPU throws (checking that
// here would need a device-to-host sync).
#include <limits>

#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

struct PoolGeom {
  int64_t planes, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw;
  bool count_include_pad;
};

// The contract's sizes (checked by Backend, Note [op table]) and the parameters the kernels need.
PoolGeom geometry(const char* op, const Tensor& x, const Tensor& out, const Pool2dParams& p) {
  const kernels::PoolShape s = kernels::pool_shape(x, out);
  return {s.planes,   s.H,        s.W,        s.OH,    s.OW,    p.kernel_h,
          p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad};
}

// Output element i -> (plane, oh, ow).
__device__ __forceinline__ void split_output(const PoolGeom& g, int64_t i, int64_t& pl, int64_t& oh, int64_t& ow) {
  ow = i % g.OW;
  const int64_t t = i / g.OW;
  oh = t % g.OH;
  pl = t / g.OH;
}

// The outputs along one dim whose windows cover input position h: [lo, hi] inclusive (empty
// when lo > hi). Window o covers [o * s - p, o * s - p + k).
__device__ __forceinline__ void covering(int64_t h, int64_t k, int64_t s, int64_t p, int64_t out_size, int64_t& lo,
                                         int64_t& hi) {
  const int64_t a = h + p - k;  // o * s > a  <=>  the window's last element reaches h
  lo = a < 0 ? 0 : a / s + 1;
  hi = min((h + p) / s, out_size - 1);
}

// The divisor of average pooling for output (oh, ow) (kernels/cpu/pool.cpp avg_divisor).
__device__ __forceinline__ int64_t avg_divisor(const PoolGeom& g, int64_t oh, int64_t ow) {
  const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
  if (!g.count_include_pad) {
    const int64_t h0 = max(hs, int64_t{0}), h1 = min(hs + g.kh, g.H);
    const int64_t w0 = max(ws, int64_t{0}), w1 = min(ws + g.kw, g.W);
    return (h1 - h0) * (w1 - w0);
  }
  const int64_t he = min(hs + g.kh, g.H + g.ph), we = min(ws + g.kw, g.W + g.pw);
  return (he - hs) * (we - ws);
}

// ---- max pooling ----

template <typename T, typename O>
__global__ void max_pool_forward_kernel(const T* x, T* out, O* indices, PoolGeom g, int64_t n) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pl, oh, ow;
    split_output(g, i, pl, oh, ow);
    const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    const int64_t h0 = max(hs, int64_t{0}), h1 = min(hs + g.kh, g.H);
    const int64_t w0 = max(ws, int64_t{0}), w1 = min(ws + g.kw, g.W);
    const T* plane = x + pl * g.H * g.W;
    A best = -std::numeric_limits<A>::infinity();
    int64_t at_h = h0, at_w = w0;
    bool found = false;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) {
        const A v = convert<A>(plane[h * g.W + w]);
        // The first element; then a strictly larger one, or the first NaN (which then stays).
        if (!found || v > best || (v != v && best == best)) {
          best = v;
          at_h = h;
          at_w = w;
          found = true;
        }
      }
    out[i] = convert<T>(best);
    indices[i] = static_cast<O>((at_h - hs) * g.kw + (at_w - ws));  // the offset within the window
  }
}

template <typename T, typename O>
__global__ void max_pool_backward_kernel(const T* dout, const O* indices, T* dx, PoolGeom g, int64_t n) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % g.W, t = i / g.W, h = t % g.H, pl = t / g.H;
    int64_t oh0, oh1, ow0, ow1;
    covering(h, g.kh, g.sh, g.ph, g.OH, oh0, oh1);
    covering(w, g.kw, g.sw, g.pw, g.OW, ow0, ow1);
    const int64_t base = pl * g.OH * g.OW;
    A acc = A(0);
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const int64_t o = base + oh * g.OW + ow;
        // This element's offset within output o's window.
        const int64_t me = (h - (oh * g.sh - g.ph)) * g.kw + (w - (ow * g.sw - g.pw));
        if (static_cast<int64_t>(indices[o]) == me) acc += convert<A>(dout[o]);
      }
    dx[i] = convert<T>(acc);
  }
}

template <typename T, typename O>
void max_pool_forward_launch(const KernelScope& scope, const Tensor& x, const Tensor& out, const Tensor& indices,
                             const PoolGeom& g) {
  const int64_t n = out.numel();
  max_pool_forward_kernel<T, O><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(x), device_data<T>(out),
                                                                            device_data<O>(indices), g, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void max_pool_forward_impl(const KernelScope& scope, const Tensor& x, const Tensor& out, const Tensor& indices,
                           const PoolGeom& g) {
  if (indices.dtype() == DType::u8) max_pool_forward_launch<T, uint8_t>(scope, x, out, indices, g);
  else max_pool_forward_launch<T, int32_t>(scope, x, out, indices, g);
}

template <typename T, typename O>
void max_pool_backward_launch(const KernelScope& scope, const Tensor& dout, const Tensor& indices, const Tensor& dx,
                              const PoolGeom& g) {
  const int64_t n = dx.numel();
  max_pool_backward_kernel<T, O><<<grid_for(n), kBlock, 0, scope.stream()>>>(
      device_data<T>(dout), device_data<O>(indices), device_data<T>(dx), g, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void max_pool_backward_impl(const KernelScope& scope, const Tensor& dout, const Tensor& indices, const Tensor& dx,
                            const PoolGeom& g) {
  if (indices.dtype() == DType::u8) max_pool_backward_launch<T, uint8_t>(scope, dout, indices, dx, g);
  else max_pool_backward_launch<T, int32_t>(scope, dout, indices, dx, g);
}

// ---- average pooling ----

template <typename T>
__global__ void avg_pool_forward_kernel(const T* x, T* out, PoolGeom g, int64_t n) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pl, oh, ow;
    split_output(g, i, pl, oh, ow);
    const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    const int64_t h0 = max(hs, int64_t{0}), h1 = min(hs + g.kh, g.H);
    const int64_t w0 = max(ws, int64_t{0}), w1 = min(ws + g.kw, g.W);
    const T* plane = x + pl * g.H * g.W;
    A sum = A(0);
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) sum += convert<A>(plane[h * g.W + w]);
    out[i] = convert<T>(sum / static_cast<A>(avg_divisor(g, oh, ow)));
  }
}

template <typename T>
__global__ void avg_pool_backward_kernel(const T* dout, T* dx, PoolGeom g, int64_t n) {
  using A = acc_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % g.W, t = i / g.W, h = t % g.H, pl = t / g.H;
    int64_t oh0, oh1, ow0, ow1;
    covering(h, g.kh, g.sh, g.ph, g.OH, oh0, oh1);
    covering(w, g.kw, g.sw, g.pw, g.OW, ow0, ow1);
    const T* d = dout + pl * g.OH * g.OW;
    A acc = A(0);
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow)
        acc += convert<A>(d[oh * g.OW + ow]) / static_cast<A>(avg_divisor(g, oh, ow));
    dx[i] = convert<T>(acc);
  }
}

template <typename T>
void avg_pool_forward_impl(const KernelScope& scope, const Tensor& x, const Tensor& out, const PoolGeom& g) {
  const int64_t n = out.numel();
  avg_pool_forward_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(x), device_data<T>(out), g, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void avg_pool_backward_impl(const KernelScope& scope, const Tensor& dout, const Tensor& dx, const PoolGeom& g) {
  const int64_t n = dx.numel();
  avg_pool_backward_kernel<T>
      <<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(dout), device_data<T>(dx), g, n);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_max_pool2d_forward(const Tensor& x, const Tensor& out, const Tensor& indices,
                                          const Pool2dParams& p) {
  const char* op = "cuda max_pool2d_forward";
  const PoolGeom g = geometry(op, x, out, p);
  if (out.numel() == 0) return;
  KernelScope scope(x);
  dispatch_cuda_float(
      x.dtype(), op, [&](auto tag) { max_pool_forward_impl<typename decltype(tag)::type>(scope, x, out, indices, g); });
}

void CudaBackend::impl_max_pool2d_backward(const Tensor& dout, const Tensor& indices, const Tensor& dx,
                                           const Pool2dParams& p) {
  const char* op = "cuda max_pool2d_backward";
  const PoolGeom g = geometry(op, dx, dout, p);
  if (dx.numel() == 0) return;
  KernelScope scope(dx);
  dispatch_cuda_float(dx.dtype(), op, [&](auto tag) {
    max_pool_backward_impl<typename decltype(tag)::type>(scope, dout, indices, dx, g);
  });
}

void CudaBackend::impl_avg_pool2d_forward(const Tensor& x, const Tensor& out, const Pool2dParams& p) {
  const char* op = "cuda avg_pool2d_forward";
  const PoolGeom g = geometry(op, x, out, p);
  if (out.numel() == 0) return;
  KernelScope scope(x);
  dispatch_cuda_float(x.dtype(), op,
                      [&](auto tag) { avg_pool_forward_impl<typename decltype(tag)::type>(scope, x, out, g); });
}

void CudaBackend::impl_avg_pool2d_backward(const Tensor& dout, const Tensor& dx, const Pool2dParams& p) {
  const char* op = "cuda avg_pool2d_backward";
  const PoolGeom g = geometry(op, dx, dout, p);
  if (dx.numel() == 0) return;
  KernelScope scope(dx);
  dispatch_cuda_float(dx.dtype(), op,
                      [&](auto tag) { avg_pool_backward_impl<typename decltype(tag)::type>(scope, dout, dx, g); });
}

}  // namespace headroom::cuda
