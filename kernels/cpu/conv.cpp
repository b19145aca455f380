// 2-d convolution (NCHW, contiguous) as im2col + one gemm per chunk of images and group.
//
// For a chunk of nc images and one group, im2col lays the input patches out as
// col [Cg*KH*KW, nc*OH*OW] (row (c, kh, kw), column (image, oh, ow); zeros where the window
// hangs over the padding), so that
//   forward:         out_g  [Og, nc*OHW]  = W_g [Og, Cg*KH*KW] @ col
//   backward weight: dW_g  [Og, Cg*KH*KW] += dout_g [Og, nc*OHW] @ col^T   (= on the first chunk)
//   backward input:  dcol  = W_g^T @ dout_g, then col2im adds each column back into dx.
// One large gemm per chunk lets OpenBLAS spread the work over every core; the chunk is as many
// images as keep col and the [Og, nc*OHW] staging buffer within kScratchBytes, so the scratch
// stays bounded whatever the batch. The staging buffer exists because out is [N, O, OHW] while
// the gemm produces [Og, nc*OHW]: a cheap strided copy (which also adds the bias) moves it.
// im2col and col2im run under parallel_for (col2im one (image, channel) plane per task, so no two
// threads add into the same element); the gemms run outside any parallel region.
// f16 and bf16 are converted to f32 tensors first and the results rounded back.
#include <algorithm>
#include <cstring>

#include "engine/caching_allocator.h"
#include "kernels/contract_checks.h"
#include "engine/meta.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

constexpr int64_t kScratchBytes = 4LL << 20;  // im2col columns + gemm staging, per call

// The contract's sizes (kernels/contract_checks.h) and what the im2col + gemm formulation adds.
struct ConvGeom : kernels::ConvShape {
  int64_t CKK, OHW;  // gemm inner dim and output pixels per image
  int64_t sh, sw, ph, pw, dh, dw;
};

ConvGeom geometry(const char* op, const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dParams& p) {
  ConvGeom g{};
  static_cast<kernels::ConvShape&>(g) = kernels::conv_shape(x, w, out, p);  // checked by Backend
  g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w, g.dh = p.dilation_h, g.dw = p.dilation_w;
  g.CKK = g.Cg * g.KH * g.KW;
  g.OHW = g.OH * g.OW;
  return g;
}

// The valid output columns [lo, hi) for kernel column kw: those whose input column
// ow * sw - pw + kw * dw lies in [0, W).
inline void valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out_size, int64_t& lo, int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  hi = size - 1 - offset < 0 ? 0 : std::min(out_size, (size - 1 - offset) / stride + 1);
  lo = std::min(lo, out_size);
  hi = std::max(hi, lo);
}

// col [CKK, nc*OHW] from images [n0, n0 + nc) of x, channels of `group`.
template <typename T>
void im2col(const T* x, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, T* col) {
  const int64_t cols = nc * g.OHW;
  parallel_for(g.CKK * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / nc, i = t % nc;
      const int64_t c = r / (g.KH * g.KW), kh = (r / g.KW) % g.KH, kw = r % g.KW;
      const T* plane = x + ((n0 + i) * g.C + group * g.Cg + c) * g.H * g.W;
      T* dst = col + r * cols + i * g.OHW;
      const int64_t off_w = kw * g.dw - g.pw;
      int64_t lo, hi;
      valid_range(off_w, g.sw, g.W, g.OW, lo, hi);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        T* d = dst + oh * g.OW;
        const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
        if (ih < 0 || ih >= g.H) {
          std::fill(d, d + g.OW, T(0));
          continue;
        }
        const T* s = plane + ih * g.W;  // input column of ow: off_w + ow * sw
        std::fill(d, d + lo, T(0));
        if (g.sw == 1) {
          if (hi > lo) std::memcpy(d + lo, s + off_w + lo, static_cast<size_t>(hi - lo) * sizeof(T));
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) d[ow] = s[off_w + ow * g.sw];
        }
        std::fill(d + hi, d + g.OW, T(0));
      }
    }
  });
}

// dx planes of images [n0, n0 + nc), channels of `group` = the sum of their dcol entries.
// Each task owns one (image, channel) plane: it zeroes it, then adds every kernel offset.
template <typename T>
void col2im(const T* dcol, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, T* dx) {
  const int64_t cols = nc * g.OHW;
  parallel_for(nc * g.Cg, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.KH * g.KW * g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / g.Cg, c = t % g.Cg;
      T* plane = dx + ((n0 + i) * g.C + group * g.Cg + c) * g.H * g.W;
      std::fill(plane, plane + g.H * g.W, T(0));
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const T* src = dcol + ((c * g.KH + kh) * g.KW + kw) * cols + i * g.OHW;
          const int64_t off_w = kw * g.dw - g.pw;
          int64_t lo, hi;
          valid_range(off_w, g.sw, g.W, g.OW, lo, hi);
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            T* d = plane + ih * g.W;  // input column of ow: off_w + ow * sw
            const T* s = src + oh * g.OW;
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) d[off_w + ow] += s[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) d[off_w + ow * g.sw] += s[ow];
            }
          }
        }
    }
  });
}

