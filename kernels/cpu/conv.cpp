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
// With several threads the batch is cut into one slice of images a thread, each running this
// whole pipeline on its own (Note [image-parallel convolution]); otherwise im2col and col2im run
// under parallel_for (col2im one (image, channel) plane per task, so no two threads add into the
// same element) and gemm.h splits each gemm over the threads.
// Note [16-bit convolution]: f16 and bf16 compute in f32, but only the weight (and bias, and
// the weight gradient's sum) get f32 tensors: activations and their gradients are converted as
// im2col, gather_group and col2im read them, and the output is rounded as it is written. An f32
// copy of x, dout and dx per call was workspace the size of three activations (and a pass over
// each) that an autocast ResNet-18 step paid in every convolution.
#include <algorithm>
#include <cstring>

#include "engine/caching_allocator.h"
#include "kernels/contract_checks.h"
#include "engine/meta.h"
#include "kernels/cpu/conv_taps.h"
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

// Note [im2col through a padded plane]: im2col (at stride 1) and col2im (at any stride) work a
// whole (image, channel) plane at a time through a zero-bordered copy of it, Hp x Wp, in a buffer
// of the task's own: every kernel offset's rows are then plain copies (or, for col2im, sums) of
// OW values, with no bounds to work out per row. Row by row with the window's valid range
// computed for each kernel offset, the short rows of ResNet-18's 8 x 8 and 4 x 4 planes cost more
// in loop overhead than in the values they moved (im2col and col2im were 16% of
// resnet18-cpu-f32's step at 1 thread). Measured at 1 thread on the 2-core AMD EPYC, 2026-12-07,
// batch 16: 64 channels at 8 x 8 went from 54, 52 and 53 GFLOP/s (forward, backward input,
// backward weight) to 67, 57 and 65; 128 channels at 4 x 4 from 55, 56 and 54 to 73, 63 and 70.
struct PlaneGeom {
  int64_t Hp, Wp;
  explicit PlaneGeom(const ConvGeom& g) : Hp(g.H + 2 * g.ph), Wp(g.W + 2 * g.pw) {}
};

// im2col for strided convolutions: row by row from the unpadded plane, the window's valid range
// worked out for each kernel offset. With a stride the patches are fewer than the input's values,
// and copying the plane into a padded one first measured 10% slower (ResNet-18's stride-2 layers).
template <typename T, typename A>
void im2col_rows(const T* x, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, A* col) {
  const int64_t cols = nc * g.OHW;
  parallel_for(g.CKK * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t r = t / nc, i = t % nc;
                   const int64_t c = r / (g.KH * g.KW), kh = (r / g.KW) % g.KH, kw = r % g.KW;
                   const T* plane = x + ((n0 + i) * g.C + group * g.Cg + c) * g.H * g.W;
                   A* dst = col + r * cols + i * g.OHW;
                   const int64_t off_w = kw * g.dw - g.pw;
                   int64_t lo, hi;
                   valid_range(off_w, g.sw, g.W, g.OW, lo, hi);
                   for (int64_t oh = 0; oh < g.OH; ++oh) {
                     A* d = dst + oh * g.OW;
                     const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
                     if (ih < 0 || ih >= g.H) {
                       std::fill(d, d + g.OW, A(0));
                       continue;
                     }
                     const T* __restrict s = plane + ih * g.W;  // input column of ow: off_w + ow * sw
                     A* __restrict dr = d;
                     for (int64_t ow = 0; ow < lo; ++ow) dr[ow] = A(0);
                     if (g.sw == 1) {  // a short row: an inline loop, not a memcpy call per row
                       for (int64_t ow = lo; ow < hi; ++ow) dr[ow] = static_cast<A>(s[off_w + ow]);
                     } else {
                       for (int64_t ow = lo; ow < hi; ++ow) dr[ow] = static_cast<A>(s[off_w + ow * g.sw]);
                     }
                     for (int64_t ow = hi; ow < g.OW; ++ow) dr[ow] = A(0);
                   }
                 }
               });
}

// col [CKK, nc*OHW] from images [n0, n0 + nc) of x, channels of `group`; T is x's dtype, A the
// one the gemm computes in (f32 for f16/bf16 data, converted here as the patches are laid out).
// Stride 1 goes through a padded plane (Note [im2col through a padded plane]); strides take
// im2col_rows.
template <typename T, typename A>
void im2col(const T* x, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, A* col) {
  if (g.sh != 1 || g.sw != 1) {
    im2col_rows(x, g, n0, nc, group, col);
    return;
  }
  const int64_t cols = nc * g.OHW;
  const PlaneGeom q(g);
  parallel_for(nc * g.Cg, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.KH * g.KW * g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
                 std::vector<A> pad(static_cast<size_t>(q.Hp * q.Wp), A(0));  // the border stays 0
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t c = t / nc, i = t % nc;
                   const T* plane = x + ((n0 + i) * g.C + group * g.Cg + c) * g.H * g.W;
                   for (int64_t h = 0; h < g.H; ++h) {
                     const T* __restrict s = plane + h * g.W;
                     A* __restrict d = pad.data() + (h + g.ph) * q.Wp + g.pw;
                     for (int64_t w = 0; w < g.W; ++w) d[w] = static_cast<A>(s[w]);
                   }
                   for (int64_t kh = 0; kh < g.KH; ++kh)
                     for (int64_t kw = 0; kw < g.KW; ++kw) {
                       A* dst = col + ((c * g.KH + kh) * g.KW + kw) * cols + i * g.OHW;
                       const A* src = pad.data() + kh * g.dh * q.Wp + kw * g.dw;
                       for (int64_t oh = 0; oh < g.OH; ++oh) {
                         const A* __restrict s = src + oh * q.Wp;
                         A* __restrict d = dst + oh * g.OW;
                         for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] = s[ow];
                       }
                     }
                 }
               });
}

// dx planes of images [n0, n0 + nc), channels of `group` = the sum of their dcol entries.
// Each task owns one (image, channel) plane: it sums every kernel offset's rows into a padded
// plane of its own (in A), then writes the interior to dx once, rounded for 16-bit dx.
template <typename T, typename A>
void col2im(const A* dcol, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, T* dx) {
  const int64_t cols = nc * g.OHW;
  const PlaneGeom q(g);
  parallel_for(nc * g.Cg, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.KH * g.KW * g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
                 std::vector<A> pad(static_cast<size_t>(q.Hp * q.Wp));
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t i = t / g.Cg, c = t % g.Cg;
                   std::fill(pad.begin(), pad.end(), A(0));
                   for (int64_t kh = 0; kh < g.KH; ++kh)
                     for (int64_t kw = 0; kw < g.KW; ++kw) {
                       const A* src = dcol + ((c * g.KH + kh) * g.KW + kw) * cols + i * g.OHW;
                       A* dst = pad.data() + kh * g.dh * q.Wp + kw * g.dw;
                       for (int64_t oh = 0; oh < g.OH; ++oh) {
                         const A* __restrict s = src + oh * g.OW;
                         A* __restrict d = dst + oh * g.sh * q.Wp;
                         if (g.sw == 1) {
                           for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] += s[ow];
                         } else {
                           for (int64_t ow = 0; ow < g.OW; ++ow) d[ow * g.sw] += s[ow];
                         }
                       }
                     }
                   T* out_plane = dx + ((n0 + i) * g.C + group * g.Cg + c) * g.H * g.W;
                   for (int64_t h = 0; h < g.H; ++h) {
                     const A* __restrict s = pad.data() + (h + g.ph) * q.Wp + g.pw;
                     T* __restrict d = out_plane + h * g.W;
                     for (int64_t w = 0; w < g.W; ++w) d[w] = static_cast<T>(s[w]);
                   }
                 }
               });
}

