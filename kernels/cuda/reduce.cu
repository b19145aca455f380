// Reductions on the GPU: sum, mean, max, min, argmax, argmin over any set of dims, any strides.
//
// The host splits x's dims into kept ones (those of out) and reduced ones, each group merged
// where its memory is contiguous, so that an output index m and a reduced index k give x's
// element at kept(m) + reduced(k) (k is row-major over the reduced dims in their order, as on
// the CPU: it is argmax's index and the tie-breaker). One kernel then takes one of two shapes:
//  - row mode, when the reduced elements of an output are closer together in memory than
//    neighbouring outputs (a contiguous last dim, a full reduction): threadIdx.x walks k, so a
//    warp reads consecutive elements; a warp or block per output, warp shuffles then shared
//    memory to combine the lanes;
//  - column mode, when neighbouring outputs are neighbours in memory (sum over dim 0 of
//    [N, C]) or the reduction is short: threadIdx.x walks outputs, so a warp reads
//    consecutive outputs at each k, and threadIdx.y splits long reductions, combined in
//    shared memory.
// When there are too few outputs to fill the GPU (a full reduction of 16M elements, a column
// sum of a tall matrix), blockIdx.y splits the reduced range: the blocks write partial states
// into a scratch tensor [M, splits] and a second kernel, a warp per output, combines them.
// The launch shape depends only on the shapes and strides, never on the GPU, so a result is
// bitwise reproducible run to run and card to card.
//
// Accumulation: f16/bf16 and f32 in f32, f64 in f64, integers and bool in int64; an integer
// sum is rounded through double on the way out, as the CPU does. max/min (and their arg
// forms) keep the first index of the extremum, and a NaN wins (the first NaN), as on the CPU;
// max/min track the index too, so that which of -0 and +0 is returned also matches. mean is
// sum / count in double; an empty sum is 0 and an empty mean NaN. Outputs are written (=).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/op_profile.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

constexpr int kMaxReduceThreads = 512;
// Blocks we aim for before splitting the reduced range: about one full wave of 256-thread
// blocks on an H100 (132 SMs x 8). Fixed, not queried, so that results do not depend on the
// card.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinPerThread = 16;  // reduced elements a thread should get before a split pays

// Element offsets of N operands over a group of dims, from a row-major index into the group.
// A group always has at least one dim (a size-1 dim with stride 0 when empty).
template <int N>
struct DimGroup {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {1};
  int64_t strides[N][kMaxDims] = {};

  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&off)[N]) const {
    if (ndim == 1) {
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = linear * strides[k][0];
      return;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = linear % sizes[d];
      linear /= sizes[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += idx * strides[k][d];
    }
  }
};

// Builds a group from dims given in order (sizes and per-operand strides), dropping size-1
// dims and merging neighbours that are contiguous in every operand.
template <int N>
DimGroup<N> make_group(const std::vector<int64_t>& sizes, const std::array<std::vector<int64_t>, N>& strides,
                       const char* op, const Shape& x_shape) {
  std::vector<int64_t> s;
  std::array<std::vector<int64_t>, N> st;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 1) continue;
    const bool merge = !s.empty() && [&] {
      for (int k = 0; k < N; ++k)
        if (st[static_cast<size_t>(k)].back() != strides[static_cast<size_t>(k)][d] * sizes[d]) return false;
      return true;
    }();
    if (merge) {
      s.back() *= sizes[d];
      for (int k = 0; k < N; ++k) st[static_cast<size_t>(k)].back() = strides[static_cast<size_t>(k)][d];
    } else {
      s.push_back(sizes[d]);
      for (int k = 0; k < N; ++k) st[static_cast<size_t>(k)].push_back(strides[static_cast<size_t>(k)][d]);
    }
  }
  HR_CHECK(s.size() <= static_cast<size_t>(kMaxDims), ShapeError, "reduce ", op, ": cuda kernels take at most ",
           kMaxDims, " kept and ", kMaxDims, " reduced dims after merging contiguous ones; got input ",
           shape_str(x_shape));
  DimGroup<N> g;
  if (s.empty()) return g;  // one element at offset 0
  g.ndim = static_cast<int>(s.size());
  for (int d = 0; d < g.ndim; ++d) {
    g.sizes[d] = s[static_cast<size_t>(d)];
    for (int k = 0; k < N; ++k) g.strides[k][d] = st[static_cast<size_t>(k)][static_cast<size_t>(d)];
  }
  return g;
}

struct ReduceGeometry {
  DimGroup<2> kept;   // offsets of x and out for output m
  DimGroup<1> red;    // offset of x for reduced index k
  int64_t M = 1;      // outputs
  int64_t K = 1;      // reduced elements per output
  int64_t chunk = 1;  // reduced elements per split (blockIdx.y)
  bool row = false;   // k on threadIdx.x (row mode) or on threadIdx.y (column mode)
};

