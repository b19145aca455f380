// 2-d convolution (NCHW, contiguous) on the GPU through cuDNN 9's legacy convolution API.
//
// Each method describes its tensors to cuDNN (RAII descriptors, cudnn_util.h) and runs one
// cudnnConvolutionForward / BackwardData / BackwardFilter per chunk of images. Results are
// written (=), as on the CPU: dx and dw are overwritten, never accumulated into -- except that
// dw sums its chunks (beta = 1 after the first), which is one write as far as the caller sees.
// Chunks exist because cuDNN's descriptors are 32-bit: a batch whose input or output passes
// 2^31 - 1 elements runs as several calls of fewer images.
//
// Algorithms. With set_cudnn_benchmark(true) (the default) the first call of each (device,
// direction, dtype, TF32 switch, shapes, stride, padding, dilation, groups) measures every
// algorithm (cudnnFind*AlgorithmEx, which synchronises the stream: a one-time cost per shape)
// with a workspace of search_workspace_budget() bytes, and remembers the fastest one whose
// workspace fits in a mutex-protected map; later calls reuse it. If the search's workspace
// cannot be had, the search retries with half as much, down to none. Switched off, cuDNN's
// heuristics (cudnnGet*Algorithm_v7) pick each time and nothing is remembered. Either way an
// algorithm that fails when run (its workspace is out of memory now, or cuDNN declines the
// shape) gives way to the next candidate -- the heuristics' list, workspace within the
// budget -- so memory pressure slows a convolution down instead of failing it.
//
// Workspace comes from the caching allocator as a u8 tensor tagged workspace (cuda::workspace),
// allocated on the current stream for each call and freed once the call is queued: the
// allocator only hands it out again to work queued after it on the same stream.
//
// Math: f16/bf16 use tensor cores (CUDNN_TENSOR_OP_MATH) and compute in f32; f32 runs FMA-only
// (CUDNN_FMA_MATH, results within f32 tolerance of the CPU) unless cuda::allow_tf32() is on
// (CUDNN_DEFAULT_MATH: TF32 tensor cores); f64 runs in f64.
//
// The bias is added by a small kernel after the convolution (dnn_kernels.h add_channel_bias,
// any dtype cuDNN convolves) rather than cudnnAddTensor, whose bf16 support the headers do not
// promise. For f16/bf16 the output is therefore rounded twice (convolution, then + bias), where
// the CPU rounds once; the difference is at most one unit in the last place.
#include <algorithm>
#include <array>
#include <climits>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "engine/memory.h"
#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_libs.h"
#include "kernels/cuda/cuda_scope.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/dnn_kernels.h"

// cuDNN 9 marks the legacy convolution API deprecated (cudnn_util.h): silenced for this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace headroom::cuda {