// Images per chunk: col [CKK, nc*OHW] and the staging buffer [Og, nc*OHW] within the budget.
// Under a memory limit the budget shrinks to a sixteenth of it (at least 1 MiB), so that the
// scratch does not crowd out the activations it serves.
int64_t scratch_budget(Device device) {
  int64_t budget = kScratchBytes;
  if (size_t limit = caching_allocator(device).memory_limit())
    budget = std::clamp<int64_t>(static_cast<int64_t>(limit / 16), 1LL << 20, kScratchBytes);
  return budget;
}
int64_t images_within_budget(const ConvGeom& g, int64_t bytes_per_image, Device device) {
  return std::clamp<int64_t>(scratch_budget(device) / std::max<int64_t>(bytes_per_image, 1), 1,
                             std::max<int64_t>(g.N, 1));
}

// Note [image-parallel convolution]: with several threads and a batch that divides among them,
// each thread takes a contiguous slice of the images and runs the whole pipeline for it alone --
// im2col (or padding), its gemms on one thread, the copy out -- with its own share of the
// scratch. Split phase by phase instead (im2col over the pool, then each gemm's blocks over the
// pool, then the copy), every convolution paid three or four wake-and-wait rounds, each thread
// re-packed the gemm operand the others shared, and a thread's gemm read columns another
// thread's im2col had just written into its cache: resnet18-cpu-f32 at 2 threads was 62 ms a step
// against 88 at one; sliced, 52.3 against 58.8 ms phase by phase (2-core AMD EPYC, 2026-12-07,
// medians of 5 paired runs, before the direct tap kernels). Backward weight sums a partial
// gradient per slice (slice 0 writes dw, the others scratch) in slice order, so the result
// depends on the thread count but not on timing;
// where those partial gradients would pass the scratch budget (a large layer, many threads), the
// weight gradient keeps one slice, so that the workspace stays bounded whatever the threads. A
// batch smaller than the threads, or one that divides badly (N % threads != 0 with fewer than 4
// images a thread), keeps the phase-by-phase split, as does one thread.
struct Slices {
  int64_t count;  // slices of the batch, each on its own thread
  int64_t chunk;  // images a slice processes at once, within its share of the scratch budget
  int64_t images(int64_t s, const ConvGeom& g) const { return g.N * s / count; }  // first image of slice s
};

// bytes_per_slice: what each slice after the first needs whatever its images (backward weight's
// partial gradient); where those would pass the scratch budget, the batch stays in one slice.
Slices slices(const ConvGeom& g, int64_t bytes_per_image, Device device, int64_t bytes_per_slice = 0) {
  const int64_t threads = num_threads();
  Slices s{1, 1};
  if (threads > 1 && g.N >= threads && (g.N % threads == 0 || g.N >= 4 * threads) &&
      (threads - 1) * bytes_per_slice <= scratch_budget(device))
    s.count = threads;
  const int64_t per_slice = (g.N + s.count - 1) / s.count;
  s.chunk = std::clamp<int64_t>(images_within_budget(g, bytes_per_image, device) / s.count, 1,
                                std::max<int64_t>(per_slice, 1));
  return s;
}

// f(slice, first image, end image) for every slice, each on a thread of its own.
template <typename F>
void for_each_slice(const ConvGeom& g, const Slices& s, F&& f) {
  parallel_for(s.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) f(k, s.images(k, g), s.images(k + 1, g));
  });
}

// f(slice, first image, images, first) for every chunk of every slice: the slices each on a
// thread of their own, a slice's chunks in order (`first`: the slice's first chunk).
template <typename F>
void for_each_chunk(const ConvGeom& g, const Slices& s, F&& f) {
  for_each_slice(g, s, [&](int64_t slice, int64_t n_begin, int64_t n_end) {
    for (int64_t n0 = n_begin; n0 < n_end; n0 += s.chunk) f(slice, n0, std::min(s.chunk, n_end - n0), n0 == n_begin);
  });
}

// bias[o] for every output channel as A values (zeros without a bias).
template <typename A>
std::vector<A> bias_values(const Tensor& bias, int64_t O) {
  std::vector<A> b(static_cast<size_t>(O), A(0));
  if (bias.defined()) {
    const A* pb = static_cast<const A*>(bias.raw_data());
    for (int64_t o = 0; o < O; ++o) b[static_cast<size_t>(o)] = pb[o * bias.stride(0)];
  }
  return b;
}

// dst[k] += the sum over `count` partial buffers of `n` values each, in order.
template <typename A>
void add_partials(A* dst, const A* partials, int64_t count, int64_t n) {
  if (count == 0) return;
  parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      A sum = dst[k];
      for (int64_t p = 0; p < count; ++p) sum += partials[p * n + k];
      dst[k] = sum;
    }
  });
}

Slices conv_slices(const ConvGeom& g, size_t elem, Device device, bool weight_gradient) {
  const auto e = static_cast<int64_t>(elem);
  return slices(g, (g.CKK + g.Og) * g.OHW * e, device, weight_gradient ? g.O * g.CKK * e : 0);
}

// Scratch memory is workspace in the allocator's accounting (engine/memory.h).
Tensor scratch(int64_t n, DType dtype, Device device) {
  CategoryScope workspace(MemoryCategory::workspace);
  return Tensor::empty({std::max<int64_t>(n, 1)}, TensorOptions().dtype(dtype).device(device));
}

// stage [Og, nc*OHW] <- dout[n0 .. n0+nc, group's channels] (the gemm operand layout), in A.
template <typename T, typename A>
void gather_group(const T* dout, const ConvGeom& g, int64_t n0, int64_t nc, int64_t group, A* stage) {
  const int64_t cols = nc * g.OHW;
  parallel_for(nc * g.Og, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t i = t / g.Og, o = t % g.Og;
                   const T* src = dout + ((n0 + i) * g.O + group * g.Og + o) * g.OHW;
                   A* dst = stage + o * cols + i * g.OHW;
                   if constexpr (std::is_same_v<T, A>) {
                     std::memcpy(dst, src, static_cast<size_t>(g.OHW) * sizeof(T));
                   } else {
                     for (int64_t k = 0; k < g.OHW; ++k) dst[k] = static_cast<A>(src[k]);
                   }
                 }
               });
}

