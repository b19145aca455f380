// Max and average pooling over 2-d windows (NCHW, contiguous), forward and backward.
//
// Every (image, channel) plane is independent, so the work is split over the N*C planes with
// parallel_for. Within a plane the forward passes go one output row at a time and apply each window
// element to the whole row: the row's outputs are independent lanes, so the loops pipeline and
// vectorise where a per-output compare-select chain would not (the windows are small; there is
// nothing for a gemm to do). The backward passes also go plane by plane: each task owns its dx
// plane, accumulates it in f32 (f64 for f64) and writes it once, so overlapping windows never
// race. Max pooling records the winner's position within its window, kh * kernel_w + kw (the
// first maximum in row-major window order; a NaN wins, as it propagates) as u8 or i32
// (engine/backend.h); padding is never a candidate. Average
// pooling follows count_include_pad: divide by the window clipped to the padded input, or by
// the number of real elements in it. f16/bf16 compute in f32 per element.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kernels/contract_checks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

using PoolGeom = kernels::PoolShape;  // the contract's checks and sizes (kernels/contract_checks.h)

int64_t plane_grain(const PoolGeom& g, const Pool2dParams& p) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, g.OH * g.OW * p.kernel_h * p.kernel_w));
}

// The window of output (oh, ow) clipped to the input: rows [h0, h1), columns [w0, w1).
struct Window {
  int64_t h0, h1, w0, w1;
};
inline Window window(const Pool2dParams& p, const PoolGeom& g, int64_t oh, int64_t ow) {
  const int64_t hs = oh * p.stride_h - p.pad_h, ws = ow * p.stride_w - p.pad_w;
  return {std::max<int64_t>(hs, 0), std::min(hs + p.kernel_h, g.H), std::max<int64_t>(ws, 0),
          std::min(ws + p.kernel_w, g.W)};
}

// The output columns [lo, hi) whose window column kw is a real input column: those with
// 0 <= ow * stride_w - pad_w + kw < W.
inline void valid_columns(const Pool2dParams& p, const PoolGeom& g, int64_t kw, int64_t& lo, int64_t& hi) {
  const int64_t off = kw - p.pad_w;
  lo = off >= 0 ? 0 : (-off + p.stride_w - 1) / p.stride_w;
  hi = g.W - 1 - off < 0 ? 0 : std::min(g.OW, (g.W - 1 - off) / p.stride_w + 1);
  lo = std::min(lo, g.OW);
  hi = std::max(hi, lo);
}

// The divisor of average pooling for output (oh, ow).
inline int64_t avg_divisor(const Pool2dParams& p, const PoolGeom& g, int64_t oh, int64_t ow) {
  const Window win = window(p, g, oh, ow);
  if (!p.count_include_pad) return (win.h1 - win.h0) * (win.w1 - win.w0);
  const int64_t hs = oh * p.stride_h - p.pad_h, ws = ow * p.stride_w - p.pad_w;
  const int64_t he = std::min(hs + p.kernel_h, g.H + p.pad_h), we = std::min(ws + p.kernel_w, g.W + p.pad_w);
  return (he - hs) * (we - ws);
}