// The value a reduction carries: f32 for f16/bf16/f32, f64 for f64, int64 for integers and
// bool (shuffle-able types, all of them).
template <typename T>
using reduce_value_t = std::conditional_t<std::is_same_v<T, double>, double,
                                          std::conditional_t<std::is_floating_point_v<acc_type<T>>, float, long long>>;

template <typename T>
struct SumReducer {
  using V = reduce_value_t<T>;
  struct State {
    V v;
  };
  bool mean;

  __device__ static State empty() { return {V(0)}; }
  __device__ static void add(State& s, T x, int64_t) { s.v += convert<V>(x); }
  __device__ static State combine(State a, State b) { return {a.v + b.v}; }
  __device__ static State shfl_down(State s, int delta) { return {__shfl_down_sync(0xffffffffu, s.v, delta)}; }
  __device__ void write(void* out, int64_t off, State s, int64_t count) const {
    T* o = static_cast<T*>(out) + off;
    if (mean) {
      *o = convert<T>(static_cast<double>(s.v) / static_cast<double>(count));
    } else if constexpr (std::is_integral_v<V>) {
      *o = convert<T>(static_cast<double>(s.v));  // the CPU rounds integer sums through double
    } else {
      *o = convert<T>(s.v);
    }
  }
};

// max (kMax) or min; `arg` writes the index (i64) instead of the value.
template <typename T, bool kMax>
struct ExtremeReducer {
  using V = reduce_value_t<T>;
  struct State {
    V v;
    long long idx;  // -1: nothing seen yet
  };
  bool arg;

  __device__ static bool is_nan(V v) {
    if constexpr (std::is_floating_point_v<V>) return isnan(v);
    else return false;
  }
  // Whether a replaces b when a comes later: strictly better, or the first NaN.
  __device__ static bool beats(V a, V b) { return (kMax ? a > b : a < b) || (is_nan(a) && !is_nan(b)); }
  __device__ static State empty() { return {V(0), -1}; }
  __device__ static void add(State& s, T x, int64_t k) {
    const V v = convert<V>(x);
    if (s.idx < 0 || beats(v, s.v)) s = {v, static_cast<long long>(k)};
  }
  // Order-free: the better value, and between equals (or two NaNs) the smaller index.
  __device__ static State combine(State a, State b) {
    if (b.idx < 0) return a;
    if (a.idx < 0) return b;
    if (beats(a.v, b.v)) return a;
    if (beats(b.v, a.v)) return b;
    return a.idx <= b.idx ? a : b;
  }
  __device__ static State shfl_down(State s, int delta) {
    return {__shfl_down_sync(0xffffffffu, s.v, delta), __shfl_down_sync(0xffffffffu, s.idx, delta)};
  }
  __device__ void write(void* out, int64_t off, State s, int64_t) const {
    if (arg) static_cast<int64_t*>(out)[off] = s.idx;
    else static_cast<T*>(out)[off] = convert<T>(s.v);
  }
};

// Lane 0 of the (full) warp gets the warp's combined state.
template <typename R>
__device__ __forceinline__ typename R::State warp_combine(typename R::State s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = R::combine(s, R::shfl_down(s, o));
  return s;
}

// Combines the states of the threads that share an output (the k lanes). Called by every
// thread of the block (it synchronises); the result is valid in k lane 0. Row mode: k lanes
// are threadIdx.x, blockDim.x a multiple of 32, so warps never straddle outputs. Column mode:
// k lanes are threadIdx.y, blockDim.y a power of two.
template <typename R>
__device__ typename R::State combine_lanes(typename R::State s, bool row, typename R::State* shared) {
  if (row) {
    s = warp_combine<R>(s);
    if (blockDim.x == 32) return s;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    __syncthreads();  // shared may still be read from the previous output group
    if (lane == 0) shared[threadIdx.y * warps + warp] = s;
    __syncthreads();
    if (warp == 0) {
      s = lane < warps ? shared[threadIdx.y * warps + lane] : R::empty();
      s = warp_combine<R>(s);
    }
    return s;
  }
  if (blockDim.y == 1) return s;
  const int i = threadIdx.y * blockDim.x + threadIdx.x;
  __syncthreads();  // shared may still be read from the previous output group
  shared[i] = s;
  for (int step = blockDim.y / 2; step > 0; step >>= 1) {
    __syncthreads();
    if (static_cast<int>(threadIdx.y) < step) shared[i] = R::combine(shared[i], shared[i + step * blockDim.x]);
  }
  return shared[i];  // k lane 0 reads what it wrote itself last
}