constexpr DType compute_dtype(bool is_double) { return is_double ? DType::f64 : DType::f32; }

// T: the dtype of x, dout, dx and out; A: the gemm's (f32, or f64 for f64 data). w and bias are
// A tensors (the caller converts a 16-bit weight: it is small); 16-bit activations are read and
// written in place, converted where im2col, gather_group, col2im and the output copy touch them,
// so no f32 copy of an activation is made (Note [16-bit convolution]).
template <typename T, typename A>
void forward_impl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const ConvGeom& g) {
  constexpr DType kA = compute_dtype(std::is_same_v<A, double>);
  const Slices sl = conv_slices(g, sizeof(A), x.device(), false);
  const int64_t col_size = g.CKK * sl.chunk * g.OHW, stage_size = g.Og * sl.chunk * g.OHW;
  Tensor col_t = scratch(sl.count * col_size, kA, x.device());
  Tensor stage_t = scratch(sl.count * stage_size, kA, x.device());
  if (meta_active()) return;  // Note [meta execution]: the scratch is what it takes
  const T* px = static_cast<const T*>(x.raw_data());
  const A* pw = static_cast<const A*>(w.raw_data());
  T* po = static_cast<T*>(out.raw_data());
  const std::vector<A> b = bias_values<A>(bias, g.O);
  for_each_chunk(g, sl, [&](int64_t slice, int64_t n0, int64_t nc, bool) {
    A* col = static_cast<A*>(col_t.raw_data()) + slice * col_size;
    A* stage = static_cast<A*>(stage_t.raw_data()) + slice * stage_size;
    const int64_t cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      im2col(px, g, n0, nc, group, col);
      gemm<A>(false, false, g.Og, cols, g.CKK, pw + group * g.Og * g.CKK, g.CKK, col, cols, A(0), stage, cols);
      // out[n0 + i, group * Og + o, :] = stage[o, i * OHW :] + bias
      parallel_for(nc * g.Og, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t i = t / g.Og, o = t % g.Og;
                       const A bo = b[static_cast<size_t>(group * g.Og + o)];
                       const A* __restrict s = stage + o * cols + i * g.OHW;
                       T* __restrict d = po + ((n0 + i) * g.O + group * g.Og + o) * g.OHW;
                       for (int64_t k = 0; k < g.OHW; ++k) d[k] = static_cast<T>(s[k] + bo);
                     }
                   });
    }
  });
}

template <typename T, typename A>
void backward_input_impl(const Tensor& dout, const Tensor& w, const Tensor& dx, const ConvGeom& g) {
  constexpr DType kA = compute_dtype(std::is_same_v<A, double>);
  const T* pd = static_cast<const T*>(dout.raw_data());
  const A* pw = static_cast<const A*>(w.raw_data());
  T* px = static_cast<T*>(dx.raw_data());
  const Slices sl = conv_slices(g, sizeof(A), dx.device(), false);
  const int64_t col_size = g.CKK * sl.chunk * g.OHW, stage_size = g.Og * sl.chunk * g.OHW;
  Tensor col_t = scratch(sl.count * col_size, kA, dout.device());
  Tensor stage_t = scratch(sl.count * stage_size, kA, dout.device());
  if (meta_active()) return;  // Note [meta execution]
  for_each_chunk(g, sl, [&](int64_t slice, int64_t n0, int64_t nc, bool) {
    A* dcol = static_cast<A*>(col_t.raw_data()) + slice * col_size;
    A* stage = static_cast<A*>(stage_t.raw_data()) + slice * stage_size;
    const int64_t cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      gather_group(pd, g, n0, nc, group, stage);
      gemm<A>(true, false, g.CKK, cols, g.Og, pw + group * g.Og * g.CKK, g.CKK, stage, cols, A(0), dcol, cols);
      col2im(dcol, g, n0, nc, group, px);
    }
  });
}

// dw (an A tensor) = the sum over every chunk of images; with several slices, slice 0 sums into
// dw and the others into partial gradients added to it at the end (Note [image-parallel
// convolution]).
template <typename T, typename A>
void backward_weight_impl(const Tensor& dout, const Tensor& x, const Tensor& dw, const ConvGeom& g) {
  constexpr DType kA = compute_dtype(std::is_same_v<A, double>);
  const T* pd = static_cast<const T*>(dout.raw_data());
  const T* px = static_cast<const T*>(x.raw_data());
  A* pw = static_cast<A*>(dw.raw_data());
  if (g.N == 0 || g.OHW == 0) {
    if (!meta_active()) std::fill(pw, pw + dw.numel(), A(0));
    return;
  }
  const Slices sl = conv_slices(g, sizeof(A), x.device(), true);
  const int64_t col_size = g.CKK * sl.chunk * g.OHW, stage_size = g.Og * sl.chunk * g.OHW;
  const int64_t dw_size = g.O * g.CKK;
  Tensor col_t = scratch(sl.count * col_size, kA, x.device());
  Tensor stage_t = scratch(sl.count * stage_size, kA, x.device());
  Tensor partial_t;  // slices after the first sum into partial gradients (none with one slice)
  if (sl.count > 1) partial_t = scratch((sl.count - 1) * dw_size, kA, x.device());
  if (meta_active()) return;  // Note [meta execution]
  A* partial = sl.count > 1 ? static_cast<A*>(partial_t.raw_data()) : nullptr;
  for_each_chunk(g, sl, [&](int64_t slice, int64_t n0, int64_t nc, bool first) {
    A* col = static_cast<A*>(col_t.raw_data()) + slice * col_size;
    A* stage = static_cast<A*>(stage_t.raw_data()) + slice * stage_size;
    A* mine = slice == 0 ? pw : partial + (slice - 1) * dw_size;
    const int64_t cols = nc * g.OHW;
    for (int64_t group = 0; group < g.G; ++group) {
      im2col(px, g, n0, nc, group, col);
      gather_group(pd, g, n0, nc, group, stage);
      gemm<A>(false, true, g.Og, g.CKK, cols, stage, cols, col, cols, first ? A(0) : A(1), mine + group * g.Og * g.CKK,
              g.CKK);
    }
  });
  add_partials(pw, partial, sl.count - 1, dw_size);
}