namespace {

// The contract's sizes (kernels/contract_checks.h) and the parameters.
struct ConvGeom : kernels::ConvShape {
  Conv2dParams p;
};

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// The contract's sizes (checked by Backend, Note [op table]), plus cuDNN's 32-bit limits.
ConvGeom geometry(const char* op, const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dParams& p) {
  ConvGeom g{};
  static_cast<kernels::ConvShape&>(g) = kernels::conv_shape(x, w, out, p);  // checked by Backend
  g.p = p;
  HR_CHECK(fits_int(p.stride_h) && fits_int(p.stride_w) && fits_int(p.pad_h) && fits_int(p.pad_w) &&
               fits_int(p.dilation_h) && fits_int(p.dilation_w) && fits_int(g.G),
           ValueError, op, ": stride, padding, dilation and groups must fit cuDNN's 32-bit parameters");
  HR_CHECK(fits_int(g.C * g.H * g.W) && fits_int(g.O * g.OH * g.OW) && fits_int(w.numel()), ValueError, op,
           ": one image of input ", shape_str(x.shape()), ", weight ", shape_str(w.shape()), " or output ",
           shape_str(out.shape()), " has more than 2^31 - 1 elements, past cuDNN's 32-bit descriptors");
  return g;
}

// Images per cuDNN call: as many as keep both the input and output chunks within 32 bits.
int64_t chunk_images(const ConvGeom& g) {
  const int64_t per_image = std::max<int64_t>({g.C * g.H * g.W, g.O * g.OH * g.OW, 1});
  return std::clamp<int64_t>(INT_MAX / per_image, 1, std::max<int64_t>(g.N, 1));
}

enum class Direction : int64_t { forward = 0, backward_data = 1, backward_filter = 2 };

struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

using CacheKey = std::array<int64_t, 19>;

struct AlgoCache {
  std::mutex mu;
  std::map<CacheKey, AlgoChoice> map;
};
AlgoCache& algo_cache() {
  static AlgoCache* cache = new AlgoCache();  // never destroyed, like the handles
  return *cache;
}

std::optional<AlgoChoice> cached_algo(const CacheKey& key) {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.map.find(key);
  if (it == cache.map.end()) return std::nullopt;
  return it->second;
}

void remember_algo(const CacheKey& key, const AlgoChoice& choice) {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.map.emplace(key, choice);  // a thread that measured the same shape first keeps its entry
}

// The math type a search or heuristic query starts from (see the top of the file).
cudnnMathType_t base_math(DType dtype) {
  switch (dtype) {
    case DType::f16:
    case DType::bf16: return CUDNN_TENSOR_OP_MATH;
    case DType::f32: return allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    default: return CUDNN_DEFAULT_MATH;
  }
}

// One cuDNN convolution call over a chunk of images. The operands keep their forward names:
// x [n, C, H, W], w [O, C/G, KH, KW], y [n, O, OH, OW]; forward writes y, backward data writes
// x (dx from dy = y), backward filter writes w (dw from x and dy = y).
struct ConvCall {
  Device device;
  cudnnHandle_t handle = nullptr;
  Direction dir = Direction::forward;
  DType dtype = DType::f32;
  TensorDescriptor x_desc, y_desc;
  FilterDescriptor w_desc;
  ConvolutionDescriptor conv_desc;
  void* x = nullptr;
  void* w = nullptr;
  void* y = nullptr;
  CacheKey key{};

  ConvCall(const KernelScope& scope, Direction direction, DType type, const ConvGeom& g, int64_t n)
      : device(scope.device()), handle(cudnn_handle(scope.device(), scope.stream())), dir(direction), dtype(type) {
    const cudnnDataType_t dt = cudnn_dtype(type, "cuda conv2d");
    const auto i = [](int64_t v) { return static_cast<int>(v); };  // ranges checked by geometry()
    x_desc.set_nchw(dt, i(n), i(g.C), i(g.H), i(g.W));
    y_desc.set_nchw(dt, i(n), i(g.O), i(g.OH), i(g.OW));
    w_desc.set_nchw(dt, i(g.O), i(g.Cg), i(g.KH), i(g.KW));
    conv_desc.set_2d(i(g.p.pad_h), i(g.p.pad_w), i(g.p.stride_h), i(g.p.stride_w), i(g.p.dilation_h), i(g.p.dilation_w),
                     i(g.G), type == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT);
    conv_desc.set_math_type(base_math(type));
    key = {device.index,
           static_cast<int64_t>(dir),
           static_cast<int64_t>(type),
           allow_tf32() ? 1 : 0,
           n,
           g.C,
           g.H,
           g.W,
           g.O,
           g.KH,
           g.KW,
           g.p.stride_h,
           g.p.stride_w,
           g.p.pad_h,
           g.p.pad_w,
           g.p.dilation_h,
           g.p.dilation_w,
           g.G,
           g.Cg};
  }
  ConvCall(const ConvCall&) = delete;
  ConvCall& operator=(const ConvCall&) = delete;

