// What every CUDA kernel file in headroom shares: the device types behind each DType, the
// conversions between them, dtype dispatch, a strided indexer for tensors of any layout, the
// launch geometry, and the scope that picks a tensor's device and current stream.
//
// Storage is the same bytes on every device (engine/dtype.h): f16 is IEEE binary16, bf16 the top
// half of an f32. On the GPU they are CUDA's own __half and __nv_bfloat16, so kernels get the
// hardware conversions; reduced precision is always computed and accumulated in f32
// (acc_type), f64 in f64. Kernels run on the tensor's device and on the current stream of that
// device (engine/memory.h current_stream, Note [cuda streams] in cuda_memory.h), so that a
// StreamGuard moves both the kernels and the allocator's per-stream bookkeeping together.
//
//   template <typename T>                          // T: float, double, __half, ..., bool
//   void fill_kernel(const KernelScope& scope, const Tensor& out, double value) {
//     const T v = convert<T>(value);
//     T* p = device_data<T>(out);
//     launch_strided<1>(scope, make_indexer<1>({&out}), out.numel(),
//                       [=] __device__(const int64_t* off) { p[off[0]] = v; });
//   }
//   void CudaBackend::fill(const Tensor& out, double value) {
//     KernelScope scope(out);                      // device guard + current stream
//     dispatch_cuda(out.dtype(), [&](auto tag) { fill_kernel<typename decltype(tag)::type>(scope, out, value); });
//   }
//
// nvcc does not allow a __device__ lambda inside a generic lambda, hence the named template
// called from the dispatch lambda.
// Every launch is followed by HR_CUDA_KERNEL_LAUNCH_CHECK() (cuda_check.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "engine/memory.h"
#include "engine/tensor.h"
#include "kernels/strided_layout.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/cuda_scope.h"

namespace headroom::cuda {

// ---- types ----

// The device type that stores a host-side element type: Half -> __half, BFloat16 ->
// __nv_bfloat16, everything else itself.
template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<Half> {
  using type = __half;
};
template <>
struct DeviceTypeOf<BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceTypeOf<T>::type;

template <typename T>
inline constexpr bool is_half_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// The type a kernel computes in: f32 for the 16-bit floats, the type itself otherwise.
template <typename T>
struct AccTypeOf {
  using type = T;
};
template <>
struct AccTypeOf<__half> {
  using type = float;
};
template <>
struct AccTypeOf<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using acc_type = typename AccTypeOf<T>::type;

// Any element type to any other, through f32 for the 16-bit floats (round to nearest even),
// != 0 for bool. Usable on host and device.
template <typename To, typename From>
__host__ __device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<From, To>) {
    return v;
  } else if constexpr (std::is_same_v<From, __half>) {
    return convert<To>(__half2float(v));
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return convert<To>(__bfloat162float(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else {
    return static_cast<To>(v);
  }
}

// dispatch_cuda(d, [&](auto tag) { using T = typename decltype(tag)::type; ... }) with T the
// device type (float, double, __half, __nv_bfloat16, int32_t, int64_t, uint8_t, bool).
template <typename F>
decltype(auto) dispatch_cuda(DType d, F&& f) {
  switch (d) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::f16: return f(TypeTag<__half>{});
    case DType::bf16: return f(TypeTag<__nv_bfloat16>{});
    case DType::i32: return f(TypeTag<int32_t>{});
    case DType::i64: return f(TypeTag<int64_t>{});
    case DType::u8: return f(TypeTag<uint8_t>{});
    case DType::boolean: return f(TypeTag<bool>{});
  }
  throw DTypeError("dispatch_cuda: invalid dtype");
}

// The four float dtypes only; anything else throws a DTypeError naming `op`.
template <typename F>
decltype(auto) dispatch_cuda_float(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::f16: return f(TypeTag<__half>{});
    case DType::bf16: return f(TypeTag<__nv_bfloat16>{});
    default: break;
  }
  throw DTypeError(str_cat(op, ": expected a floating dtype (f32, f64, f16, bf16) on cuda, got ", dtype_name(d)));
}

// The element pointer of a tensor (its storage plus offset) as a device type.
template <typename T>
T* device_data(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// ---- strided indexing ----

inline constexpr int kMaxDims = 12;

// Element offsets of N same-shaped operands (any strides, zero strides for broadcast) from a
// linear row-major index. Dims contiguous across all operands are merged on the host first, so
// the common cases are 1-d.
template <int N>
struct Indexer {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {1};
  int64_t strides[N][kMaxDims] = {};
  bool contiguous = false;  // every operand is dense row-major from its start: offsets = index

  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&off)[N]) const {
    if (contiguous) {
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = linear;
      return;
    }
    if (ndim == 1) {  // one merged dim (e.g. a tensor and a broadcast scalar): no divisions
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

// Builds the indexer for same-shaped operands (the first one's shape). Throws ShapeError past
// kMaxDims dims after merging.
template <int N>
Indexer<N> make_indexer(const std::array<const Tensor*, N>& ts) {
  const kernels::StridedLayout<N> layout(ts);
  Indexer<N> ix;
  HR_CHECK(layout.shape.size() <= static_cast<size_t>(kMaxDims), ShapeError, "cuda kernels take at most ", kMaxDims,
           " dims after merging contiguous ones; got ", shape_str(ts[0]->shape()));
  ix.ndim = static_cast<int>(layout.shape.size());
  bool contiguous = ix.ndim == 1;
  for (int d = 0; d < ix.ndim; ++d) ix.sizes[d] = layout.shape[static_cast<size_t>(d)];
  for (int k = 0; k < N; ++k) {
    for (int d = 0; d < ix.ndim; ++d) ix.strides[k][d] = layout.strides[static_cast<size_t>(k)][static_cast<size_t>(d)];
    contiguous = contiguous && (ix.strides[k][0] == 1 || ix.sizes[0] == 1);
  }
  ix.contiguous = contiguous;
  return ix;
}

// ---- launching ----

inline constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, capped.
inline unsigned grid_for(int64_t n, int block = kBlock) {
  const int64_t blocks = (n + block - 1) / block;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

template <int N, typename F>
__global__ void strided_kernel(Indexer<N> ix, int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[N];
    ix.offsets(i, off);
    f(off);
  }
}

// Runs f(off) for every element, off[k] being operand k's element offset; then checks the
// launch.
template <int N, typename F>
void launch_strided(const KernelScope& scope, const Indexer<N>& ix, int64_t n, F f) {
  if (n == 0) return;
  strided_kernel<N><<<grid_for(n), kBlock, 0, scope.stream()>>>(ix, n, f);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- math in the accumulation type (f32: the single-precision functions; f64: the double ones) ----

template <typename C>
__device__ __forceinline__ C dev_exp(C v) {
  if constexpr (std::is_same_v<C, float>) return expf(v);
  else return exp(v);
}
template <typename C>
__device__ __forceinline__ C dev_log(C v) {
  if constexpr (std::is_same_v<C, float>) return logf(v);
  else return log(v);
}
template <typename C>
__device__ __forceinline__ C neg_inf() {
  return -std::numeric_limits<C>::infinity();
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum of v over the block, returned to every thread. `shared` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : T(0);
  return warp_sum(v);
}
template <typename T>
__device__ T block_max(T v, T* shared, T lowest) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : lowest;
  return warp_max(v);
}

}  // namespace headroom::cuda