// Note [depthwise convolution]: a convolution with one input and one output channel per group
// (MobileNet's depthwise layers) was G gemms of a single output row -- [1, KH*KW] @ [KH*KW, cols]
// -- each with its own im2col and its own pool wake-ups, which made mobilenet-cpu-f32 about half
// PyTorch's speed. It runs directly instead: one task per (image, channel) plane, adding the
// KH*KW shifted rows of the input scaled by their weight, with no scratch in the allocator (each
// task sums a 16-bit plane in an f32 buffer of one plane's size). The weight gradient is one task
// per channel, each tap's products summed a row at a time into f64.
bool depthwise(const ConvGeom& g) { return g.Cg == 1 && g.Og == 1; }

// Calls f(tap, oh, ih, off_w, lo, hi) for each kernel tap (kh, kw), tap = kh * KW + kw, and each
// output row oh whose input row ih = oh * sh - ph + kh * dh lies inside the input; [lo, hi) are
// the output columns whose input column off_w + ow * sw does.
template <typename F>
void for_each_tap_row(const ConvGeom& g, F&& f) {
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t off_w = kw * g.dw - g.pw;
      int64_t lo, hi;
      valid_range(off_w, g.sw, g.W, g.OW, lo, hi);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
        if (ih >= 0 && ih < g.H) f(kh * g.KW + kw, oh, ih, off_w, lo, hi);
      }
    }
}

// Stride 1: the plane is copied once into a zero-padded [H + 2ph, W + 2pw] buffer, and the output
// is computed "wide", with the padded width as its row stride: tap (kh, kw) is then one
// unconditional loop over (OH - 1) * Wp + OW elements, out_wide[i] += w * padded[i + shift], with
// no bounds per row. The Wp - OW extra columns of each wide row are never copied out.
template <typename T, typename A>
void depthwise_plane_forward(const T* plane, const A* w, A b0, const ConvGeom& g, std::vector<A>& pad,
                             std::vector<A>& wide, T* out) {
  const int64_t Wp = g.W + 2 * g.pw, Hp = g.H + 2 * g.ph, span = (g.OH - 1) * Wp + g.OW;
  pad.assign(static_cast<size_t>(Hp * Wp), A(0));
  wide.resize(static_cast<size_t>(g.OH * Wp));
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t x = 0; x < g.W; ++x)
      pad[static_cast<size_t>((h + g.ph) * Wp + x + g.pw)] = static_cast<A>(plane[h * g.W + x]);
  A* __restrict acc = wide.data();
  for (int64_t i = 0; i < span; ++i) acc[i] = b0;
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const A wv = w[kh * g.KW + kw];
      const A* __restrict src = pad.data() + kh * g.dh * Wp + kw * g.dw;
      for (int64_t i = 0; i < span; ++i) acc[i] += wv * src[i];
    }
  for (int64_t oh = 0; oh < g.OH; ++oh)
    for (int64_t ow = 0; ow < g.OW; ++ow) out[oh * g.OW + ow] = static_cast<T>(acc[oh * Wp + ow]);
}

// Stride 1, backward: dout laid out wide (zeros in the extra columns), each tap adds w * dout_wide
// into the padded dx at its shift; the interior of the padded buffer is dx.
template <typename T, typename A>
void depthwise_plane_backward_input(const T* dout, const A* w, const ConvGeom& g, std::vector<A>& pad,
                                    std::vector<A>& wide, T* dx) {
  const int64_t Wp = g.W + 2 * g.pw, Hp = g.H + 2 * g.ph, span = (g.OH - 1) * Wp + g.OW;
  pad.assign(static_cast<size_t>(Hp * Wp), A(0));
  wide.assign(static_cast<size_t>(g.OH * Wp), A(0));
  for (int64_t oh = 0; oh < g.OH; ++oh)
    for (int64_t ow = 0; ow < g.OW; ++ow)
      wide[static_cast<size_t>(oh * Wp + ow)] = static_cast<A>(dout[oh * g.OW + ow]);
  const A* __restrict src = wide.data();
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const A wv = w[kh * g.KW + kw];
      A* __restrict d = pad.data() + kh * g.dh * Wp + kw * g.dw;
      for (int64_t i = 0; i < span; ++i) d[i] += wv * src[i];
    }
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t x = 0; x < g.W; ++x)
      dx[h * g.W + x] = static_cast<T>(pad[static_cast<size_t>((h + g.ph) * Wp + x + g.pw)]);
}

template <typename T, typename A>
void depthwise_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const ConvGeom& g) {
  if (meta_active()) return;  // Note [meta execution]: nothing to allocate
  const T* px = static_cast<const T*>(x.raw_data());
  const A* pw = static_cast<const A*>(w.raw_data());
  const A* pb = bias.defined() ? static_cast<const A*>(bias.raw_data()) : nullptr;
  const int64_t bias_stride = bias.defined() ? bias.stride(0) : 0;
  T* po = static_cast<T*>(out.raw_data());
  const int64_t taps = g.KH * g.KW;
  parallel_for(g.N * g.C, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW * taps, 1)),
               [&](int64_t begin, int64_t end) {
                 std::vector<A> own, pad, wide;
                 if (g.sh == 1 && g.sw == 1) {  // stride 1: the padded-plane form below
                   for (int64_t t = begin; t < end; ++t) {
                     const int64_t c = t % g.C;
                     depthwise_plane_forward<T, A>(px + t * g.H * g.W, pw + c * taps, pb ? pb[c * bias_stride] : A(0),
                                                   g, pad, wide, po + t * g.OHW);
                   }
                   return;
                 }
                 if constexpr (!std::is_same_v<T, A>) own.resize(static_cast<size_t>(g.OHW));  // strided only
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t c = t % g.C;
                   const T* plane = px + t * g.H * g.W;
                   A* acc;
                   if constexpr (std::is_same_v<T, A>) acc = po + t * g.OHW;
                   else acc = own.data();
                   const A b0 = pb ? pb[c * bias_stride] : A(0);
                   for (int64_t k = 0; k < g.OHW; ++k) acc[k] = b0;
                   for_each_tap_row(g, [&](int64_t tap, int64_t oh, int64_t ih, int64_t off_w, int64_t lo, int64_t hi) {
                     const A wv = pw[c * taps + tap];
                     const T* __restrict s = plane + ih * g.W + off_w;
                     A* __restrict d = acc + oh * g.OW;
                     for (int64_t ow = lo; ow < hi; ++ow) d[ow] += wv * static_cast<A>(s[ow * g.sw]);
                   });
                   if constexpr (!std::is_same_v<T, A>) {
                     T* o = po + t * g.OHW;
                     for (int64_t k = 0; k < g.OHW; ++k) o[k] = static_cast<T>(acc[k]);
                   }
                 }
               });
}