  // The operand this direction writes.
  void* output() const { return dir == Direction::forward ? y : dir == Direction::backward_data ? x : w; }
};

// The candidates of a perf list that ran (or would run) and fit `limit`, in the list's order
// (fastest first for a search, most promising first for the heuristics).
template <typename Perf>
std::vector<AlgoChoice> usable(const std::vector<Perf>& perf, int returned, size_t limit) {
  std::vector<AlgoChoice> out;
  for (int k = 0; k < returned && k < static_cast<int>(perf.size()); ++k) {
    const Perf& r = perf[static_cast<size_t>(k)];
    if (r.status == CUDNN_STATUS_SUCCESS && r.memory <= limit)
      out.push_back({static_cast<int>(r.algo), r.mathType, r.memory});
  }
  return out;
}

// cudnnFind*AlgorithmEx: every algorithm run and timed on the call's buffers, with `out`
// standing in for the operand the direction writes.
std::vector<AlgoChoice> measure(ConvCall& c, void* out, void* ws, size_t ws_bytes) {
  c.conv_desc.set_math_type(base_math(c.dtype));
  int max_count = 0, returned = 0;
  switch (c.dir) {
    case Direction::forward: {
      HR_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
          c.handle, c.x_desc.get(), c.x, c.w_desc.get(), c.w, c.conv_desc.get(), c.y_desc.get(), out,
          static_cast<int>(perf.size()), &returned, perf.data(), ws, ws_bytes));
      return usable(perf, returned, ws_bytes);
    }
    case Direction::backward_data: {
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
          c.handle, c.w_desc.get(), c.w, c.y_desc.get(), c.y, c.conv_desc.get(), c.x_desc.get(), out,
          static_cast<int>(perf.size()), &returned, perf.data(), ws, ws_bytes));
      return usable(perf, returned, ws_bytes);
    }
    case Direction::backward_filter: {
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
          c.handle, c.x_desc.get(), c.x, c.y_desc.get(), c.y, c.conv_desc.get(), c.w_desc.get(), out,
          static_cast<int>(perf.size()), &returned, perf.data(), ws, ws_bytes));
      return usable(perf, returned, ws_bytes);
    }
  }
  return {};
}

// cudnnGet*Algorithm_v7: cuDNN's ranking without running anything; those whose workspace fits
// `limit`, or, when none does, all of them (their workspace may still be had).
std::vector<AlgoChoice> guess(ConvCall& c, size_t limit) {
  c.conv_desc.set_math_type(base_math(c.dtype));
  int max_count = 0, returned = 0;
  const auto pick = [&](const auto& perf) {
    std::vector<AlgoChoice> fitting = usable(perf, returned, limit);
    return fitting.empty() ? usable(perf, returned, SIZE_MAX) : fitting;
  };
  switch (c.dir) {
    case Direction::forward: {
      HR_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(c.handle, c.x_desc.get(), c.w_desc.get(), c.conv_desc.get(),
                                                            c.y_desc.get(), static_cast<int>(perf.size()), &returned,
                                                            perf.data()));
      return pick(perf);
    }
    case Direction::backward_data: {
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          c.handle, c.w_desc.get(), c.y_desc.get(), c.conv_desc.get(), c.x_desc.get(), static_cast<int>(perf.size()),
          &returned, perf.data()));
      return pick(perf);
    }
    case Direction::backward_filter: {
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(c.handle, &max_count));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      HR_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          c.handle, c.x_desc.get(), c.y_desc.get(), c.conv_desc.get(), c.w_desc.get(), static_cast<int>(perf.size()),
          &returned, perf.data()));
      return pick(perf);
    }
  }
  return {};
}

// A search: a workspace of the budget (halved while the allocator cannot give it, down to none),
// then every algorithm measured. When beta != 0 the direction's output holds data the call
// must add to, so the search writes into a scratch copy of that operand's size instead.
std::vector<AlgoChoice> search(ConvCall& c, double beta, size_t out_bytes) {
  Tensor scratch_out;
  void* out = c.output();
  if (beta != 0) {
    scratch_out = workspace(c.device, out_bytes);
    out = scratch_out.raw_data();
  }
  size_t budget = search_workspace_budget(c.device);
  for (;;) {
    Tensor ws;
    try {
      if (budget > 0) ws = workspace(c.device, budget);
    } catch (const OutOfMemoryError&) {
      budget = budget >= (size_t{2} << 20) ? (budget / 2) & ~((size_t{1} << 20) - 1) : 0;
      continue;
    }
    return measure(c, out, budget > 0 ? ws.raw_data() : nullptr, budget);
  }
}