// One pass: each block takes groups of outputs (grid-stride over blockIdx.x) and the part
// blockIdx.y of their reduced range. With one split it writes out; otherwise partial[m, split].
template <typename T, typename R>
__global__ void __launch_bounds__(kMaxReduceThreads)
    reduce_kernel(const T* __restrict__ x, void* __restrict__ out, typename R::State* __restrict__ partial,
                  ReduceGeometry g, R r) {
  using State = typename R::State;
  __shared__ State shared[kMaxReduceThreads];
  const int k_lanes = g.row ? blockDim.x : blockDim.y;
  const int k_lane = g.row ? threadIdx.x : threadIdx.y;
  const int outs = g.row ? blockDim.y : blockDim.x;
  const int out_lane = g.row ? threadIdx.y : threadIdx.x;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * g.chunk;
  const int64_t k_end = min(g.K, k_begin + g.chunk);
  const int64_t groups = (g.M + outs - 1) / outs;
  // The group loop is uniform over the block (it depends on blockIdx only), so every thread
  // reaches the synchronisations in combine_lanes.
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t m = grp * outs + out_lane;
    State s = R::empty();
    int64_t off[2] = {0, 0};
    if (m < g.M) {
      g.kept.offsets(m, off);
      const T* xm = x + off[0];
      if (g.red.ndim == 1) {
        const int64_t rs = g.red.strides[0][0];
        for (int64_t k = k_begin + k_lane; k < k_end; k += k_lanes) R::add(s, xm[k * rs], k);
      } else {
        for (int64_t k = k_begin + k_lane; k < k_end; k += k_lanes) {
          int64_t ro[1];
          g.red.offsets(k, ro);
          R::add(s, xm[ro[0]], k);
        }
      }
    }
    s = combine_lanes<R>(s, g.row, shared);
    if (k_lane == 0 && m < g.M) {
      if (gridDim.y == 1) r.write(out, off[1], s, g.K);
      else partial[m * gridDim.y + blockIdx.y] = s;
    }
  }
}

// Second pass of a split reduction: a warp per output combines its `splits` partial states.
template <typename R>
__global__ void reduce_finalize_kernel(const typename R::State* __restrict__ partial, void* __restrict__ out,
                                       DimGroup<2> kept, int64_t M, int splits, int64_t K, R r) {
  using State = typename R::State;
  const int lane = threadIdx.x % 32;
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t warps = gridDim.x * warps_per_block;
  // m is uniform over a warp, so the whole warp takes part in each shuffle.
  for (int64_t m = blockIdx.x * warps_per_block + threadIdx.x / 32; m < M; m += warps) {
    State s = R::empty();
    for (int j = lane; j < splits; j += 32) s = R::combine(s, partial[m * splits + j]);
    s = warp_combine<R>(s);
    if (lane == 0) {
      int64_t off[2];
      kept.offsets(m, off);
      r.write(out, off[1], s, K);
    }
  }
}

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <typename T, typename R>
void run_reduce(const KernelScope& scope, const Tensor& x, const Tensor& out, ReduceGeometry g, R r) {
  using State = typename R::State;
  // Neighbouring reduced elements vs neighbouring outputs: whichever is closer in memory gets
  // threadIdx.x. Short reductions always go a thread per output.
  const int64_t red_inner = std::abs(g.red.strides[0][g.red.ndim - 1]);
  const bool has_kept = g.M > 1;
  const int64_t kept_inner =
      has_kept ? std::abs(g.kept.strides[0][g.kept.ndim - 1]) : std::numeric_limits<int64_t>::max();
  g.row = g.K >= 32 && red_inner <= kept_inner;

  dim3 block;
  int64_t k_lanes = 1, outs = 1;
  if (g.row) {
    const int64_t bx = g.K >= 8192 ? 512 : g.K >= 2048 ? 256 : g.K >= 512 ? 128 : g.K >= 256 ? 64 : 32;
    const int64_t by = bx >= 256 ? 1 : 256 / bx;
    block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by));
    k_lanes = bx;
    outs = by;
  } else {
    int64_t by = 1;
    const int64_t by_cap = kBlock / std::min<int64_t>(32, pow2_ceil(g.M));
    while (by * 2 <= by_cap && by * 2 * kMinPerThread <= g.K) by *= 2;
    const int64_t bx = std::min<int64_t>(pow2_ceil(g.M), kBlock / by);
    block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by));
    k_lanes = by;
    outs = bx;
  }
  const int64_t blocks_x = (g.M + outs - 1) / outs;
  int64_t splits = 1;
  if (blocks_x < kTargetBlocks / 2 && g.K > 0) {
    const int64_t want = (kTargetBlocks + blocks_x - 1) / blocks_x;
    const int64_t work = (g.K + k_lanes * kMinPerThread - 1) / (k_lanes * kMinPerThread);
    splits = std::max<int64_t>(1, std::min<int64_t>({want, work, 65535}));
  }
  g.chunk = g.K > 0 ? (g.K + splits - 1) / splits : 0;
  if (g.K > 0) splits = (g.K + g.chunk - 1) / g.chunk;  // no empty split
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(blocks_x, 65535 * 8)), static_cast<unsigned>(splits));

  const T* px = device_data<const T>(x);
  void* po = out.raw_data();
  if (splits == 1) {
    reduce_kernel<T, R><<<grid, block, 0, scope.stream()>>>(px, po, nullptr, g, r);
    HR_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Partial states from the caching allocator, on this stream; freeing the tensor after the
  // launches are queued is safe (the allocator reuses it in stream order).
  Tensor scratch = Tensor::empty({g.M * splits * static_cast<int64_t>(sizeof(State))},
                                 TensorOptions().dtype(DType::u8).device(x.device()));
  auto* partial = static_cast<State*>(scratch.raw_data());
  reduce_kernel<T, R><<<grid, block, 0, scope.stream()>>>(px, po, partial, g, r);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t warps_per_block = kBlock / 32;
  const auto fin_blocks =
      static_cast<unsigned>(std::min<int64_t>((g.M + warps_per_block - 1) / warps_per_block, 65535 * 8));
  reduce_finalize_kernel<R>
      <<<fin_blocks, kBlock, 0, scope.stream()>>>(partial, po, g.kept, g.M, static_cast<int>(splits), g.K, r);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void reduce_impl(const KernelScope& scope, ReduceOp op, const Tensor& x, const Tensor& out, const ReduceGeometry& g) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean: run_reduce<T>(scope, x, out, g, SumReducer<T>{op == ReduceOp::mean}); return;
    case ReduceOp::max:
    case ReduceOp::argmax: run_reduce<T>(scope, x, out, g, ExtremeReducer<T, true>{op == ReduceOp::argmax}); return;
    case ReduceOp::min:
    case ReduceOp::argmin: run_reduce<T>(scope, x, out, g, ExtremeReducer<T, false>{op == ReduceOp::argmin}); return;
    case ReduceOp::kCount: break;
  }
  throw ValueError(str_cat("cuda reduce: invalid op ", static_cast<int>(op)));
}

}  // namespace