template <typename T, typename A>
void depthwise_backward_input(const Tensor& dout, const Tensor& w, const Tensor& dx, const ConvGeom& g) {
  if (meta_active()) return;
  const T* pd = static_cast<const T*>(dout.raw_data());
  const A* pw = static_cast<const A*>(w.raw_data());
  T* px = static_cast<T*>(dx.raw_data());
  const int64_t taps = g.KH * g.KW;
  parallel_for(g.N * g.C, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW * taps, 1)),
               [&](int64_t begin, int64_t end) {
                 std::vector<A> own, pad, wide;
                 if (g.sh == 1 && g.sw == 1) {
                   for (int64_t t = begin; t < end; ++t)
                     depthwise_plane_backward_input<T, A>(pd + t * g.OHW, pw + (t % g.C) * taps, g, pad, wide,
                                                          px + t * g.H * g.W);
                   return;
                 }
                 if constexpr (!std::is_same_v<T, A>) own.resize(static_cast<size_t>(g.H * g.W));  // strided only
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t c = t % g.C;
                   const T* src = pd + t * g.OHW;
                   A* acc;
                   if constexpr (std::is_same_v<T, A>) acc = px + t * g.H * g.W;
                   else acc = own.data();
                   std::fill(acc, acc + g.H * g.W, A(0));
                   for_each_tap_row(g, [&](int64_t tap, int64_t oh, int64_t ih, int64_t off_w, int64_t lo, int64_t hi) {
                     const A wv = pw[c * taps + tap];
                     A* __restrict d = acc + ih * g.W + off_w;
                     const T* __restrict s = src + oh * g.OW;
                     for (int64_t ow = lo; ow < hi; ++ow) d[ow * g.sw] += wv * static_cast<A>(s[ow]);
                   });
                   if constexpr (!std::is_same_v<T, A>) {
                     T* o = px + t * g.H * g.W;
                     for (int64_t k = 0; k < g.H * g.W; ++k) o[k] = static_cast<T>(acc[k]);
                   }
                 }
               });
}

// dw (an A tensor [C, 1, KH, KW]) = for each channel and tap, the sum over images and output
// pixels of dout * the input pixel under that tap.
template <typename T, typename A>
void depthwise_backward_weight(const Tensor& dout, const Tensor& x, const Tensor& dw, const ConvGeom& g) {
  if (meta_active()) return;
  const T* pd = static_cast<const T*>(dout.raw_data());
  const T* px = static_cast<const T*>(x.raw_data());
  A* pw = static_cast<A*>(dw.raw_data());
  const int64_t taps = g.KH * g.KW;
  parallel_for(
      g.C, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.N * g.OHW * taps, 1)),
      [&](int64_t begin, int64_t end) {
        // One partial sum per tap and output column (a vector add per row, not a chain of
        // dependent adds), each image's added into f64 per tap, in a fixed order.
        const int64_t width = std::max<int64_t>(g.OW, 1);
        std::vector<A> parts(static_cast<size_t>(taps * width));
        std::vector<double> total(static_cast<size_t>(taps));
        for (int64_t c = begin; c < end; ++c) {
          std::fill(total.begin(), total.end(), 0.0);
          for (int64_t n = 0; n < g.N; ++n) {
            const T* plane = px + (n * g.C + c) * g.H * g.W;
            const T* grad = pd + (n * g.C + c) * g.OHW;
            std::fill(parts.begin(), parts.end(), A(0));
            for_each_tap_row(g, [&](int64_t tap, int64_t oh, int64_t ih, int64_t off_w, int64_t lo, int64_t hi) {
              A* __restrict part = parts.data() + tap * width;
              const T* __restrict s = plane + ih * g.W + off_w;
              const T* __restrict d = grad + oh * g.OW;
              if (g.sw == 1) {  // unit stride: a loop GCC vectorises
                for (int64_t ow = lo; ow < hi; ++ow) part[ow] += static_cast<A>(d[ow]) * static_cast<A>(s[ow]);
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) part[ow] += static_cast<A>(d[ow]) * static_cast<A>(s[ow * g.sw]);
              }
            });
            for (int64_t tap = 0; tap < taps; ++tap)
              for (int64_t ow = 0; ow < g.OW; ++ow)
                total[static_cast<size_t>(tap)] += static_cast<double>(parts[static_cast<size_t>(tap * width + ow)]);
          }
          for (int64_t tap = 0; tap < taps; ++tap) pw[c * taps + tap] = static_cast<A>(total[static_cast<size_t>(tap)]);
        }
      });
}

// f16/bf16 weights and biases: f32 copies (small beside the activations).
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

// Note [padded-plane convolution]: a stride-1 convolution (one group) on planes of at least
// 16 x 16 skips im2col. Each image's channels are copied once into zero-padded planes of
// P = Hp * Wp values, laid end to end, and the output is computed "wide", with the padded width
// as its row stride: for kernel tap (kh, kw) the input it needs is the padded buffer shifted by
// kh * dh * Wp + kw * dw, so the forward is KH * KW gemms
//   wide[O, L] += W_tap[O, C] @ padded[C, shift : shift + L]
// over L = nc * P - max shift columns, of which those past each output row's end (and between
// images) are computed and dropped. Backward input is the adjoint (padded dx[C, shift + j] +=
// W_tap^T @ dout_wide, dout_wide zero where no output is) and backward weight is
// dW_tap = dout_wide @ padded[:, shift : shift + L]^T. im2col wrote KH * KW copies of the input
// (and col2im read them back): in resnet18-cpu-f32 those passes were 30% of the step; here
// the copies are one padded input and one wide output, at the price of (Hp * Wp) / (H * W) more
// multiply-adds -- 1.13x at 32 x 32, 1.27x at 16 x 16, which is why smaller planes keep im2col.
// Measured on resnet18-cpu-f32 (2-core AMD EPYC, 2026-12-07, paired runs): 81-84 against 87-89 ms
// a step at 1 thread, about even at 2 (51-56 against 49-60): the gemms' inner dimension is now C
// (16 or 32 channels there) instead of 9 C, and OpenBLAS is less efficient at that size. For
// 3-wide kernels in f32 on a CPU with AVX2 and FMA the per-tap gemms give way to direct kernels
// (Note [direct tap kernels] in conv_taps.cpp), which lifted the 32 x 32 layer from 47, 48 and
// 36 GFLOP/s (forward, backward input, backward weight) to 75, 75 and 68.
bool padded_plane(const ConvGeom& g) {
  return g.G == 1 && g.N > 0 && g.sh == 1 && g.sw == 1 && g.H >= 16 && g.W >= 16 && g.KH * g.KW > 1;
}

struct PaddedGeom {
  int64_t Hp, Wp, P, taps, max_shift;
  Slices sl;  // Note [image-parallel convolution]
  int64_t shift(int64_t tap, const ConvGeom& g) const { return (tap / g.KW) * g.dh * Wp + (tap % g.KW) * g.dw; }
};

