// index_select and index_add on the GPU.
//
// Both see their tensors as [outer, size-along-dim, inner] without copying, with whatever
// strides they have, as on the CPU (kernels/cpu/index.cpp). The trick that makes the general
// case one strided launch: over the shape being walked, three operands go to the Indexer
// (cuda_common.cuh) -- the two tensors with their stride along `dim` zeroed (so their offsets
// are those of the outer and inner coordinates only), and a zero-strided "coordinate" operand
// whose stride is 1 along `dim` (so its offset is the position along dim). Inner dims merge as
// usual, so the common embedding case ([K, D] rows of a [V, D] table) is a 2-d walk with
// consecutive threads on consecutive columns: coalesced.
//
// index_select (out written, =) is one thread per output element and moves bytes, so it
// dispatches on the element size, not the dtype.
//
// index_add (out accumulated, +=) must sum repeated indices. It does so without atomics: the
// index is sorted once (CUB's stable radix sort of (value, position) pairs), and the thread at
// the start of each run of equal values sums that run's source rows in position order, in f32
// for f16/bf16 (f64 for f64, i64 for integers), and adds the sum to its destination once. So
// every destination element has exactly one writer, repeated indices lose no precision to
// 16-bit rounding, the result is deterministic, and it is the CPU's result: the same groups,
// summed in the same order, rounded once. (Atomics would make the summation order -- and so
// f32 results -- vary from run to run, and 16-bit atomics would round after every addition.)
// The cost is a sort of the index (four index-sized i64 buffers and CUB's scratch, all
// workspace) and, for a value repeated L times, L sequential loads per column in one thread.
//
// Note [index check]: an index out of range throws ValueError, as on the CPU, before anything is
// written. The indices live on the GPU, so a small kernel reduces them to (min, max, first bad
// position) and the host reads those 24 bytes back: one stream synchronisation per call. It is
// kept because the alternative is a gather or scatter through an out-of-range index -- an
// embedding lookup with a bad token id would read (or index_add write) outside the tensor,
// silently returning garbage or corrupting other tensors, or crashing the context with an
// illegal address far from its cause.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <bit>
#include <climits>

#include "engine/memory.h"
#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

// ---- the index check (Note [index check]) ----

struct IndexRange {
  long long min, max, first_bad;  // first_bad: the smallest position of an index out of range
};

__global__ void index_range_init_kernel(IndexRange* r) {
  r->min = LLONG_MAX;
  r->max = LLONG_MIN;
  r->first_bad = LLONG_MAX;
}

__device__ __forceinline__ long long warp_min_ll(long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w < v ? w : v;
  }
  return v;
}
__device__ __forceinline__ long long warp_max_ll(long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Each block reduces its share to one (min, max, first bad) and folds it in with three atomics.
// Launched with kBlock threads (a multiple of 32).
__global__ void index_range_kernel(const int64_t* __restrict__ index, int64_t stride, int64_t n, int64_t size,
                                   IndexRange* r) {
  __shared__ long long s_min[32], s_max[32], s_bad[32];
  long long lo = LLONG_MAX, hi = LLONG_MIN, bad = LLONG_MAX;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const long long v = index[i * stride];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    if ((v < 0 || v >= size) && i < bad) bad = i;
  }
  lo = warp_min_ll(lo);
  hi = warp_max_ll(hi);
  bad = warp_min_ll(bad);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) {
    s_min[warp] = lo;
    s_max[warp] = hi;
    s_bad[warp] = bad;
  }
  __syncthreads();
  if (warp == 0) {
    lo = warp_min_ll(lane < warps ? s_min[lane] : LLONG_MAX);
    hi = warp_max_ll(lane < warps ? s_max[lane] : LLONG_MIN);
    bad = warp_min_ll(lane < warps ? s_bad[lane] : LLONG_MAX);
    if (lane == 0) {
      atomicMin(&r->min, lo);
      atomicMax(&r->max, hi);
      if (bad != LLONG_MAX) atomicMin(&r->first_bad, bad);
    }
  }
}