void CudaBackend::impl_reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  const char* name = reduce_op_name(op);
  const Shape& xs = x.shape();
  const Shape& os = out.shape();
  HR_CHECK(xs.size() == os.size(), ShapeError, "reduce ", name, ": input ", shape_str(xs), " and output ",
           shape_str(os), " differ in rank");
  const bool arg = op == ReduceOp::argmax || op == ReduceOp::argmin;
  HR_CHECK(arg ? out.dtype() == DType::i64 : out.dtype() == x.dtype(), DTypeError, "reduce ", name, ": output dtype ",
           dtype_name(out.dtype()), " does not fit input ", dtype_name(x.dtype()));
  HR_CHECK(x.numel() > 0 || op == ReduceOp::sum || op == ReduceOp::mean, ValueError, "reduce ", name,
           ": cannot reduce an empty tensor ", shape_str(xs));
  std::vector<int64_t> kept_sizes, red_sizes;
  std::array<std::vector<int64_t>, 2> kept_strides;
  std::array<std::vector<int64_t>, 1> red_strides;
  ReduceGeometry g;
  for (size_t d = 0; d < xs.size(); ++d) {
    const bool reduced = os[d] == 1 && xs[d] != 1;
    HR_CHECK(reduced || os[d] == xs[d], ShapeError, "reduce ", name, ": output ", shape_str(os), " does not fit input ",
             shape_str(xs));
    if (reduced) {
      red_sizes.push_back(xs[d]);
      red_strides[0].push_back(x.strides()[d]);
      g.K *= xs[d];
    } else {
      kept_sizes.push_back(xs[d]);
      kept_strides[0].push_back(x.strides()[d]);
      kept_strides[1].push_back(out.strides()[d]);
      g.M *= xs[d];
    }
  }
  if (out.numel() == 0) return;
  g.kept = make_group<2>(kept_sizes, kept_strides, name, xs);
  g.red = make_group<1>(red_sizes, red_strides, name, xs);
  KernelScope scope(x, profile_name("reduce", name));
  dispatch_cuda(x.dtype(), [&](auto tag) { reduce_impl<typename decltype(tag)::type>(scope, op, x, out, g); });
}

}  // namespace headroom::cuda