PaddedGeom padded_geometry(const ConvGeom& g, size_t elem, Device device, bool weight_gradient) {
  PaddedGeom q{};
  q.Hp = g.H + 2 * g.ph, q.Wp = g.W + 2 * g.pw, q.P = q.Hp * q.Wp, q.taps = g.KH * g.KW;
  q.max_shift = (g.KH - 1) * g.dh * q.Wp + (g.KW - 1) * g.dw;
  const auto e = static_cast<int64_t>(elem);
  q.sl = slices(g, (g.C + g.O) * q.P * e, device, weight_gradient ? q.taps * g.O * g.C * e : 0);
  return q;
}

// The padded-plane forms' workspace, allocated (or, under meta execution, only counted) before
// any work: per slice, padded [C, chunk * P] and wide [O, chunk * P]; the weight by tap
// [taps, O, C], one per slice when `tap_weight_per_slice` (backward weight's partial sums).
template <typename A>
struct PaddedScratch {
  PaddedGeom q;
  int64_t padded_size, wide_size, wt_size;
  Tensor padded_t, wide_t, wt_t;
  PaddedScratch(const ConvGeom& g, Device device, bool tap_weight_per_slice)
      : q(padded_geometry(g, sizeof(A), device, tap_weight_per_slice)) {
    constexpr DType kA = compute_dtype(std::is_same_v<A, double>);
    // wide's rows may carry max_shift zeros in front (backward input's direct form)
    padded_size = g.C * q.sl.chunk * q.P, wide_size = g.O * (q.sl.chunk * q.P + q.max_shift);
    wt_size = q.taps * g.O * g.C;
    padded_t = scratch(q.sl.count * padded_size, kA, device);
    wide_t = scratch(q.sl.count * wide_size, kA, device);
    wt_t = scratch((tap_weight_per_slice ? q.sl.count : 1) * wt_size, kA, device);
  }
  A* padded(int64_t slice) const { return static_cast<A*>(padded_t.raw_data()) + slice * padded_size; }
  A* wide(int64_t slice) const { return static_cast<A*>(wide_t.raw_data()) + slice * wide_size; }
  A* wt(int64_t slice = 0) const { return static_cast<A*>(wt_t.raw_data()) + slice * wt_size; }
};

// padded[c, i * P + (h + ph) * Wp + w + pw] = x[n0 + i, c, h, w], zero around, for i < nc.
template <typename T, typename A>
void pad_planes(const T* x, const ConvGeom& g, const PaddedGeom& q, int64_t n0, int64_t nc, int64_t planes_per_image,
                A* padded) {
  const int64_t L = nc * q.P;
  parallel_for(planes_per_image * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(q.P, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t c = t / nc, i = t % nc;
                   A* dst = padded + c * L + i * q.P;
                   const T* src = x + ((n0 + i) * planes_per_image + c) * g.H * g.W;
                   std::fill(dst, dst + q.P, A(0));
                   for (int64_t h = 0; h < g.H; ++h) {
                     A* __restrict d = dst + (h + g.ph) * q.Wp + g.pw;
                     const T* __restrict s = src + h * g.W;
                     for (int64_t w = 0; w < g.W; ++w) d[w] = static_cast<A>(s[w]);
                   }
                 }
               });
}

// dout_wide[o, i * P + oh * Wp + ow] = dout[n0 + i, o, oh, ow], zero elsewhere; row o starts at
// wide + o * ldw.
template <typename T, typename A>
void widen_output(const T* dout, const ConvGeom& g, const PaddedGeom& q, int64_t n0, int64_t nc, A* wide, int64_t ldw) {
  parallel_for(g.O * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(q.P, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t o = t / nc, i = t % nc;
                   A* dst = wide + o * ldw + i * q.P;
                   const T* src = dout + ((n0 + i) * g.O + o) * g.OHW;
                   std::fill(dst, dst + q.P, A(0));
                   for (int64_t oh = 0; oh < g.OH; ++oh) {
                     A* __restrict d = dst + oh * q.Wp;
                     const T* __restrict s = src + oh * g.OW;
                     for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] = static_cast<A>(s[ow]);
                   }
                 }
               });
}

// Whether the f32 AVX2 kernels of conv_taps.h take the place of the per-tap gemms.
template <typename A>
bool direct_taps(const ConvGeom& g) {
  return std::is_same_v<A, float> && g.KW == 3 && tap_kernels_available();
}

// The weight as the direct kernels read it (conv_taps.h): forward wk[(c * taps + tap) * O + o] =
// w[o][c][tap]; for backward input the roles of c and o swap and the taps run backwards,
// wk[(o * taps + tap) * C + c] = w[o][c][taps - 1 - tap], since the input gradient gathers
// dout_wide[o, i - shift(tap)] and shift(taps - 1 - tap) = max_shift - shift(tap).
template <typename A>
void weight_for_taps(const A* w, const ConvGeom& g, int64_t taps, bool backward_input, A* wk) {
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t tap = 0; tap < taps; ++tap) {
        const A v = w[(o * g.C + c) * taps + tap];
        if (backward_input) wk[(o * taps + (taps - 1 - tap)) * g.C + c] = v;
        else wk[(c * taps + tap) * g.O + o] = v;
      }
}

// The weight regrouped by tap: wt[tap][o][c] = w[o][c][tap].
template <typename A>
void weight_by_tap(const A* w, const ConvGeom& g, int64_t taps, A* wt) {
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t tap = 0; tap < taps; ++tap) wt[(tap * g.O + o) * g.C + c] = w[(o * g.C + c) * taps + tap];
}

// Note [native bf16 taps] (conv_taps.cpp): a bf16 forward convolution the direct kernels take
// runs on the CPU's bf16 dot products where it has them. Its operands use the f32 scratch's
// memory (half of it), so the workspace -- and what meta execution predicts -- stays the same.
template <typename T>
bool native_bf16_taps(const ConvGeom& g) {
  return std::is_same_v<T, BFloat16> && g.KW == 3 && bf16_tap_kernels_available();
}

// pairs[((r / 2) * ld + i * P + (h + top) * Wp + w + left) * 2 + r % 2] = src[n0 + i, r, h, w]
// (bf16 bits) for R rows of H x W planes (the input, or the output gradient), zero around and in
// the odd row's place of a last pair.
void to_pairs(const BFloat16* src, int64_t R, int64_t H, int64_t W, int64_t top, int64_t left, const PaddedGeom& q,
              int64_t n0, int64_t nc, uint16_t* pairs, int64_t ld) {
  const int64_t SP = (R + 1) / 2;
  parallel_for(SP * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(2 * q.P, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t sp = t / nc, i = t % nc;
                   uint16_t* dst = pairs + (sp * ld + i * q.P) * 2;
                   std::fill(dst, dst + 2 * q.P, uint16_t{0});
                   for (int64_t e = 0; e < 2 && 2 * sp + e < R; ++e) {
                     const BFloat16* plane = src + ((n0 + i) * R + 2 * sp + e) * H * W;
                     for (int64_t h = 0; h < H; ++h) {
                       uint16_t* __restrict d = dst + ((h + top) * q.Wp + left) * 2 + e;
                       const BFloat16* __restrict row = plane + h * W;
                       for (int64_t w = 0; w < W; ++w) d[2 * w] = row[w].bits;
                     }
                   }
                 }
               });
}

