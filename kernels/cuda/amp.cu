// Backend::unscale_and_check on the GPU: GradScaler's one pass over a step's gradients.
//
// A multi-tensor launch: the gradients of one dtype are cut into chunks of kChunk elements and
// each block takes one chunk. Which tensor and chunk a block has, and the tensors' pointers and
// sizes, travel in the kernel's parameters (a TensorList of about 3.3 KB, under the 4 KB
// parameter limit), so no metadata buffer is copied to the device and nothing waits on the
// host. A list that fills (kMaxTensors tensors or kMaxBlocks chunks) is launched and refilled,
// so a model of any size is a handful of launches per dtype rather than one per parameter.
//
// Each element is multiplied in place by inv_scale (=) in acc_type (f32 for 16-bit, f64 for
// f64), as the CPU does, and the value stored is tested: a block that saw inf or NaN (found by
// __syncthreads_or, reached by every thread) has thread 0 write 1 to found_inf. Blocks race
// only to write the same value; found_inf is never cleared here -- the caller zeroes it once.
// No host synchronisation: GradScaler reads found_inf once per step.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

#include <vector>

namespace headroom::cuda {

namespace {

constexpr int kMaxTensors = 48;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 16384;  // elements per block: 64 per thread at kBlock = 256

template <typename T>
struct TensorList {
  T* ptr[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_tensor[kMaxBlocks];  // the tensor of block b
  int32_t block_chunk[kMaxBlocks];   // its chunk within that tensor
};
static_assert(sizeof(TensorList<double>) <= 4000, "TensorList must fit the 4 KB kernel parameter space");

template <typename T>
__device__ __forceinline__ bool finite_value(T v) {
  return isfinite(convert<acc_type<T>>(v));
}

template <typename T>
__global__ void unscale_and_check_kernel(TensorList<T> list, acc_type<T> inv_scale, float* __restrict__ found_inf) {
  using A = acc_type<T>;
  const int t = list.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(begin + kChunk, list.numel[t]);
  T* __restrict__ p = list.ptr[t];
  bool bad = false;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const T v = convert<T>(convert<A>(p[i]) * inv_scale);
    p[i] = v;
    bad |= !finite_value(v);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1.0f;
}

template <typename T>
void unscale_impl(const KernelScope& scope, const std::vector<const Tensor*>& grads, double inv_scale,
                  float* found_inf) {
  using A = acc_type<T>;
  TensorList<T> list{};
  int tensors = 0, blocks = 0;
  auto launch = [&] {
    if (blocks > 0) {
      unscale_and_check_kernel<T><<<blocks, kBlock, 0, scope.stream()>>>(list, static_cast<A>(inv_scale), found_inf);
      HR_CUDA_KERNEL_LAUNCH_CHECK();
    }
    tensors = 0;
    blocks = 0;
  };
  for (const Tensor* g : grads) {
    const int64_t n = g->numel();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      // A tensor takes a slot on its first chunk, and again after a launch emptied the list.
      if (c == 0 || tensors == 0) {
        if (tensors == kMaxTensors) launch();
        list.ptr[tensors] = device_data<T>(*g);
        list.numel[tensors] = n;
        ++tensors;
      }
      list.block_tensor[blocks] = tensors - 1;
      list.block_chunk[blocks] = static_cast<int32_t>(c);
      if (++blocks == kMaxBlocks) launch();
    }
  }
  launch();
}

}  // namespace

void CudaBackend::impl_unscale_and_check(const std::vector<Tensor>& grads, double inv_scale, const Tensor& found_inf) {
  const char* op = "cuda unscale_and_check";
  // The arguments (and that all are on one device) are checked by Backend::unscale_and_check.
  // Grouped by dtype, order kept: one multi-tensor launch sequence per dtype present.
  std::vector<const Tensor*> by_dtype[4];
  for (size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    HR_CHECK(g.numel() / kChunk < (int64_t{1} << 31), ValueError, op, ": gradient ", i, " ", describe(g),
             " is too large");
    if (g.numel() == 0) continue;
    const int k = g.dtype() == DType::f32 ? 0 : g.dtype() == DType::f64 ? 1 : g.dtype() == DType::f16 ? 2 : 3;
    by_dtype[k].push_back(&g);
  }
  KernelScope scope(found_inf);
  float* found = device_data<float>(found_inf);
  const DType order[4] = {DType::f32, DType::f64, DType::f16, DType::bf16};
  for (int k = 0; k < 4; ++k) {
    if (by_dtype[k].empty()) continue;
    dispatch_cuda_float(order[k], op, [&](auto tag) {
      unscale_impl<typename decltype(tag)::type>(scope, by_dtype[k], inv_scale, found);
    });
  }
}

}  // namespace headroom::cuda