// Runs the call with one algorithm: out = alpha * conv + beta * out, alpha = 1.
void execute(ConvCall& c, const AlgoChoice& a, double beta) {
  Tensor ws;
  void* ws_ptr = nullptr;
  if (a.workspace > 0) {
    ws = workspace(c.device, a.workspace);
    ws_ptr = ws.raw_data();
  }
  // f32 without TF32 stays FMA-only whatever the search reported.
  c.conv_desc.set_math_type(c.dtype == DType::f32 && !allow_tf32() ? CUDNN_FMA_MATH : a.math);
  const double alpha_d = 1.0, beta_d = beta;
  const float alpha_f = 1.0f, beta_f = static_cast<float>(beta);
  const bool f64 = c.dtype == DType::f64;
  const void* alpha = f64 ? static_cast<const void*>(&alpha_d) : static_cast<const void*>(&alpha_f);
  const void* beta_p = f64 ? static_cast<const void*>(&beta_d) : static_cast<const void*>(&beta_f);
  switch (c.dir) {
    case Direction::forward:
      HR_CUDNN_CHECK(cudnnConvolutionForward(c.handle, alpha, c.x_desc.get(), c.x, c.w_desc.get(), c.w,
                                             c.conv_desc.get(), static_cast<cudnnConvolutionFwdAlgo_t>(a.algo), ws_ptr,
                                             a.workspace, beta_p, c.y_desc.get(), c.y));
      break;
    case Direction::backward_data:
      HR_CUDNN_CHECK(cudnnConvolutionBackwardData(c.handle, alpha, c.w_desc.get(), c.w, c.y_desc.get(), c.y,
                                                  c.conv_desc.get(), static_cast<cudnnConvolutionBwdDataAlgo_t>(a.algo),
                                                  ws_ptr, a.workspace, beta_p, c.x_desc.get(), c.x));
      break;
    case Direction::backward_filter:
      HR_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
          c.handle, alpha, c.x_desc.get(), c.x, c.y_desc.get(), c.y, c.conv_desc.get(),
          static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws_ptr, a.workspace, beta_p, c.w_desc.get(), c.w));
      break;
  }
}

// Tries the candidates in order; true once one ran. An algorithm whose workspace cannot be
// had, or that cuDNN declines, gives way to the next; the last failure is kept for the report.
bool run_first(ConvCall& c, const std::vector<AlgoChoice>& candidates, double beta, std::exception_ptr& failure,
               const std::optional<CacheKey>& remember_as) {
  for (const AlgoChoice& a : candidates) {
    try {
      execute(c, a, beta);
    } catch (const OutOfMemoryError&) {
      failure = std::current_exception();
      continue;
    } catch (const CudaLibraryError&) {
      failure = std::current_exception();
      continue;
    }
    if (remember_as) remember_algo(*remember_as, a);
    return true;
  }
  return false;
}

// One convolution call with the algorithm policy at the top of the file.
// A remembered algorithm that fails now (memory is tighter than when it was measured) is not
// replaced: the heuristics stand in for this call only. A search that yields nothing that runs
// remembers the heuristics' choice instead, so that the shape is not searched on every call.
void run_conv(ConvCall& c, double beta, size_t out_bytes, const char* op) {
  std::exception_ptr failure;
  std::optional<CacheKey> remember;
  if (cudnn_benchmark()) {
    if (std::optional<AlgoChoice> hit = cached_algo(c.key)) {
      if (run_first(c, {*hit}, beta, failure, std::nullopt)) return;
    } else {
      std::vector<AlgoChoice> measured;
      try {
        measured = search(c, beta, out_bytes);
      } catch (const CudaLibraryError&) {  // cuDNN could not measure this shape: ask its heuristics
        failure = std::current_exception();
      }
      if (run_first(c, measured, beta, failure, c.key)) return;
      remember = c.key;
    }
  }
  if (run_first(c, guess(c, search_workspace_budget(c.device)), beta, failure, remember)) return;
  if (failure) std::rethrow_exception(failure);
  throw CudaLibraryError(str_cat(op, ": cuDNN offers no algorithm for this convolution"));
}