// The weight in pairs as tap_forward_bf16 reads it (bf16; the weight arrives as f32 converted from
// bf16, so exactly). Forward: wk[(s * taps + tap) * O + o] = w[o][2s][tap] in the low half,
// w[o][2s + 1][tap] in the high half. Backward input, as weight_for_taps: the roles of c and o
// swap and the taps run backwards, wk[(s * taps + tap) * C + c] = w[2s (+1)][c][taps - 1 - tap].
void weight_pairs(const float* w, const ConvGeom& g, int64_t taps, bool backward_input, uint32_t* wk) {
  const int64_t rows = backward_input ? g.O : g.C, cols = backward_input ? g.C : g.O, SP = (rows + 1) / 2;
  for (int64_t sp = 0; sp < SP; ++sp)
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t col = 0; col < cols; ++col) {
        uint32_t pair = 0;
        for (int64_t e = 0; e < 2 && 2 * sp + e < rows; ++e) {
          const int64_t r = 2 * sp + e;
          const float v =
              backward_input ? w[(r * g.C + col) * taps + (taps - 1 - tap)] : w[(col * g.C + r) * taps + tap];
          pair |= static_cast<uint32_t>(BFloat16(v).bits) << (16 * e);
        }
        wk[(sp * taps + tap) * cols + col] = pair;
      }
}

template <typename T, typename A>
void padded_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const ConvGeom& g) {
  const PaddedScratch<A> work(g, x.device(), false);
  const PaddedGeom& q = work.q;
  if (meta_active()) return;  // Note [meta execution]
  const T* px = static_cast<const T*>(x.raw_data());
  T* po = static_cast<T*>(out.raw_data());
  A* wt = work.wt();
  const bool native = native_bf16_taps<T>(g);  // Note [native bf16 taps]
  const bool direct = !native && direct_taps<A>(g);
  if constexpr (std::is_same_v<T, BFloat16>) {
    if (native)
      weight_pairs(static_cast<const float*>(w.raw_data()), g, q.taps, false, reinterpret_cast<uint32_t*>(wt));
  }
  if (direct) weight_for_taps(static_cast<const A*>(w.raw_data()), g, q.taps, false, wt);
  else if (!native) weight_by_tap(static_cast<const A*>(w.raw_data()), g, q.taps, wt);
  const std::vector<A> b = bias_values<A>(bias, g.O);
  for_each_chunk(g, q.sl, [&](int64_t slice, int64_t n0, int64_t nc, bool) {
    A* padded = work.padded(slice);
    A* wide = work.wide(slice);
    const int64_t L = nc * q.P, span = L - q.max_shift;
    if constexpr (std::is_same_v<T, BFloat16>) {
      if (native) {
        auto* pairs = reinterpret_cast<uint16_t*>(padded);
        to_pairs(px, g.C, g.H, g.W, g.ph, g.pw, q, n0, nc, pairs, L);
        tap_forward_bf16(pairs, L, (g.C + 1) / 2, reinterpret_cast<const uint32_t*>(wt), g.O, g.KH, g.dh * q.Wp, g.dw,
                         span, wide, L);
      }
    }
    if (!native) pad_planes(px, g, q, n0, nc, g.C, padded);
    if constexpr (std::is_same_v<A, float>) {
      if (direct)  // Note [direct tap kernels]
        tap_forward_f32(padded, L, g.C, wt, g.O, g.KH, g.dh * q.Wp, g.dw, span, wide, L);
    }
    if (!direct && !native)
      for (int64_t tap = 0; tap < q.taps; ++tap)
        gemm<A>(false, false, g.O, span, g.C, wt + tap * g.O * g.C, g.C, padded + q.shift(tap, g), L,
                tap == 0 ? A(0) : A(1), wide, L);
    // out[n0 + i, o, oh, ow] = wide[o, i * P + oh * Wp + ow] + bias[o]
    parallel_for(nc * g.O, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.OHW, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t t = begin; t < end; ++t) {
                     const int64_t i = t / g.O, o = t % g.O;
                     const A bo = b[static_cast<size_t>(o)];
                     const A* src = wide + o * L + i * q.P;
                     T* dst = po + ((n0 + i) * g.O + o) * g.OHW;
                     for (int64_t oh = 0; oh < g.OH; ++oh) {
                       const A* __restrict s = src + oh * q.Wp;
                       T* __restrict d = dst + oh * g.OW;
                       for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] = static_cast<T>(s[ow] + bo);
                     }
                   }
                 });
  });
}

template <typename T, typename A>
void padded_backward_input(const Tensor& dout, const Tensor& w, const Tensor& dx, const ConvGeom& g) {
  const PaddedScratch<A> work(g, dx.device(), false);
  const PaddedGeom& q = work.q;
  if (meta_active()) return;
  const T* pd = static_cast<const T*>(dout.raw_data());
  T* px = static_cast<T*>(dx.raw_data());
  A* wt = work.wt();
  const bool native = native_bf16_taps<T>(g);  // Note [native bf16 taps]
  const bool direct = !native && direct_taps<A>(g);
  if constexpr (std::is_same_v<T, BFloat16>) {
    if (native) weight_pairs(static_cast<const float*>(w.raw_data()), g, q.taps, true, reinterpret_cast<uint32_t*>(wt));
  }
  if (direct) weight_for_taps(static_cast<const A*>(w.raw_data()), g, q.taps, true, wt);
  else if (!native) weight_by_tap(static_cast<const A*>(w.raw_data()), g, q.taps, wt);
  for_each_chunk(g, q.sl, [&](int64_t slice, int64_t n0, int64_t nc, bool) {
    A* padded = work.padded(slice);
    A* wide = work.wide(slice);
    const int64_t L = nc * q.P, span = L - q.max_shift;
    if constexpr (std::is_same_v<T, BFloat16>) {
      if (native) {  // as the direct form below, with dout_wide in row pairs
        const int64_t ldw = L + q.max_shift;
        auto* pairs = reinterpret_cast<uint16_t*>(wide);
        for (int64_t sp = 0; sp < (g.O + 1) / 2; ++sp)
          std::fill(pairs + sp * ldw * 2, pairs + (sp * ldw + q.max_shift) * 2, uint16_t{0});
        to_pairs(pd, g.O, g.OH, g.OW, 0, 0, q, n0, nc, pairs + q.max_shift * 2, ldw);
        tap_forward_bf16(pairs, ldw, (g.O + 1) / 2, reinterpret_cast<const uint32_t*>(wt), g.C, g.KH, g.dh * q.Wp, g.dw,
                         L, padded, L);
      }
    }
    if constexpr (std::is_same_v<A, float>) {
      if (direct) {  // Note [direct tap kernels]: padded dx[c, i] = sum W_tap[o, c] * dout_wide[o, i - shift]
        const int64_t ldw = L + q.max_shift;  // each row of dout_wide behind max_shift zeros
        for (int64_t o = 0; o < g.O; ++o) std::fill(wide + o * ldw, wide + o * ldw + q.max_shift, A(0));
        widen_output(pd, g, q, n0, nc, wide + q.max_shift, ldw);
        tap_forward_f32(wide, ldw, g.O, wt, g.C, g.KH, g.dh * q.Wp, g.dw, L, padded, L);
      }
    }
    if (!direct && !native) {
      widen_output(pd, g, q, n0, nc, wide, L);
      std::fill(padded, padded + g.C * L, A(0));
      // padded dx[c, shift + j] += sum_o W_tap[o, c] * dout_wide[o, j]
      for (int64_t tap = 0; tap < q.taps; ++tap)
        gemm<A>(true, false, g.C, span, g.O, wt + tap * g.O * g.C, g.C, wide, L, A(1), padded + q.shift(tap, g), L);
    }
    parallel_for(g.C * nc, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(q.P, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t t = begin; t < end; ++t) {
                     const int64_t c = t / nc, i = t % nc;
                     const A* src = padded + c * L + i * q.P;
                     T* dst = px + ((n0 + i) * g.C + c) * g.H * g.W;
                     for (int64_t h = 0; h < g.H; ++h) {
                       const A* __restrict s = src + (h + g.ph) * q.Wp + g.pw;
                       T* __restrict d = dst + h * g.W;
                       for (int64_t x = 0; x < g.W; ++x) d[x] = static_cast<T>(s[x]);
                     }
                   }
                 });
  });
}