// The index (i64, 1-d, any stride) checked against the size of the dim it indexes; throws
// ValueError naming the op, the first bad index and its position, the range of the indices and
// the dim's size. Synchronises the stream once (Note [index check]).
void check_index(const KernelScope& scope, const char* op, const Tensor& index, int64_t size, int64_t dim,
                 const Tensor& indexed) {
  HR_CHECK(index.dim() == 1 && index.dtype() == DType::i64, DTypeError, op, ": index must be a 1-d i64 tensor, got ",
           describe(index));
  HR_CHECK(index.device() == indexed.device(), DeviceError, op, ": index ", describe(index),
           " is not on the device of ", describe(indexed));
  const int64_t n = index.numel();
  if (n == 0) return;
  Tensor range_buf;
  {
    CategoryScope workspace(MemoryCategory::workspace);
    range_buf = Tensor::empty({static_cast<int64_t>(sizeof(IndexRange))},
                              TensorOptions().dtype(DType::u8).device(index.device()));
  }
  auto* range = device_data<IndexRange>(range_buf);
  const int64_t* idx = device_data<int64_t>(index);
  const int64_t stride = index.stride(0);
  index_range_init_kernel<<<1, 1, 0, scope.stream()>>>(range);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  index_range_kernel<<<std::min(grid_for(n), 1024u), kBlock, 0, scope.stream()>>>(idx, stride, n, size, range);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  IndexRange host{};
  HR_CUDA_CHECK(cudaMemcpyAsync(&host, range, sizeof(IndexRange), cudaMemcpyDeviceToHost, scope.stream()));
  HR_CUDA_CHECK(cudaStreamSynchronize(scope.stream()));  // the one synchronisation (Note [index check])
  if (host.first_bad == LLONG_MAX) return;
  // Error path only: fetch the first bad value itself for the message.
  int64_t bad_value = 0;
  HR_CUDA_CHECK(cudaMemcpyAsync(&bad_value, idx + host.first_bad * stride, sizeof(int64_t), cudaMemcpyDeviceToHost,
                                scope.stream()));
  HR_CUDA_CHECK(cudaStreamSynchronize(scope.stream()));
  throw ValueError(str_cat(op, ": index ", bad_value, " at position ", host.first_bad, " is out of range for dim ", dim,
                           " of size ", size, " (tensor ", describe(indexed), "); the ", n, " indices span [", host.min,
                           ", ", host.max, "], valid is [0, ", size - 1, "]"));
}

// ---- views for the strided walk ----

// t's layout over `shape` with its stride along dim zeroed: offsets of the other coordinates.
Tensor without_dim(const Tensor& t, const Shape& shape, int64_t dim) {
  Shape strides = t.strides();
  strides[static_cast<size_t>(dim)] = 0;
  return t.as_strided(shape, strides, 0);
}

// A layout over `shape` whose offset is the coordinate along dim. Only its shape and strides
// are read (by make_indexer); no memory is touched through it.
Tensor coordinate_along(const Tensor& t, const Shape& shape, int64_t dim) {
  Shape strides(shape.size(), 0);
  strides[static_cast<size_t>(dim)] = 1;
  return t.as_strided(shape, strides, 0);
}

// ---- index_select ----

template <typename U>
void gather_impl(const KernelScope& scope, const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const Tensor x_rest = without_dim(x, out.shape(), dim);
  const Tensor coord = coordinate_along(out, out.shape(), dim);
  const Indexer<3> ix = make_indexer<3>({&out, &x_rest, &coord});
  U* pout = device_data<U>(out);
  const U* px = device_data<U>(x);
  const int64_t* idx = device_data<int64_t>(index);
  const int64_t istride = index.stride(0), xstep = x.stride(dim);
  launch_strided<3>(scope, ix, out.numel(),
                    [=] __device__(const int64_t* off) { pout[off[0]] = px[off[1] + idx[off[2] * istride] * xstep]; });
}

// ---- index_add ----

__global__ void index_pairs_kernel(const int64_t* __restrict__ index, int64_t stride, int n, int64_t* __restrict__ keys,
                                   int64_t* __restrict__ positions) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = index[i * stride];
    positions[i] = i;
  }
}

// One past the run of `key` that starts at j in the sorted keys[0, n): a galloping search
// (1, 2, 4, ... ahead, then bisection), so a run of length L costs O(log L) loads.
__device__ __forceinline__ int64_t run_end(const int64_t* keys, int64_t n, int64_t j, int64_t key) {
  int64_t lo = j, hi = j + 1, step = 1;  // keys[lo] == key; hi: first candidate past the run
  while (hi < n && keys[hi] == key) {
    lo = hi;
    step *= 2;
    hi = lo + step;
  }
  if (hi > n) hi = n;
  while (hi - lo > 1) {  // keys[lo] == key, and hi == n or keys[hi] != key
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] == key) lo = mid;
    else hi = mid;
  }
  return hi;
}

// The index's values and positions sorted by value (stably: positions ascend within a run).
// The returned pointers point into the buffers, which the caller keeps alive.
struct SortedIndex {
  Tensor buffers;  // [4, n] i64: two key and two position halves of CUB's double buffers
  const int64_t* keys = nullptr;
  const int64_t* positions = nullptr;
};