// Max pooling of planes [begin, end), one output row at a time, in two passes over the row's
// windows, each applying one window element to the whole row so that the OW outputs are
// independent lanes (the loops vectorise; a per-output compare-select chain would not, and
// branching on random data mispredicts half the time):
//   1. the maxima, with a per-output NaN flag (a NaN wins and stays);
//   2. the winner's index: the window walked backwards, keeping the last element equal to the
//      maximum (or NaN), which is the first one in row-major window order.
// SW is the column stride when it is 1 or 2 (compile-time, so the strided loads vectorise),
// else 0 and p.stride_w is used. Positions are int32 within the plane while searching (the
// width of f32 lanes; planes over 2^31 elements take the int64 path), turned into the offset
// within the window, of type O, when written out.
template <typename T, int SW, typename O, typename I = int32_t>
void max_pool_planes(const T* px, T* po, O* pi, const PoolGeom& g, const Pool2dParams& p, int64_t begin, int64_t end) {
  using C = acc_t<T>;
  if constexpr (std::is_same_v<I, int32_t>) {
    if (g.H * g.W > std::numeric_limits<int32_t>::max()) {
      max_pool_planes<T, SW, O, int64_t>(px, po, pi, g, p, begin, end);
      return;
    }
  }
  const int64_t W = g.W, OW = g.OW, pw = p.pad_w, kwn = p.kernel_w;
  const int64_t sw = SW > 0 ? SW : p.stride_w;
  std::vector<C> best(static_cast<size_t>(OW));
  std::vector<uint8_t> nan(static_cast<size_t>(OW));
  std::vector<I> where(static_cast<size_t>(OW));
  std::vector<int64_t> lo(static_cast<size_t>(kwn)), hi(static_cast<size_t>(kwn));
  for (int64_t kw = 0; kw < kwn; ++kw)
    valid_columns(p, g, kw, lo[static_cast<size_t>(kw)], hi[static_cast<size_t>(kw)]);
  C* b = best.data();
  uint8_t* isnan_row = nan.data();
  I* at = where.data();
  for (int64_t pl = begin; pl < end; ++pl) {
    const T* in = px + pl * g.H * W;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      const int64_t hs = oh * p.stride_h - p.pad_h;
      const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + p.kernel_h, g.H);
      std::fill(b, b + OW, -std::numeric_limits<C>::infinity());
      std::fill(isnan_row, isnan_row + OW, uint8_t(0));
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t kw = 0; kw < kwn; ++kw) {
          const T* row = in + h * W;
          const int64_t off = kw - pw, l = lo[static_cast<size_t>(kw)], r = hi[static_cast<size_t>(kw)];
          for (int64_t ow = l; ow < r; ++ow) {
            const C v = static_cast<C>(row[off + ow * sw]);
            b[ow] = v > b[ow] ? v : b[ow];
            isnan_row[ow] |= static_cast<uint8_t>(v != v);
          }
        }
      for (int64_t ow = 0; ow < OW; ++ow) {
        if (isnan_row[ow]) b[ow] = std::numeric_limits<C>::quiet_NaN();
        at[ow] = static_cast<I>(h0 * W + std::max<int64_t>(ow * sw - pw, 0));  // all -inf: the first
      }
      for (int64_t h = h1; h-- > h0;)
        for (int64_t kw = kwn; kw-- > 0;) {
          const T* row = in + h * W;
          const int64_t off = kw - pw, l = lo[static_cast<size_t>(kw)], r = hi[static_cast<size_t>(kw)];
          const I base = static_cast<I>(h * W + off);
          for (int64_t ow = l; ow < r; ++ow) {
            const C v = static_cast<C>(row[off + ow * sw]);
            const bool hit = (v == b[ow]) | ((v != v) & (b[ow] != b[ow]));
            at[ow] = hit ? static_cast<I>(base + static_cast<I>(ow * sw)) : at[ow];
          }
        }
      T* o = po + (pl * g.OH + oh) * OW;
      O* oi = pi + (pl * g.OH + oh) * OW;
      for (int64_t ow = 0; ow < OW; ++ow) {
        o[ow] = static_cast<T>(b[ow]);
        // Plane position -> window offset (an empty plane, W == 0, keeps the window's first real cell).
        const int64_t ws = ow * sw - pw, pos = static_cast<int64_t>(at[ow]);
        const int64_t h = W > 0 ? pos / W : h0, w = W > 0 ? pos - h * W : std::max<int64_t>(ws, 0);
        oi[ow] = static_cast<O>((h - hs) * kwn + (w - ws));
      }
    }
  }
}

}  // namespace

void CpuBackend::impl_max_pool2d_forward(const Tensor& x, const Tensor& out, const Tensor& indices,
                                         const Pool2dParams& p) {
  const char* op = "cpu max_pool2d_forward";
  const PoolGeom g = kernels::pool_shape(x, out);  // checked by Backend::max_pool2d_forward
  if (out.numel() == 0) return;
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    auto run = [&](auto* pi) {
      using O = std::remove_pointer_t<decltype(pi)>;
      parallel_for(g.planes, plane_grain(g, p), [&](int64_t begin, int64_t end) {
        if (p.stride_w == 1) max_pool_planes<T, 1, O>(px, po, pi, g, p, begin, end);
        else if (p.stride_w == 2) max_pool_planes<T, 2, O>(px, po, pi, g, p, begin, end);
        else max_pool_planes<T, 0, O>(px, po, pi, g, p, begin, end);
      });
    };
    if (indices.dtype() == DType::u8) run(static_cast<uint8_t*>(indices.raw_data()));
    else run(static_cast<int32_t*>(indices.raw_data()));
  });
}