// dw (an A tensor) = the sum over every chunk of images: per slice in its own weight-by-tap
// buffer, then summed in slice order as the taps are put back in dw's layout.
template <typename T, typename A>
void padded_backward_weight(const Tensor& dout, const Tensor& x, const Tensor& dw, const ConvGeom& g) {
  const PaddedScratch<A> work(g, x.device(), true);
  const PaddedGeom& q = work.q;
  if (meta_active()) return;
  const T* pd = static_cast<const T*>(dout.raw_data());
  const T* px = static_cast<const T*>(x.raw_data());
  const bool native = native_bf16_taps<T>(g);  // Note [native bf16 taps]
  const bool direct = !native && direct_taps<A>(g);
  for_each_chunk(g, q.sl, [&](int64_t slice, int64_t n0, int64_t nc, bool first) {
    A* padded = work.padded(slice);
    A* wide = work.wide(slice);
    A* wt = work.wt(slice);
    const int64_t L = nc * q.P, span = L - q.max_shift;
    if constexpr (std::is_same_v<T, BFloat16>) {
      if (native) {  // the planes and dout_wide as bf16 in the f32 scratch's memory
        auto* padded16 = reinterpret_cast<BFloat16*>(padded);
        auto* wide16 = reinterpret_cast<BFloat16*>(wide);
        pad_planes(px, g, q, n0, nc, g.C, padded16);
        widen_output(pd, g, q, n0, nc, wide16, L);
        if (first) std::fill(wt, wt + q.taps * g.O * g.C, A(0));
        tap_weight_grads_bf16(reinterpret_cast<const uint16_t*>(wide16), L, reinterpret_cast<const uint16_t*>(padded16),
                              L, g.O, g.C, g.KH, g.dh * q.Wp, g.dw, span, wt);
        return;
      }
    }
    pad_planes(px, g, q, n0, nc, g.C, padded);
    widen_output(pd, g, q, n0, nc, wide, L);
    // dW_tap[o, c] (+)= sum_j dout_wide[o, j] * padded[c, shift + j]
    if constexpr (std::is_same_v<A, float>) {
      if (direct) {  // Note [direct tap kernels]: the kernel adds into wt
        if (first) std::fill(wt, wt + q.taps * g.O * g.C, A(0));
        tap_weight_grads_f32(wide, L, padded, L, g.O, g.C, g.KH, g.dh * q.Wp, g.dw, span, wt);
        return;
      }
    }
    for (int64_t tap = 0; tap < q.taps; ++tap)
      gemm<A>(false, true, g.O, g.C, span, wide, L, padded + q.shift(tap, g), L, first ? A(0) : A(1),
              wt + tap * g.O * g.C, g.C);
  });
  A* pw = static_cast<A*>(dw.raw_data());
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t tap = 0; tap < q.taps; ++tap) {
        const int64_t k = (tap * g.O + o) * g.C + c;
        A sum = work.wt(0)[k];
        for (int64_t slice = 1; slice < q.sl.count; ++slice) sum += work.wt(slice)[k];
        pw[(o * g.C + c) * q.taps + tap] = sum;
      }
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
      if (depthwise(g)) depthwise_forward<T, T>(x, w, bias, out, g);       // Note [depthwise convolution]
      else if (padded_plane(g)) padded_forward<T, T>(x, w, bias, out, g);  // Note [padded-plane convolution]
      else forward_impl<T, T>(x, w, bias, out, g);
    } else {  // Note [16-bit convolution]: only the weight and bias get f32 copies
      if (depthwise(g)) depthwise_forward<T, float>(x, to_f32(*this, w), to_f32(*this, bias), out, g);
      else if (padded_plane(g)) padded_forward<T, float>(x, to_f32(*this, w), to_f32(*this, bias), out, g);
      else forward_impl<T, float>(x, to_f32(*this, w), to_f32(*this, bias), out, g);
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
      if (depthwise(g)) depthwise_backward_input<T, T>(dout, w, dx, g);
      else if (padded_plane(g)) padded_backward_input<T, T>(dout, w, dx, g);
      else backward_input_impl<T, T>(dout, w, dx, g);
    } else {
      if (depthwise(g)) depthwise_backward_input<T, float>(dout, to_f32(*this, w), dx, g);
      else if (padded_plane(g)) padded_backward_input<T, float>(dout, to_f32(*this, w), dx, g);
      else backward_input_impl<T, float>(dout, to_f32(*this, w), dx, g);
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
      if (depthwise(g)) depthwise_backward_weight<T, T>(dout, x, dw, g);
      else if (padded_plane(g)) padded_backward_weight<T, T>(dout, x, dw, g);
      else backward_weight_impl<T, T>(dout, x, dw, g);
    } else {
      Tensor dw32 = empty_f32(dw);  // summed over chunks in f32, rounded once
      if (depthwise(g)) depthwise_backward_weight<T, float>(dout, x, dw32, g);
      else if (padded_plane(g)) padded_backward_weight<T, float>(dout, x, dw32, g);
      else backward_weight_impl<T, float>(dout, x, dw32, g);
      copy(dw, dw32);
    }
  });
}

}  // namespace headroom::cpu