SortedIndex sort_index(const KernelScope& scope, const Tensor& index, int64_t size) {
  const int64_t n64 = index.numel();
  HR_CHECK(n64 <= INT_MAX, ShapeError, "cuda index_add: at most ", INT_MAX, " indices are supported, got ", n64);
  const int n = static_cast<int>(n64);
  CategoryScope workspace(MemoryCategory::workspace);
  SortedIndex s;
  s.buffers = Tensor::empty({4, n64}, TensorOptions().dtype(DType::i64).device(index.device()));
  int64_t* base = device_data<int64_t>(s.buffers);
  int64_t *keys0 = base, *keys1 = base + n64, *pos0 = base + 2 * n64, *pos1 = base + 3 * n64;
  index_pairs_kernel<<<grid_for(n64), kBlock, 0, scope.stream()>>>(device_data<int64_t>(index), index.stride(0), n,
                                                                   keys0, pos0);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  // The values are checked to lie in [0, size), so only their low bits need sorting.
  const int end_bit = std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(size - 1))));
  cub::DoubleBuffer<int64_t> keys(keys0, keys1), positions(pos0, pos1);
  size_t scratch_bytes = 0;
  HR_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr, scratch_bytes, keys, positions, n, 0, end_bit, scope.stream()));
  const Tensor scratch = Tensor::empty({static_cast<int64_t>(std::max<size_t>(scratch_bytes, 1))},
                                       TensorOptions().dtype(DType::u8).device(index.device()));
  HR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.raw_data(), scratch_bytes, keys, positions, n, 0, end_bit,
                                                scope.stream()));
  s.keys = keys.Current();
  s.positions = positions.Current();
  return s;  // scratch is released after the sort is queued: reused only in stream order
}

template <typename T>
void scatter_add_impl(const KernelScope& scope, const Tensor& out, int64_t dim, const Tensor& index,
                      const Tensor& src) {
  // Sums of a run: f32 for f16/bf16, f64 for f64, i64 for integers (as on the CPU).
  using A = std::conditional_t<std::is_floating_point_v<acc_type<T>>, acc_type<T>, int64_t>;
  const SortedIndex sorted = sort_index(scope, index, out.size(dim));
  const Tensor src_rest = without_dim(src, src.shape(), dim);
  const Tensor out_rest = without_dim(out, src.shape(), dim);
  const Tensor coord = coordinate_along(src, src.shape(), dim);
  const Indexer<3> ix = make_indexer<3>({&src_rest, &out_rest, &coord});
  T* pout = device_data<T>(out);
  const T* psrc = device_data<T>(src);
  const int64_t* keys = sorted.keys;
  const int64_t* positions = sorted.positions;
  const int64_t n = index.numel(), src_step = src.stride(dim), out_step = out.stride(dim);
  // One thread per source element (outer, j, inner), j a position in the sorted index; only the
  // thread at the start of a run does the run's work, so each destination has one writer.
  launch_strided<3>(scope, ix, src.numel(), [=] __device__(const int64_t* off) {
    const int64_t j = off[2];
    const int64_t key = keys[j];
    if (j > 0 && keys[j - 1] == key) return;
    const int64_t end = run_end(keys, n, j, key);
    const T* s = psrc + off[0];
    A acc = A(0);
#pragma unroll 4
    for (int64_t q = j; q < end; ++q) acc += convert<A>(s[positions[q] * src_step]);
    T* d = pout + off[1] + key * out_step;
    *d = convert<T>(convert<A>(*d) + acc);
  });
  // sorted.buffers is released after the scatter is queued.
}

}  // namespace

void CudaBackend::impl_index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const char* op = "index_select";
  const int64_t d = wrap_dim(dim, x.dim(), op);  // checked by Backend::index_select
  KernelScope scope(x);
  check_index(scope, op, index, x.size(d), d, x);
  if (out.numel() == 0) return;
  switch (dtype_size(x.dtype())) {
    case 1: gather_impl<uint8_t>(scope, x, d, index, out); break;
    case 2: gather_impl<uint16_t>(scope, x, d, index, out); break;
    case 4: gather_impl<uint32_t>(scope, x, d, index, out); break;
    case 8: gather_impl<uint64_t>(scope, x, d, index, out); break;
    default: throw DTypeError(str_cat(op, ": unsupported element size for ", describe(x)));
  }
}

void CudaBackend::impl_index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const char* op = "index_add";
  const int64_t d = wrap_dim(dim, out.dim(), op);  // checked by Backend::index_add
  KernelScope scope(out);
  check_index(scope, op, index, out.size(d), d, out);
  if (src.numel() == 0) return;
  dispatch_cuda(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, bool>) scatter_add_impl<T>(scope, out, d, index, src);
  });
}

}  // namespace headroom::cuda