// Images per chunk: col [CKK, nc*OHW] and the staging buffer [Og, nc*OHW] within the budget.
// Under a memory limit the budget shrinks to a sixteenth of it (at least 1 MiB), so that the
// scratch does not crowd out the activations it serves.
int64_t chunk_images(const ConvGeom& g, size_t elem, Device device) {
  int64_t budget = kScratchBytes;
  if (size_t limit = caching_allocator(device).memory_limit())
    budget = std::clamp<int64_t>(static_cast<int64_t>(limit / 16), 1LL << 20, kScratchBytes);
  const int64_t per_image = std::max<int64_t>(1, (g.CKK + g.Og) * g.OHW * static_cast<int64_t>(elem));
  return std::clamp<int64_t>(budget / per_image, 1, std::max<int64_t>(g.N, 1));
}

// Scratch memory is workspace in the allocator's accounting (engine/memory.h).
Tensor scratch(int64_t n, DType dtype, Device device) {
  CategoryScope workspace(MemoryCategory::workspace);
  return Tensor::empty({std::max<int64_t>(n, 1)}, TensorOptions().dtype(dtype).device(device));
}

// stage [Og, nc*OHW] <- dout[n0 .. n0+nc, group's channels] (the gemm operand layout).
template <typename T>
void gather_group(const T* dout, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, T* stage) {
  const int64_t cols = nc * g.OHW;
  parallel_for(nc * g.Og, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / g.Og, o = t % g.Og;
      std::memcpy(stage + o * cols + i * g.OHW, dout + ((n0 + i) * g.O + group * g.Og + o) * g.OHW,
                  static_cast<size_t>(g.OHW) * sizeof(T));
    }
  });
}

template <typename T>
void forward_impl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const ConvGeom& g) {
  const int64_t chunk = chunk_images(g, sizeof(T), x.device());
  Tensor col_t = scratch(g.CKK * chunk * g.OHW, x.dtype(), x.device());
  Tensor stage_t = scratch(g.Og * chunk * g.OHW, x.dtype(), x.device());
  if (meta_active()) return;  // Note [meta execution]: the scratch is what it takes
  const T* px = static_cast<const T*>(x.raw_data());
  const T* pw = static_cast<const T*>(w.raw_data());
  T* po = static_cast<T*>(out.raw_data());
  std::vector<T> b(static_cast<size_t>(g.O), T(0));
  if (bias.defined()) {
    const T* pb = static_cast<const T*>(bias.raw_data());
    for (int64_t o = 0; o < g.O; ++o) b[static_cast<size_t>(o)] = pb[o * bias.stride(0)];
  }
  T* col = static_cast<T*>(col_t.raw_data());
  T* stage = static_cast<T*>(stage_t.raw_data());
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t nc = std::min(chunk, g.N - n0), cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      im2col(px, g, n0, nc, group, col);
      gemm<T>(false, false, g.Og, cols, g.CKK, pw + group * g.Og * g.CKK, g.CKK, col, cols, T(0), stage, cols);
      // out[n0 + i, group * Og + o, :] = stage[o, i * OHW :] + bias
      parallel_for(nc * g.Og, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
                   [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t i = t / g.Og, o = t % g.Og;
          const T bo = b[static_cast<size_t>(group * g.Og + o)];
          const T* s = stage + o * cols + i * g.OHW;
          T* d = po + ((n0 + i) * g.O + group * g.Og + o) * g.OHW;
          for (int64_t k = 0; k < g.OHW; ++k) d[k] = s[k] + bo;
        }
      });
    }
  }
}

template <typename T>
void backward_input_impl(const Tensor& dout, const Tensor& w, const Tensor& dx, const ConvGeom& g) {
  const T* pd = static_cast<const T*>(dout.raw_data());
  const T* pw = static_cast<const T*>(w.raw_data());
  T* px = static_cast<T*>(dx.raw_data());
  const int64_t chunk = chunk_images(g, sizeof(T), dx.device());
  Tensor col_t = scratch(g.CKK * chunk * g.OHW, dout.dtype(), dout.device());
  Tensor stage_t = scratch(g.Og * chunk * g.OHW, dout.dtype(), dout.device());
  if (meta_active()) return;  // Note [meta execution]
  T* dcol = static_cast<T*>(col_t.raw_data());
  T* stage = static_cast<T*>(stage_t.raw_data());
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t nc = std::min(chunk, g.N - n0), cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      gather_group(pd, g, n0, nc, group, stage);
      gemm<T>(true, false, g.CKK, cols, g.Og, pw + group * g.Og * g.CKK, g.CKK, stage, cols, T(0), dcol, cols);
      col2im(dcol, g, n0, nc, group, px);
    }
  }
}