// Zeroes a contiguous float tensor (all float zeros are all-zero bytes).
void zero(const KernelScope& scope, const Tensor& t) {
  if (t.numel() > 0) HR_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), scope.stream()));
}

char* bytes_of(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

}  // namespace

size_t conv_algorithm_cache_size() {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  return cache.map.size();
}

void clear_conv_algorithm_cache() {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.map.clear();
}

void CudaBackend::impl_conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                                      const Conv2dParams& p) {
  const char* op = "cuda conv2d_forward";
  const ConvGeom g = geometry(op, x, w, out, p);
  (void)cudnn_dtype(out.dtype(), op);
  HR_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == g.O && bias.dtype() == out.dtype()), ShapeError, op,
           ": bias ", describe(bias), " does not fit weight ", describe(w));
  if (out.numel() == 0) return;
  KernelScope scope(out);
  if (x.numel() == 0 || w.numel() == 0) {
    zero(scope, out);  // every window lies in the padding (or sums no channels)
  } else {
    const int64_t chunk = chunk_images(g);
    const size_t esz = dtype_size(out.dtype());
    for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
      const int64_t n = std::min(chunk, g.N - n0);
      ConvCall c(scope, Direction::forward, out.dtype(), g, n);
      c.x = bytes_of(x) + static_cast<size_t>(n0 * g.C * g.H * g.W) * esz;
      c.w = w.raw_data();
      c.y = bytes_of(out) + static_cast<size_t>(n0 * g.O * g.OH * g.OW) * esz;
      run_conv(c, 0.0, static_cast<size_t>(n * g.O * g.OH * g.OW) * esz, op);
    }
  }
  if (bias.defined()) add_channel_bias(scope, out, bias);
}

void CudaBackend::impl_conv2d_backward_input(const Tensor& dout, const Tensor& w, const Tensor& dx,
                                             const Conv2dParams& p) {
  const char* op = "cuda conv2d_backward_input";
  const ConvGeom g = geometry(op, dx, w, dout, p);
  (void)cudnn_dtype(dx.dtype(), op);
  if (dx.numel() == 0) return;
  KernelScope scope(dx);
  if (dout.numel() == 0 || w.numel() == 0) {
    zero(scope, dx);
    return;
  }
  const int64_t chunk = chunk_images(g);
  const size_t esz = dtype_size(dx.dtype());
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t n = std::min(chunk, g.N - n0);
    ConvCall c(scope, Direction::backward_data, dx.dtype(), g, n);
    c.x = bytes_of(dx) + static_cast<size_t>(n0 * g.C * g.H * g.W) * esz;
    c.w = w.raw_data();
    c.y = bytes_of(dout) + static_cast<size_t>(n0 * g.O * g.OH * g.OW) * esz;
    run_conv(c, 0.0, static_cast<size_t>(n * g.C * g.H * g.W) * esz, op);
  }
}

void CudaBackend::impl_conv2d_backward_weight(const Tensor& dout, const Tensor& x, const Tensor& dw,
                                              const Conv2dParams& p) {
  const char* op = "cuda conv2d_backward_weight";
  const ConvGeom g = geometry(op, x, dw, dout, p);
  (void)cudnn_dtype(dw.dtype(), op);
  if (dw.numel() == 0) return;
  KernelScope scope(dw);
  if (x.numel() == 0 || dout.numel() == 0) {
    zero(scope, dw);
    return;
  }
  const int64_t chunk = chunk_images(g);
  const size_t esz = dtype_size(dw.dtype());
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t n = std::min(chunk, g.N - n0);
    ConvCall c(scope, Direction::backward_filter, dw.dtype(), g, n);
    c.x = bytes_of(x) + static_cast<size_t>(n0 * g.C * g.H * g.W) * esz;
    c.w = dw.raw_data();
    c.y = bytes_of(dout) + static_cast<size_t>(n0 * g.O * g.OH * g.OW) * esz;
    run_conv(c, n0 == 0 ? 0.0 : 1.0, dw.nbytes(), op);  // later chunks add to the first
  }
}

}  // namespace headroom::cuda

#pragma GCC diagnostic pop