void CpuBackend::impl_max_pool2d_backward(const Tensor& dout, const Tensor& indices, const Tensor& dx,
                                          const Pool2dParams& p) {
  const char* op = "cpu max_pool2d_backward";
  const PoolGeom g = kernels::pool_shape(dx, dout);  // checked by Backend::max_pool2d_backward
  if (dx.numel() == 0) return;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW, cells = p.kernel_h * p.kernel_w;
  std::atomic<bool> bad_found{false};
  std::atomic<int64_t> bad_index{0};
  dispatch_float(dx.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* pd = static_cast<const T*>(dout.raw_data());
    T* px = static_cast<T*>(dx.raw_data());
    auto run = [&](const auto* pi) {
      parallel_for(g.planes, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, HW + OHW)),
                   [&](int64_t begin, int64_t end) {
                     std::vector<C> acc(static_cast<size_t>(HW));
                     for (int64_t pl = begin; pl < end; ++pl) {
                       std::fill(acc.begin(), acc.end(), C(0));
                       for (int64_t o = 0; o < OHW; ++o) {
                         // Window offset -> plane position; one outside the window or on padding is reported
                         // after the parallel region (no throwing inside).
                         const int64_t off = static_cast<int64_t>(pi[pl * OHW + o]);
                         const int64_t oh = o / g.OW, ow = o - oh * g.OW;
                         const int64_t h = oh * p.stride_h - p.pad_h + (off >= 0 ? off / p.kernel_w : 0);
                         const int64_t w = ow * p.stride_w - p.pad_w + (off >= 0 ? off % p.kernel_w : 0);
                         if (off < 0 || off >= cells || h < 0 || h >= g.H || w < 0 || w >= g.W) {
                           bad_index.store(off);
                           bad_found.store(true);
                           continue;
                         }
                         acc[static_cast<size_t>(h * g.W + w)] += static_cast<C>(pd[pl * OHW + o]);
                       }
                       T* d = px + pl * HW;
                       for (int64_t k = 0; k < HW; ++k) d[k] = static_cast<T>(acc[static_cast<size_t>(k)]);
                     }
                   });
    };
    if (indices.dtype() == DType::u8) run(static_cast<const uint8_t*>(indices.raw_data()));
    else run(static_cast<const int32_t*>(indices.raw_data()));
  });
  HR_CHECK(!bad_found.load(), ValueError, op, ": index ", bad_index.load(), " is not a real cell of its ", p.kernel_h,
           "x", p.kernel_w, " window (padding or outside it) in the ", g.H, "x", g.W, " plane");
}

void CpuBackend::impl_avg_pool2d_forward(const Tensor& x, const Tensor& out, const Pool2dParams& p) {
  const PoolGeom g = kernels::pool_shape(x, out);  // checked by Backend::avg_pool2d_forward
  if (out.numel() == 0) return;
  dispatch_float(x.dtype(), "cpu avg_pool2d_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    // Row at a time, like max pooling: OW independent sums.
    parallel_for(g.planes, plane_grain(g, p), [&](int64_t begin, int64_t end) {
      std::vector<C> sum(static_cast<size_t>(g.OW));
      for (int64_t pl = begin; pl < end; ++pl) {
        const T* in = px + pl * g.H * g.W;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          C* acc = sum.data();
          std::fill(acc, acc + g.OW, C(0));
          const int64_t hs = oh * p.stride_h - p.pad_h;
          for (int64_t h = std::max<int64_t>(hs, 0); h < std::min(hs + p.kernel_h, g.H); ++h)
            for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
              int64_t lo, hi;
              valid_columns(p, g, kw, lo, hi);
              const T* row = in + h * g.W;
              const int64_t off = kw - p.pad_w;
              for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += static_cast<C>(row[off + ow * p.stride_w]);
            }
          T* o = po + (pl * g.OH + oh) * g.OW;
          for (int64_t ow = 0; ow < g.OW; ++ow)
            o[ow] = static_cast<T>(acc[ow] / static_cast<C>(avg_divisor(p, g, oh, ow)));
        }
      }
    });
  });
}

void CpuBackend::impl_avg_pool2d_backward(const Tensor& dout, const Tensor& dx, const Pool2dParams& p) {
  const PoolGeom g = kernels::pool_shape(dx, dout);  // checked by Backend::avg_pool2d_backward
  if (dx.numel() == 0) return;
  dispatch_float(dx.dtype(), "cpu avg_pool2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* pd = static_cast<const T*>(dout.raw_data());
    T* px = static_cast<T*>(dx.raw_data());
    const int64_t HW = g.H * g.W;
    parallel_for(g.planes, plane_grain(g, p), [&](int64_t begin, int64_t end) {
      std::vector<C> acc(static_cast<size_t>(HW)), share(static_cast<size_t>(g.OW));
      for (int64_t pl = begin; pl < end; ++pl) {
        std::fill(acc.begin(), acc.end(), C(0));
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          C* sh = share.data();
          for (int64_t ow = 0; ow < g.OW; ++ow)
            sh[ow] = static_cast<C>(pd[(pl * g.OH + oh) * g.OW + ow]) / static_cast<C>(avg_divisor(p, g, oh, ow));
          const int64_t hs = oh * p.stride_h - p.pad_h;
          for (int64_t h = std::max<int64_t>(hs, 0); h < std::min(hs + p.kernel_h, g.H); ++h)
            for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
              int64_t lo, hi;
              valid_columns(p, g, kw, lo, hi);
              C* row = acc.data() + h * g.W;
              const int64_t off = kw - p.pad_w;
              for (int64_t ow = lo; ow < hi; ++ow) row[off + ow * p.stride_w] += sh[ow];
            }
        }
        T* d = px + pl * HW;
        for (int64_t k = 0; k < HW; ++k) d[k] = static_cast<T>(acc[static_cast<size_t>(k)]);
      }
    });
  });
}

}  // namespace headroom::cpu