template <typename T>
void backward_weight_impl(const Tensor& dout, const Tensor& x, const Tensor& dw, const ConvGeom& g) {
  const T* pd = static_cast<const T*>(dout.raw_data());
  const T* px = static_cast<const T*>(x.raw_data());
  T* pw = static_cast<T*>(dw.raw_data());
  if (g.N == 0 || g.OHW == 0) {
    if (!meta_active()) std::fill(pw, pw + dw.numel(), T(0));
    return;
  }
  const int64_t chunk = chunk_images(g, sizeof(T), x.device());
  Tensor col_t = scratch(g.CKK * chunk * g.OHW, x.dtype(), x.device());
  Tensor stage_t = scratch(g.Og * chunk * g.OHW, x.dtype(), x.device());
  if (meta_active()) return;  // Note [meta execution]
  T* col = static_cast<T*>(col_t.raw_data());
  T* stage = static_cast<T*>(stage_t.raw_data());
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t nc = std::min(chunk, g.N - n0), cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      im2col(px, g, n0, nc, group, col);
      gather_group(pd, g, n0, nc, group, stage);
      gemm<T>(false, true, g.Og, g.CKK, cols, stage, cols, col, cols, n0 == 0 ? T(0) : T(1),
              pw + group * g.Og * g.CKK, g.CKK);
    }
  }
}

// f16/bf16: the same computation on f32 copies, rounded back into `result`.
Tensor to_f32(Backend& be, const Tensor& t) {
  if (!t.defined()) return t;
  CategoryScope workspace(MemoryCategory::workspace);
  Tensor out = Tensor::empty(t.shape(), TensorOptions().dtype(DType::f32).device(t.device()));
  if (out.numel() > 0) be.copy(out, t);
  return out;
}
Tensor empty_f32(const Tensor& like) {
  CategoryScope workspace(MemoryCategory::workspace);
  return Tensor::empty(like.shape(), TensorOptions().dtype(DType::f32).device(like.device()));
}

}  // namespace

void CpuBackend::impl_conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                                const Conv2dParams& p) {
  const ConvGeom g = geometry("cpu conv2d_forward", x, w, out, p);
  HR_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == g.O && bias.dtype() == out.dtype()), ShapeError,
           "cpu conv2d_forward: bias ", describe(bias), " does not fit weight ", describe(w));
  if (out.numel() == 0) return;
  dispatch_float(out.dtype(), "cpu conv2d_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      forward_impl<T>(x, w, bias, out, g);
    } else {
      Tensor out32 = empty_f32(out);
      forward_impl<float>(to_f32(*this, x), to_f32(*this, w), to_f32(*this, bias), out32, g);
      copy(out, out32);
    }
  });
}

void CpuBackend::impl_conv2d_backward_input(const Tensor& dout, const Tensor& w, const Tensor& dx,
                                       const Conv2dParams& p) {
  const ConvGeom g = geometry("cpu conv2d_backward_input", dx, w, dout, p);
  if (dx.numel() == 0) return;
  if (dout.numel() == 0) {
    fill(dx, 0.0);
    return;
  }
  dispatch_float(dx.dtype(), "cpu conv2d_backward_input", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      backward_input_impl<T>(dout, w, dx, g);
    } else {
      Tensor dx32 = empty_f32(dx);
      backward_input_impl<float>(to_f32(*this, dout), to_f32(*this, w), dx32, g);
      copy(dx, dx32);
    }
  });
}

void CpuBackend::impl_conv2d_backward_weight(const Tensor& dout, const Tensor& x, const Tensor& dw,
                                        const Conv2dParams& p) {
  const ConvGeom g = geometry("cpu conv2d_backward_weight", x, dw, dout, p);
  if (dw.numel() == 0) return;
  dispatch_float(dw.dtype(), "cpu conv2d_backward_weight", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      backward_weight_impl<T>(dout, x, dw, g);
    } else {
      Tensor dw32 = empty_f32(dw);
      backward_weight_impl<float>(to_f32(*this, dout), to_f32(*this, x), dw32, g);
      copy(dw, dw32);
    }
  });
}

}  // namespace headroom::cpu
